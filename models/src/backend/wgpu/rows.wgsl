// Row-wise kernels over the last dimension: layer norm, RMS norm and softmax. One workgroup of
// WG threads per row; threads stride across the row and combine partial results in
// shared memory (a tree reduction).

const WG: u32 = 128u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    // Workgroups along x of the dispatch grid (the grid may wrap onto y).
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// Layer norm: gamma, beta; RMS norm: gamma.
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;

var<workgroup> partial: array<f32, WG>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] = max(partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(128, 1, 1)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup: surplus groups of the rounded-up grid leave together.
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += x[base + c];
    }
    let mean = reduce_sum(lid, s) / f32(p.cols);
    // Biased variance from the centred values (two passes: no cancellation).
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = x[base + c] - mean;
        q += d * d;
    }
    let inv = inverseSqrt(reduce_sum(lid, q) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}

@compute @workgroup_size(128, 1, 1)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.groups_x + wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var m = -3.0e38;
    for (var c = lid; c < p.cols; c += WG) {
        m = max(m, x[base + c]);
    }
    let row_max = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += exp(x[base + c] - row_max);
    }
    let inv = 1.0 / reduce_sum(lid, s);
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = exp(x[base + c] - row_max) * inv;
    }
}

// x / sqrt(mean(x^2) + eps) * gamma (Llama's RMSNorm).
@compute @workgroup_size(128, 1, 1)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.groups_x + wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var q = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c];
        q += v * v;
    }
    let inv = 1.0 / sqrt(reduce_sum(lid, q) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = x[base + c] * inv * gamma[c];
    }
}
