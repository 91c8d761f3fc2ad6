// Data movement: strided block copies (concat, slice, write_slice) and row gathers
// (embedding), one thread per element moved.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;

// Copies `outer` runs of `run` values: run o of x starts at o * src_stride + src_off
// and lands at o * dst_stride + dst_off of out. words 2..7: run, src_stride, src_off,
// dst_stride, dst_off (word 0, the count, is outer * run).
@compute @workgroup_size(256, 1, 1)
fn copy_runs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let run = word(2u);
    let o = i / run;
    let r = i % run;
    out[o * word(5u) + word(6u) + r] = x[o * word(3u) + word(4u) + r];
}

// out [n, D] = rows ids[..] of x [V, D]. word 2: D.
@compute @workgroup_size(256, 1, 1)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let d = word(2u);
    out[i] = x[ids[i / d] * d + i % d];
}
