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
