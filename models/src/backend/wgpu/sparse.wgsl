// Block-sparse linear layer with a fused bias + activation epilogue:
//   out[m, o] = act(bias[o] + sum over the kept blocks (r = o / BO, c) of
//                   sum_k a[m, c * BI + k] * block[k, o % BO])
//
// `blocks` holds the kept [BO, BI] blocks of the [N, K] weight, block-row by
// block-row, each stored transposed ([BI, BO], the block's outputs contiguous);
// `index` holds the block-rows' starts (N / BO + 1 words) and then every kept
// block's column-block. One thread per output element: a 16 x 16 workgroup covers
// 16 outputs of 16 rows, so the threads of a row share its activations and those of
// an output share its weights. Dropped blocks are never read.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    bo: u32,
    bi: u32,
    // bit 0: add bias; bits 8..16: the activation's code (activation.wgsl).
    flags: u32,
    // Where the column-blocks start in `index` (N / BO + 1).
    cols_at: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> blocks: array<f32>;
@group(0) @binding(3) var<storage, read> index: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = gid.x;
    let m = gid.y;
    if (o >= p.n || m >= p.m) {
        return;
    }
    let r = o / p.bo;
    let j = o % p.bo;
    var acc = 0.0;
    if ((p.flags & 1u) != 0u) {
        acc = bias[o];
    }
    let size = p.bo * p.bi;
    let row = m * p.k;
    for (var b = index[r]; b < index[r + 1u]; b = b + 1u) {
        let x0 = row + index[p.cols_at + b] * p.bi;
        let w0 = b * size + j;
        for (var t = 0u; t < p.bi; t = t + 1u) {
            acc = fma(a[x0 + t], blocks[w0 + t * p.bo], acc);
        }
    }
    out[m * p.n + o] = activate(acc, (p.flags >> 8u) & 0xffu);
}
