// `a` loader for any K: four scalar loads, each bounds-checked.
@group(0) @binding(1) var<storage, read> a: array<f32>;

fn load_a4(row: u32, k: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row >= p.m) {
        return v;
    }
    for (var j = 0u; j < 4u; j++) {
        if (k + j < p.k) {
            v[j] = a[row * p.k + k + j];
        }
    }
    return v;
}
