// Image kernels over [B, C, H, W] planes, one thread per output element: pooling and
// resizing.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// Max or average pooling. words 2..14: H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, kind
// (0 max, 1 average). Max: padding never wins and a NaN in the window wins (as
// PyTorch). Average: the divisor is the whole window, padding included
// (count_include_pad=True; the window never leaves the padded input).
@compute @workgroup_size(256, 1, 1)
fn pool2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let h = word(2u);
    let w = word(3u);
    let ho = word(4u);
    let wo = word(5u);
    let kh = word(6u);
    let kw = word(7u);
    let ox = i % wo;
    let oy = (i / wo) % ho;
    let plane = i / (wo * ho);
    let y0 = i32(oy * word(8u)) - i32(word(10u));
    let x0 = i32(ox * word(9u)) - i32(word(11u));
    let is_max = word(12u) == 0u;
    // -inf for the max (padding never wins).
    var acc = select(0.0, bitcast<f32>(0xff800000u), is_max);
    for (var ky = 0u; ky < kh; ky++) {
        let iy = y0 + i32(ky);
        if (iy < 0 || iy >= i32(h)) {
            continue;
        }
        for (var kx = 0u; kx < kw; kx++) {
            let ix = x0 + i32(kx);
            if (ix < 0 || ix >= i32(w)) {
                continue;
            }
            let v = x[(plane * h + u32(iy)) * w + u32(ix)];
            if (is_max) {
                if (v > acc || is_nan(v)) {
                    acc = v;
                }
            } else {
                acc += v;
            }
        }
    }
    if (!is_max) {
        acc = acc / f32(kh * kw);
    }
    out[i] = acc;
}

// One axis of a bilinear sample: the two source indices and the second one's weight.
struct Taps {
    i0: u32,
    i1: u32,
    l1: f32,
}

// PyTorch's source coordinate: `dst * scale` with aligned corners, else
// `(dst + 0.5) * scale - 0.5` clamped at 0.
fn taps(dst: u32, len: u32, scale: f32, align: bool) -> Taps {
    var src = scale * f32(dst);
    if (!align) {
        src = max(scale * (f32(dst) + 0.5) - 0.5, 0.0);
    }
    let i0 = min(u32(src), len - 1u);
    return Taps(i0, min(i0 + 1u, len - 1u), src - f32(i0));
}

// Resize. words 2..9: H, W, Ho, Wo, mode (0 nearest, 1 bilinear, 2 bilinear with
// aligned corners), scale y and x (f32 bits: in / out, or (in - 1) / (out - 1) when
// aligned). Nearest reads floor(dst * in / out), in integers.
@compute @workgroup_size(256, 1, 1)
fn resize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let h = word(2u);
    let w = word(3u);
    let ho = word(4u);
    let wo = word(5u);
    let ox = i % wo;
    let oy = (i / wo) % ho;
    let base = (i / (wo * ho)) * h * w;
    let mode = word(6u);
    if (mode == 0u) {
        let sy = min(oy * h / ho, h - 1u);
        let sx = min(ox * w / wo, w - 1u);
        out[i] = x[base + sy * w + sx];
        return;
    }
    let align = mode == 2u;
    let ty = taps(oy, h, bitcast<f32>(word(7u)), align);
    let tx = taps(ox, w, bitcast<f32>(word(8u)), align);
    let l0y = 1.0 - ty.l1;
    let l0x = 1.0 - tx.l1;
    let r0 = base + ty.i0 * w;
    let r1 = base + ty.i1 * w;
    out[i] = l0y * (l0x * x[r0 + tx.i0] + tx.l1 * x[r0 + tx.i1])
        + ty.l1 * (l0x * x[r1 + tx.i0] + tx.l1 * x[r1 + tx.i1]);
}
