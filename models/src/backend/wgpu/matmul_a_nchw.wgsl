// `a` loader for a 1x1 stride-1 convolution read straight from the NCHW input (no
// im2col): row = item * P + position, column k = input channel in_channel_offset + k
// (one group's), at a[(item * in_channels + in_channel_offset + k) * P + position]
// with P = rows_per_item.
@group(0) @binding(1) var<storage, read> a: array<f32>;

fn load_a4(row: u32, k: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (row >= p.m) {
        return v;
    }
    let item = row / p.rows_per_item;
    let pos = row % p.rows_per_item;
    for (var j = 0u; j < 4u; j++) {
        if (k + j < p.k) {
            let c = item * p.in_channels + p.in_channel_offset + k + j;
            v[j] = a[c * p.rows_per_item + pos];
        }
    }
    return v;
}
