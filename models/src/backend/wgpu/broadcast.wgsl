// Broadcasting binary ops, comparisons and select (torch.where) over tensors of rank
// <= 6, one thread per output element. The dispatcher pads every shape at the front
// with extent-1 dims; a broadcast dim has stride 0.
//
// words 2..8: the output shape; 8..14, 14..20, 20..26: the strides of operands 1, 2, 3
// (bindings 1, 3, 4) along each output dim; 26: the op.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;

// Where output element `i` reads each operand.
fn offsets(i: u32) -> vec3<u32> {
    var rest = i;
    var o = vec3<u32>(0u);
    for (var d = 5; d >= 0; d--) {
        let dim = u32(d);
        let extent = word(2u + dim);
        let idx = rest % extent;
        rest /= extent;
        o += idx * vec3<u32>(word(8u + dim), word(14u + dim), word(20u + dim));
    }
    return o;
}

// out = x op y; op (word 26): 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min. Max and min
// return a NaN operand, as torch.maximum/minimum.
@compute @workgroup_size(256, 1, 1)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let o = offsets(i);
    let a = x[o.x];
    let b = y[o.y];
    var r: f32;
    switch word(26u) {
        case 0u: {
            r = a + b;
        }
        case 1u: {
            r = a - b;
        }
        case 2u: {
            r = a * b;
        }
        case 3u: {
            r = a / b;
        }
        case 4u: {
            r = max(a, b);
        }
        default: {
            r = min(a, b);
        }
    }
    if (word(26u) >= 4u) {
        if (is_nan(a)) {
            r = a;
        } else if (is_nan(b)) {
            r = b;
        }
    }
    out[i] = r;
}

// out = 1.0 where (x op y) holds, else 0.0; op (word 26): 0 ==, 1 <, 2 <=, 3 >, 4 >=.
// Any comparison with NaN is false.
@compute @workgroup_size(256, 1, 1)
fn compare(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let o = offsets(i);
    let a = x[o.x];
    let b = y[o.y];
    var r: bool;
    switch word(26u) {
        case 0u: {
            r = a == b;
        }
        case 1u: {
            r = a < b;
        }
        case 2u: {
            r = a <= b;
        }
        case 3u: {
            r = a > b;
        }
        default: {
            r = a >= b;
        }
    }
    r = r && !is_nan(a) && !is_nan(b);
    out[i] = select(0.0, 1.0, r);
}

// out = y where the mask x != 0, else z (torch.where(mask != 0, a, b)); a NaN mask is
// != 0 and picks y.
@compute @workgroup_size(256, 1, 1)
fn where_mask(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if (i >= word(0u)) {
        return;
    }
    let o = offsets(i);
    let m = x[o.x];
    var r = z[o.z];
    if (m != 0.0 || is_nan(m)) {
        r = y[o.y];
    }
    out[i] = r;
}
