// Reduction over one axis of x viewed as [outer, n, inner]: one thread per output
// element [outer, inner], walking its n values in order (so a sum adds in the same
// order as a scalar loop).
//
// words 2: n; 3: inner; 4: op (0 sum, 1 mean, 2 max, 3 argmax). Max propagates NaN and
// argmax takes the first NaN as the largest, as torch.max/argmax; argmax takes the
// first index on ties and writes it as an f32.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let n = word(2u);
    let inner = word(3u);
    let op = word(4u);
    let base = (i / inner) * n * inner + i % inner;
    if (op <= 1u) {
        var s = 0.0;
        for (var k = 0u; k < n; k++) {
            s += x[base + k * inner];
        }
        if (op == 1u) {
            s = s / f32(n);
        }
        out[i] = s;
        return;
    }
    var best = x[base];
    var at = 0u;
    for (var k = 1u; k < n; k++) {
        let v = x[base + k * inner];
        if (!is_nan(best) && (v > best || is_nan(v))) {
            best = v;
            at = k;
        }
    }
    out[i] = select(best, f32(at), op == 3u);
}

// The same over long contiguous rows (inner == 1): one workgroup of RWG threads per
// row, each thread striding across it, then a tree over the threads. Sums add in a
// different order than the loop above (within f32 accumulation noise of it); max and
// argmax are exact, ties going to the lower index and NaN winning, as above.
// words: 0 rows, 1 grid width in workgroups, 2 n, 4 op.

const RWG: u32 = 256u;

var<workgroup> part_v: array<f32, RWG>;
var<workgroup> part_i: array<u32, RWG>;

// Whether (v, i) beats (bv, bi) for max/argmax.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if (is_nan(bv)) {
        return is_nan(v) && i < bi;
    }
    return is_nan(v) || v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256, 1, 1)
fn reduce_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * word(1u) + wg.x;
    // Uniform across the workgroup: surplus groups of the rounded-up grid leave together.
    if (row >= word(0u)) {
        return;
    }
    let n = word(2u);
    let op = word(4u);
    let base = row * n;
    var bv = 0.0;
    var bi = 0xffffffffu;
    if (op <= 1u) {
        for (var c = lid; c < n; c += RWG) {
            bv += x[base + c];
        }
    } else {
        bv = bitcast<f32>(0xff800000u);
        for (var c = lid; c < n; c += RWG) {
            let v = x[base + c];
            if (beats(v, c, bv, bi)) {
                bv = v;
                bi = c;
            }
        }
    }
    part_v[lid] = bv;
    part_i[lid] = bi;
    workgroupBarrier();
    for (var s = RWG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let v = part_v[lid + s];
            let i = part_i[lid + s];
            if (op <= 1u) {
                part_v[lid] += v;
            } else if (beats(v, i, part_v[lid], part_i[lid])) {
                part_v[lid] = v;
                part_i[lid] = i;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var r = part_v[0];
        if (op == 1u) {
            r = r / f32(n);
        } else if (op == 3u) {
            r = f32(part_i[0]);
        }
        out[row] = r;
    }
}
