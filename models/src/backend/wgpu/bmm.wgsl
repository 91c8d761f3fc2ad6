// Batched product of two activations: out[b] = a[b] x b[b] with a [M, K] and b [K, N]
// (or [N, K], transposed), all row-major. One workgroup per 16 x 16 output tile, one
// output per thread; K goes through shared memory 16 at a time, zeros past the edges,
// and every output adds its K products in order.

const T: u32 = 16u;

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    // 1: b is [N, K].
    transpose_b: u32,
    tiles_m: u32,
    tiles_n: u32,
    // Workgroups along x of the dispatch grid (the grid may wrap onto y).
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

var<workgroup> a_tile: array<f32, 256>;   // [row][k]
var<workgroup> b_tile: array<f32, 256>;   // [k][col]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let group = wg.y * p.groups_x + wg.x;
    // Uniform across the workgroup: surplus groups of the rounded-up grid leave together.
    if (group >= p.batch * p.tiles_m * p.tiles_n) {
        return;
    }
    let tn = group % p.tiles_n;
    let tm = (group / p.tiles_n) % p.tiles_m;
    let item = group / (p.tiles_n * p.tiles_m);
    let a_base = item * p.m * p.k;
    let b_base = item * p.k * p.n;
    let row = tm * T + local.y;
    let col = tn * T + local.x;
    // This thread loads a[row, k0 + x] and b[k0 + y, col].
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += T) {
        var av = 0.0;
        let ak = k0 + local.x;
        if (row < p.m && ak < p.k) {
            av = a[a_base + row * p.k + ak];
        }
        a_tile[local.y * T + local.x] = av;
        var bv = 0.0;
        let bk = k0 + local.y;
        if (col < p.n && bk < p.k) {
            if (p.transpose_b != 0u) {
                bv = b[b_base + col * p.k + bk];
            } else {
                bv = b[b_base + bk * p.n + col];
            }
        }
        b_tile[local.y * T + local.x] = bv;
        workgroupBarrier();
        let steps = min(T, p.k - k0);
        for (var kk = 0u; kk < steps; kk++) {
            acc += a_tile[local.y * T + kk] * b_tile[kk * T + local.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        out[item * p.m * p.n + row * p.n + col] = acc;
    }
}
