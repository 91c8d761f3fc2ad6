// Scaled dot-product attention with grouped-query heads (Llama's), flash style as
// attention.wgsl: q [B, Nq, Hq, HEAD_DIM], k and v [B, Nk, Hkv, HEAD_DIM], query head h
// reading key/value head h / (Hq / Hkv); keys 0..kv_len take part, and under the causal
// mask query i (at absolute position q_off + i) sees keys j <= q_off + i only. The
// output [B, Nq, Hq * HEAD_DIM] has q's layout.
//
// One workgroup per QB query rows of one (item, head), one thread per query row, keys
// and values streamed through shared memory KB at a time with an online softmax. The
// workgroup stops at the last key its last query sees. HEAD_DIM, HD4 and KB are
// prepended by the dispatcher (see kernels.rs).

const QB: u32 = 64u;

struct Params {
    batch: u32,
    nq: u32,
    nk: u32,
    hq: u32,
    hkv: u32,
    scale: f32,
    kv_len: u32,
    // 1: causal, with queries from absolute position q_off.
    causal: u32,
    q_off: u32,
    q_blocks: u32,
    // Workgroups along x of the dispatch grid (the grid may wrap onto y).
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> k_in: array<f32>;
@group(0) @binding(4) var<storage, read> v_in: array<f32>;

var<workgroup> k_tile: array<vec4<f32>, KB * HD4>;
var<workgroup> v_tile: array<vec4<f32>, KB * HD4>;

fn load_q(base: u32, c4: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let c = c4 * 4u + j;
        if (c < HEAD_DIM) {
            v[j] = q_in[base + c];
        }
    }
    return v;
}

fn load_kv(base: u32, c4: u32, is_v: bool) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let c = c4 * 4u + j;
        if (c < HEAD_DIM) {
            if (is_v) {
                v[j] = v_in[base + c];
            } else {
                v[j] = k_in[base + c];
            }
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
    // Uniform across the workgroup, so returning before the barriers is sound.
    if (group >= p.batch * p.hq * p.q_blocks) {
        return;
    }
    let qb = group % p.q_blocks;
    let h = (group / p.q_blocks) % p.hq;
    let b = group / (p.q_blocks * p.hq);
    let kvh = h / (p.hq / p.hkv);
    let qi = qb * QB + lid;
    let valid = qi < p.nq;
    // Keys this thread sees, and the workgroup sees (uniform).
    var sees = p.kv_len;
    var k_end = p.kv_len;
    if (p.causal != 0u) {
        sees = min(p.kv_len, p.q_off + qi + 1u);
        k_end = min(p.kv_len, p.q_off + min(qb * QB + QB, p.nq));
    }
    let q_row = ((b * p.nq + qi) * p.hq + h) * HEAD_DIM;

    var q: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    for (var c4 = 0u; c4 < HD4; c4++) {
        acc[c4] = vec4<f32>(0.0);
        q[c4] = vec4<f32>(0.0);
        if (valid) {
            q[c4] = load_q(q_row, c4) * p.scale;
        }
    }
    var run_max = -3.0e38;
    var run_sum = 0.0;
    var s: array<f32, KB>;

    for (var k0 = 0u; k0 < k_end; k0 += KB) {
        for (var e = lid; e < KB * HD4; e += 64u) {
            let j = e / HD4;
            let c4 = e % HD4;
            let key = k0 + j;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (key < k_end) {
                let base = ((b * p.nk + key) * p.hkv + kvh) * HEAD_DIM;
                kv = load_kv(base, c4, false);
                vv = load_kv(base, c4, true);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();

        // Keys of this block the thread sees: k0 .. k0 + nk.
        let nk = min(KB, max(sees, k0) - k0);
        var block_max = run_max;
        for (var j = 0u; j < nk; j++) {
            var d = 0.0;
            for (var c4 = 0u; c4 < HD4; c4++) {
                d += dot(q[c4], k_tile[j * HD4 + c4]);
            }
            s[j] = d;
            block_max = max(block_max, d);
        }
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
        for (var c4 = 0u; c4 < HD4; c4++) {
            let v = acc[c4] * inv;
            for (var j = 0u; j < 4u; j++) {
                let c = c4 * 4u + j;
                if (c < HEAD_DIM) {
                    out[q_row + c] = v[j];
                }
            }
        }
    }
}

// Decoding (a few queries, a long cache): the entry point above would keep one thread
// of 64 busy per workgroup. Here one workgroup takes one (item, head, query) and its
// 64 threads split the keys (thread t takes keys t, t + 64, ...), each keeping an
// online softmax of its own; the 64 partial results are then combined through shared
// memory (max, then rescaled sums).

const DW: u32 = 64u;

var<workgroup> red_f: array<f32, DW>;
var<workgroup> red_v: array<vec4<f32>, DW>;

@compute @workgroup_size(64, 1, 1)
fn decode(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup, so returning before the barriers is sound.
    if (group >= p.batch * p.hq * p.nq) {
        return;
    }
    let qi = group % p.nq;
    let h = (group / p.nq) % p.hq;
    let b = group / (p.nq * p.hq);
    let kvh = h / (p.hq / p.hkv);
    var sees = p.kv_len;
    if (p.causal != 0u) {
        sees = min(p.kv_len, p.q_off + qi + 1u);
    }
    let q_row = ((b * p.nq + qi) * p.hq + h) * HEAD_DIM;

    var q: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    for (var c4 = 0u; c4 < HD4; c4++) {
        q[c4] = load_q(q_row, c4) * p.scale;
        acc[c4] = vec4<f32>(0.0);
    }
    var m = -3.0e38;
    var l = 0.0;
    for (var key = lid; key < sees; key += DW) {
        let base = ((b * p.nk + key) * p.hkv + kvh) * HEAD_DIM;
        var d = 0.0;
        for (var c4 = 0u; c4 < HD4; c4++) {
            d += dot(q[c4], load_kv(base, c4, false));
        }
        let m_new = max(m, d);
        let correction = exp(m - m_new);
        let w = exp(d - m_new);
        l = l * correction + w;
        for (var c4 = 0u; c4 < HD4; c4++) {
            acc[c4] = acc[c4] * correction + w * load_kv(base, c4, true);
        }
        m = m_new;
    }

    // The largest score of all threads (a thread without keys holds -3e38, and its
    // share below becomes 0).
    red_f[lid] = m;
    workgroupBarrier();
    for (var s = DW / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] = max(red_f[lid], red_f[lid + s]);
        }
        workgroupBarrier();
    }
    let share = exp(m - red_f[0]);
    workgroupBarrier();
    red_f[lid] = l * share;
    workgroupBarrier();
    for (var s = DW / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red_f[0];
    for (var c4 = 0u; c4 < HD4; c4++) {
        red_v[lid] = acc[c4] * share;
        workgroupBarrier();
        for (var s = DW / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                red_v[lid] += red_v[lid + s];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            let v = red_v[0] * inv;
            for (var j = 0u; j < 4u; j++) {
                let c = c4 * 4u + j;
                if (c < HEAD_DIM) {
                    out[q_row + c] = v[j];
                }
            }
        }
        workgroupBarrier();
    }
}
