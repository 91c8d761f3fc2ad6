// The parameter block of the one-thread-per-output kernels (broadcast, reduce, spatial,
// copy, conv, rope): sixty-four words whose meaning each entry point states; word 0 is
// always the number of output elements and word 1 the grid width in workgroups (the
// 2-D grid wraps x onto y past the per-dimension limit).

struct Params {
    w: array<vec4<u32>, 16>,
}

@group(0) @binding(0) var<uniform> p: Params;

fn word(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

fn element(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * word(1u) + wg.x) * 256u + lid;
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}
