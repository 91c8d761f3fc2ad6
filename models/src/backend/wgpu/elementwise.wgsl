// Elementwise and data-movement kernels: one thread per output element, 256 threads
// per workgroup, over a 2-D grid (x wraps onto y past the per-dimension limit).
//
// The uniform is sixteen words whose meaning each entry point states; word 0 is always
// the number of output elements and word 1 the grid width in workgroups.

struct Params {
    w: array<vec4<u32>, 4>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;

fn word(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

fn element(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * word(1u) + wg.x) * 256u + lid;
}

// out = act(x); word 2: the activation's code (activation.wgsl)
@compute @workgroup_size(256, 1, 1)
fn activation(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i < word(0u)) {
        out[i] = activate(x[i], word(2u));
    }
}

// out = x * s; word 2: s (f32 bits)
@compute @workgroup_size(256, 1, 1)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i < word(0u)) {
        out[i] = x[i] * bitcast<f32>(word(2u));
    }
}

// out = x + y[i % period]; word 2: the period (y's length; equal to the output's
// length unless y broadcasts over the leading dimension)
@compute @workgroup_size(256, 1, 1)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i < word(0u)) {
        out[i] = x[i] + y[i % word(2u)];
    }
}

// Permute of a tensor of rank <= 6. words 2..8: the output shape (padded with 1s at
// the front); words 8..14: for each output dim, the input stride of the dim it reads.
@compute @workgroup_size(256, 1, 1)
fn permute(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    var rest = i;
    var src = 0u;
    for (var d = 5; d >= 0; d--) {
        let dim = u32(d);
        let extent = word(2u + dim);
        src += (rest % extent) * word(8u + dim);
        rest /= extent;
    }
    out[i] = x[src];
}

// Copies x [B, N, D] into rows T.. of out [B, T + N, D]. words 2..5: N, D, T.
@compute @workgroup_size(256, 1, 1)
fn place_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let n = word(2u);
    let d = word(3u);
    let t = word(4u);
    let c = i % d;
    let row = i / d;
    let b = row / n;
    let r = row % n;
    out[(b * (t + n) + t + r) * d + c] = x[i];
}

// Writes token x [D] at row `slot` of every item of out [B, T + N, D].
// words 2..5: T + N, D, slot.
@compute @workgroup_size(256, 1, 1)
fn broadcast_token(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let rows = word(2u);
    let d = word(3u);
    let slot = word(4u);
    let c = i % d;
    let b = i / d;
    out[(b * rows + slot) * d + c] = x[c];
}

// out [B, D] = x[:, index] of x [B, N, D]. words 2..5: N, D, index.
@compute @workgroup_size(256, 1, 1)
fn select_token(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let n = word(2u);
    let d = word(3u);
    let c = i % d;
    let b = i / d;
    out[i] = x[(b * n + word(4u)) * d + c];
}
