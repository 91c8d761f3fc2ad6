// The fused activations, by code (the dispatcher's `act_code`): 0 identity, 1 exact
// GELU, 2 ReLU, 3 ReLU6, 4 SiLU, 5 sigmoid, 6 hard-swish. Formulas as PyTorch's
// modules; needs `gelu_exact` (erf.wgsl) before it.

fn sigmoid(y: f32) -> f32 {
    return 1.0 / (1.0 + exp(-y));
}

fn activate(y: f32, act: u32) -> f32 {
    switch act {
        case 1u: {
            return gelu_exact(y);
        }
        case 2u: {
            return max(y, 0.0);
        }
        case 3u: {
            return min(max(y, 0.0), 6.0);
        }
        case 4u: {
            return y * sigmoid(y);
        }
        case 5u: {
            return sigmoid(y);
        }
        case 6u: {
            return y * min(max(y + 3.0, 0.0), 6.0) / 6.0;
        }
        default: {
            return y;
        }
    }
}
