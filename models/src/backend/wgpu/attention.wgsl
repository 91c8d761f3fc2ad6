// Fused multi-head self-attention (flash-attention style): per head
// softmax(scale * q k^T) v without materialising the score matrix.
//
// `qkv` is [B, N, 3 * D] (q, k, v of all heads side by side, timm's layout); the output
// is [B, N, D] with the heads concatenated along the channels. One workgroup handles
// QB query rows of one (item, head), one thread per query row: the thread keeps its
// scaled query and its output accumulator in registers, while the workgroup streams the
// keys and values through shared memory KB at a time. Softmax is computed online (a
// running max and sum, rescaled once per key block), so every score is used once.
//
// HEAD_DIM, HD4 (= ceil(HEAD_DIM / 4)) and KB (keys per block, sized so the two
// tiles take 16 KiB, WebGPU's guaranteed shared memory) are prepended by the
// dispatcher, which compiles one pipeline per head width (see kernels.rs).

const QB: u32 = 64u;

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    // D = heads * HEAD_DIM
    dim: u32,
    scale: f32,
    q_blocks: u32,
    // Workgroups along x of the dispatch grid (the grid may wrap onto y).
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> k_tile: array<vec4<f32>, KB * HD4>;
var<workgroup> v_tile: array<vec4<f32>, KB * HD4>;

fn load4(base: u32, c4: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let c = c4 * 4u + j;
        if (c < HEAD_DIM) {
            v[j] = qkv[base + c];
        }
    }
    return v;
}

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wg.y * p.groups_x + wg.x;
    // The grid is rounded up to a rectangle: surplus workgroups have nothing to do. The
    // test is uniform across the workgroup, so returning before the barriers is sound.
    if (group >= p.batch * p.heads * p.q_blocks) {
        return;
    }
    let qb = group % p.q_blocks;
    let h = (group / p.q_blocks) % p.heads;
    let b = group / (p.q_blocks * p.heads);
    let row_len = 3u * p.dim;
    let item = b * p.tokens * row_len;
    let qi = qb * QB + lid;
    let valid = qi < p.tokens;

    var q: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    for (var c4 = 0u; c4 < HD4; c4++) {
        acc[c4] = vec4<f32>(0.0);
        q[c4] = vec4<f32>(0.0);
        if (valid) {
            q[c4] = load4(item + qi * row_len + h * HEAD_DIM, c4) * p.scale;
        }
    }
    var run_max = -3.0e38;
    var run_sum = 0.0;
    var s: array<f32, KB>;

    for (var k0 = 0u; k0 < p.tokens; k0 += KB) {
        // Stage KB keys and values (zeros past the sequence end).
        for (var e = lid; e < KB * HD4; e += 64u) {
            let j = e / HD4;
            let c4 = e % HD4;
            let key = k0 + j;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (key < p.tokens) {
                let base = item + key * row_len + h * HEAD_DIM;
                kv = load4(base + p.dim, c4);
                vv = load4(base + 2u * p.dim, c4);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();

        let nk = min(KB, p.tokens - k0);
        var block_max = run_max;
        for (var j = 0u; j < nk; j++) {
            var d = 0.0;
            for (var c4 = 0u; c4 < HD4; c4++) {
                d += dot(q[c4], k_tile[j * HD4 + c4]);
            }
            s[j] = d;
            block_max = max(block_max, d);
        }
        // Rescale what was accumulated under the old maximum.
        let correction = exp(run_max - block_max);
        run_sum *= correction;
        for (var c4 = 0u; c4 < HD4; c4++) {
            acc[c4] *= correction;
        }
        for (var j = 0u; j < nk; j++) {
            let w = exp(s[j] - block_max);
            run_sum += w;
            for (var c4 = 0u; c4 < HD4; c4++) {
                acc[c4] += w * v_tile[j * HD4 + c4];
            }
        }
        run_max = block_max;
        workgroupBarrier();
    }

    if (valid) {
        let inv = 1.0 / run_sum;
        let dst = (b * p.tokens + qi) * p.dim + h * HEAD_DIM;
        for (var c4 = 0u; c4 < HD4; c4++) {
            let v = acc[c4] * inv;
            for (var j = 0u; j < 4u; j++) {
                let c = c4 * 4u + j;
                if (c < HEAD_DIM) {
                    out[dst + c] = v[j];
                }
            }
        }
    }
}
