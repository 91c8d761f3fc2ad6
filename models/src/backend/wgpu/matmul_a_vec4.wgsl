// `a` loader for K a multiple of 4: rows are 16-byte aligned, one vec4 load each.
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;

fn load_a4(row: u32, k: u32) -> vec4<f32> {
    if (row >= p.m || k >= p.k) {
        return vec4<f32>(0.0);
    }
    return a[(row * p.k + k) / 4u];
}
