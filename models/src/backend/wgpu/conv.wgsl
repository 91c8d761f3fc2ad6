// Convolution kernels over x [B, C, H, W] (PyTorch's nn.Conv2d: stride, zero padding,
// dilation, groups), one thread per output element:
// - `im2col` lays one group's input windows out as rows for the tiled matmul;
// - `conv_direct` convolves directly, for convolutions whose groups read one input
//   channel each (depthwise: groups == C), with the bias and the activation fused.
// Needs erf.wgsl and activation.wgsl before it.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// Geometry words shared by both: 2 C (all input channels), 3 H, 4 W, 5 kh, 6 kw, 7 sh,
// 8 sw, 9 ph, 10 pw, 11 Ho, 12 Wo, 13 dh, 14 dw.

// im2col of channels c0 .. c0 + Cg: out [B * Ho * Wo, Cg * kh * kw], one row per
// output position with (c, ky, kx) along the row (PyTorch's flattened weight order),
// zeros where the window hangs over the padding. words 15, 16: Cg, c0.
@compute @workgroup_size(256, 1, 1)
fn im2col(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let ch = word(2u);
    let h = word(3u);
    let w = word(4u);
    let kh = word(5u);
    let kw = word(6u);
    let ho = word(11u);
    let wo = word(12u);
    let cg = word(15u);
    let row_len = cg * kh * kw;
    let col = i % row_len;
    let row = i / row_len;
    let kx = col % kw;
    let ky = (col / kw) % kh;
    let c = word(16u) + col / (kw * kh);
    let ox = row % wo;
    let oy = (row / wo) % ho;
    let b = row / (wo * ho);
    // Signed arithmetic for the padding; inputs are far below 2^31 elements per dim.
    let iy = i32(oy * word(7u) + ky * word(13u)) - i32(word(9u));
    let ix = i32(ox * word(8u) + kx * word(14u)) - i32(word(10u));
    var v = 0.0;
    if (iy >= 0 && iy < i32(h) && ix >= 0 && ix < i32(w)) {
        v = x[((b * ch + c) * h + u32(iy)) * w + u32(ix)];
    }
    out[i] = v;
}

// out [B, O, Ho, Wo] = act(conv(x, weight) + bias) with weight [O, Cg, kh, kw]
// (PyTorch's layout), summing over the group's channels, then rows, then columns.
// words 15..19: O, Cg (input channels per group), outputs per group, flags (bit 0:
// bias), activation code.
@compute @workgroup_size(256, 1, 1)
fn conv_direct(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let ch = word(2u);
    let h = word(3u);
    let w = word(4u);
    let kh = word(5u);
    let kw = word(6u);
    let ho = word(11u);
    let wo = word(12u);
    let o_all = word(15u);
    let cg = word(16u);
    let ox = i % wo;
    let oy = (i / wo) % ho;
    let oc = (i / (wo * ho)) % o_all;
    let b = i / (wo * ho * o_all);
    let c0 = (oc / word(17u)) * cg;
    let y0 = i32(oy * word(7u)) - i32(word(9u));
    let x0 = i32(ox * word(8u)) - i32(word(10u));
    var acc = 0.0;
    for (var c = 0u; c < cg; c++) {
        let plane = (b * ch + c0 + c) * h;
        let taps = (oc * cg + c) * kh;
        for (var ky = 0u; ky < kh; ky++) {
            let iy = y0 + i32(ky * word(13u));
            if (iy < 0 || iy >= i32(h)) {
                continue;
            }
            for (var kx = 0u; kx < kw; kx++) {
                let ix = x0 + i32(kx * word(14u));
                if (ix < 0 || ix >= i32(w)) {
                    continue;
                }
                acc += x[(plane + u32(iy)) * w + u32(ix)] * weight[(taps + ky) * kw + kx];
            }
        }
    }
    if ((word(18u) & 1u) != 0u) {
        acc += bias[oc];
    }
    out[i] = activate(acc, word(19u));
}
