// Tiled matrix multiply with a fused bias + activation epilogue:
//   out[m, n] = act(sum_k a[m, k] * w_t[k, n] + bias[n])
//
// `a` is the activation, row-major [M, K]. `w_t` is the weight transposed once at load
// to [K_pad, N_pad] (K padded to BK, N to BN, zeros in the padding), so weight tiles
// need no bounds checks and load as aligned vec4s; it is f32 or f16 (`WVec4`, set by
// the dispatcher together with the `a` loader, see matmul.rs).
//
// Each workgroup computes a BM x BN tile of the output with 16 x 16 threads; each
// thread owns a 4 x 4 block (rows ty*4.., columns tx*4..), so every value read from
// shared memory feeds four FMAs. Per BK step the workgroup stages an [BM, BK] tile of
// `a` (transposed, so a thread's four rows are adjacent) and a [BK, BN] tile of `w_t`.

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Row stride of w_t in vec4s (N_pad / 4).
    n_pad4: u32,
    // bit 0: add bias; bit 2: store channel-major (NCHW, see below); bits 8..16: the
    // activation's code (activation.wgsl).
    flags: u32,
    // For the channel-major store (and the NCHW loader): output rows per item
    // (positions of a conv image).
    rows_per_item: u32,
    // For the channel-major store: where this product's channels start among the
    // output's, and how many the output has (one group of a grouped convolution).
    channel_offset: u32,
    out_channels: u32,
    // For the NCHW loader: where the K channels it reads start among the input's, and
    // how many the input has.
    in_channel_offset: u32,
    in_channels: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// binding 1: `a`, declared by the loader snippet.
@group(0) @binding(2) var<storage, read> w_t: array<WVec4>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> a_tile: array<f32, 1024>;        // [BK][BM]
var<workgroup> w_tile: array<vec4<f32>, 256>;   // [BK][BN / 4]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let tx = local.x;
    let ty = local.y;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;

    // Loader assignments: 256 threads x one vec4 each, for both tiles.
    let a_row = lid / 4u;          // 0..64
    let a_k4 = (lid % 4u) * 4u;    // 0, 4, 8, 12
    let w_k = lid / 16u;           // 0..16
    let w_n4 = lid % 16u;          // 0..16

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let av = load_a4(m0 + a_row, k0 + a_k4);
        a_tile[(a_k4 + 0u) * BM + a_row] = av.x;
        a_tile[(a_k4 + 1u) * BM + a_row] = av.y;
        a_tile[(a_k4 + 2u) * BM + a_row] = av.z;
        a_tile[(a_k4 + 3u) * BM + a_row] = av.w;
        w_tile[w_k * 16u + w_n4] = vec4<f32>(w_t[(k0 + w_k) * p.n_pad4 + n0 / 4u + w_n4]);
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            let b = w_tile[kk * 16u + tx];
            let base = kk * BM + ty * 4u;
            acc[0] += a_tile[base] * b;
            acc[1] += a_tile[base + 1u] * b;
            acc[2] += a_tile[base + 2u] * b;
            acc[3] += a_tile[base + 3u] * b;
        }
        workgroupBarrier();
    }

    let col = n0 + tx * 4u;
    var add = vec4<f32>(0.0);
    if ((p.flags & 1u) != 0u) {
        add = bias[col / 4u];
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty * 4u + i;
        if (row >= p.m) {
            break;
        }
        let v = acc[i] + add;
        for (var j = 0u; j < 4u; j++) {
            let c = col + j;
            if (c >= p.n) {
                break;
            }
            let y = activate(v[j], (p.flags >> 8u) & 0xffu);
            if ((p.flags & 4u) != 0u) {
                // Channel-major: row = item * P + position,
                // out[item, channel_offset + c, position].
                let item = row / p.rows_per_item;
                let pos = row % p.rows_per_item;
                out[((item * p.out_channels) + p.channel_offset + c) * p.rows_per_item + pos] = y;
            } else {
                out[row * p.n + c] = y;
            }
        }
    }
}
