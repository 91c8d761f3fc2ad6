// Rotary position embedding, Hugging Face's rotate-half form, one thread per element
// of x [B, N, H, hd]: out = x * cos + rotate_half(x) * sin, where rotate_half of a
// head's [x1, x2] is [-x2, x1] and cos, sin are [N, hd].
// words 2..5: N, H, hd.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> cos_t: array<f32>;
@group(0) @binding(4) var<storage, read> sin_t: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let n = word(2u);
    let heads = word(3u);
    let hd = word(4u);
    let half = hd / 2u;
    let c = i % hd;
    let pos = (i / (hd * heads)) % n;
    let head = i - c;
    var rot: f32;
    if (c < half) {
        rot = -x[head + c + half];
    } else {
        rot = x[head + c - half];
    }
    out[i] = x[i] * cos_t[pos * hd + c] + rot * sin_t[pos * hd + c];
}
