//! Backend conformance: every op of [`Backend`] on every backend against the scalar
//! [`ReferenceBackend`], from one table of cases on odd shapes.
//!
//! Each case is an [`Op`] with its host inputs, a name and a tolerance; one generic
//! interpreter ([`run`]) executes it on any backend. A case passes on a backend when
//! every element satisfies `|got - want| <= abs + rel * |want|` (NaN matches NaN), or,
//! for a [`Expect::Refused`] case, when the backend refuses it with a shape error.
//! Every failing (case, backend) pair is reported, not only the first, and a summary
//! per op and backend gives the largest error seen, so one run shows a backend's whole
//! state.
//!
//! Backends: the CPU at its best instruction set and at the portable one (plus AVX2
//! where the CPU has it), and wgpu on whatever adapter it finds (software ones
//! included: Mesa lavapipe in CI) with f32 weights, so its kernels compare tightly.
//! Without an adapter the wgpu part fails under `CI=true` and prints a skip elsewhere.
//! `CONFORMANCE_BACKENDS=cpu` (a comma list of name prefixes) narrows the run.

use splitstream_models::backend::cpu::{CpuBackend, Isa};
use splitstream_models::backend::reference::ReferenceBackend;
#[cfg(feature = "wgpu")]
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::backend::{
    Activation, AttentionSpec, BinaryOp, CompareOp, Conv2dSpec, KvCache, Pool2dSpec, PoolKind,
    ReduceOp, ResizeMode,
};
use splitstream_models::{Backend, BackendError, HostTensor};

/// Elementwise tolerance: `|got - want| <= abs + rel * |want|`.
#[derive(Debug, Clone, Copy)]
struct Tol {
    abs: f32,
    rel: f32,
}

/// Bit-exact: data movement, comparisons, selections, max/argmax.
const EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };
/// One rounding of an f32 operation (binary ops, scale, averaging of a few values).
const ROUNDED: Tol = Tol {
    abs: 1e-6,
    rel: 1e-6,
};
/// Transcendental functions (erf, exp) by polynomial or the GPU's built-ins.
const TRANSCENDENTAL: Tol = Tol {
    abs: 2e-6,
    rel: 1e-5,
};
/// Sums of tens to hundreds of products in f32 (GEMMs, convolutions, norms).
const ACCUMULATED: Tol = Tol {
    abs: 2e-5,
    rel: 1e-4,
};
/// Softmax-weighted sums (attention).
const ATTENTION: Tol = Tol {
    abs: 2e-5,
    rel: 2e-4,
};

/// A deterministic tensor with values spread over `[-amp, amp]`.
fn t(shape: &[usize], seed: usize, amp: f32) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let h = (i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97_531)))
                % 10_007;
            (h as f32 / 10_007.0 * 2.0 - 1.0) * amp
        })
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// Values on a coarse grid (multiples of 0.5 in [-2, 2]), so that ties and equalities
/// occur: comparisons, max, argmax and max-pooling are tested on them.
fn grid(shape: &[usize], seed: usize) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i * 7 + seed * 13) % 9) as f32 - 4.0) * 0.5)
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// Values bounded away from zero (divisors): `[0.5, 2]` with random signs.
fn away_from_zero(shape: &[usize], seed: usize) -> HostTensor {
    let base = t(shape, seed, 1.0);
    let data = base
        .data()
        .iter()
        .map(|&v| v.signum() * (0.5 + 1.5 * v.abs()))
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// A 0/1 mask.
fn mask(shape: &[usize], seed: usize) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| (i * 5 + seed).is_multiple_of(3) as u8 as f32)
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// HF-style rotary tables `[n, hd]` for positions `offset..offset + n`.
fn rope_tables(n: usize, hd: usize, offset: usize) -> (HostTensor, HostTensor) {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for p in offset..offset + n {
        for i in 0..hd {
            let freq = 10_000f64.powf(-((i % half) as f64 * 2.0) / hd as f64);
            let a = p as f64 * freq;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (
        HostTensor::new(vec![n, hd], cos).unwrap(),
        HostTensor::new(vec![n, hd], sin).unwrap(),
    )
}

/// One KV-cache step: append `k` and `v`, then attend `q` (or only append).
#[derive(Debug)]
struct KvStep {
    k: HostTensor,
    v: HostTensor,
    q: Option<HostTensor>,
}

/// An op with its host inputs: what [`run`] executes on a backend.
#[derive(Debug)]
enum Op {
    Linear {
        x: HostTensor,
        w: HostTensor,
        b: Option<HostTensor>,
        act: Activation,
    },
    Conv2d {
        x: HostTensor,
        w: HostTensor,
        b: Option<HostTensor>,
        spec: Conv2dSpec,
    },
    LayerNorm {
        x: HostTensor,
        gamma: HostTensor,
        beta: HostTensor,
        eps: f32,
    },
    Softmax(HostTensor),
    Activate(HostTensor, Activation),
    Attention {
        qkv: HostTensor,
        heads: usize,
        scale: f32,
    },
    Add(HostTensor, HostTensor),
    Scale(HostTensor, f32),
    Reshape(HostTensor, Vec<usize>),
    Permute(HostTensor, Vec<usize>),
    PrependTokens(Vec<HostTensor>, HostTensor),
    SelectToken(HostTensor, usize),
    Binary(HostTensor, HostTensor, BinaryOp),
    Compare(HostTensor, HostTensor, CompareOp),
    Select(HostTensor, HostTensor, HostTensor),
    Reduce(HostTensor, usize, ReduceOp),
    Pool2d(HostTensor, Pool2dSpec),
    Resize(HostTensor, [usize; 2], ResizeMode),
    Concat(Vec<HostTensor>, usize),
    Slice {
        x: HostTensor,
        axis: usize,
        start: usize,
        len: usize,
    },
    WriteSlice {
        dst: HostTensor,
        axis: usize,
        start: usize,
        src: HostTensor,
    },
    Matmul(HostTensor, HostTensor, bool),
    Embedding(HostTensor, Vec<u32>),
    RmsNorm(HostTensor, HostTensor, f32),
    Rope(HostTensor, HostTensor, HostTensor),
    AttentionGqa {
        q: HostTensor,
        k: HostTensor,
        v: HostTensor,
        spec: AttentionSpec,
    },
    /// A cache of `[batch, capacity, kv_heads, head_dim]` driven through `steps`; the
    /// result is every attend's output, flattened and joined.
    KvCache {
        batch: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
        steps: Vec<KvStep>,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Softmax(..) => "softmax",
            Op::Activate(..) => "activate",
            Op::Attention { .. } => "attention",
            Op::Add(..) => "add",
            Op::Scale(..) => "scale",
            Op::Reshape(..) => "reshape",
            Op::Permute(..) => "permute",
            Op::PrependTokens(..) => "prepend_tokens",
            Op::SelectToken(..) => "select_token",
            Op::Binary(..) => "binary",
            Op::Compare(..) => "compare",
            Op::Select(..) => "select",
            Op::Reduce(..) => "reduce",
            Op::Pool2d(..) => "pool2d",
            Op::Resize(..) => "resize",
            Op::Concat(..) => "concat",
            Op::Slice { .. } => "slice",
            Op::WriteSlice { .. } => "write_slice",
            Op::Matmul(..) => "matmul",
            Op::Embedding(..) => "embedding",
            Op::RmsNorm(..) => "rms_norm",
            Op::Rope(..) => "rope",
            Op::AttentionGqa { .. } => "attention_gqa",
            Op::KvCache { .. } => "kv_cache",
        }
    }
}

/// Executes `op` on `be`: upload, the op, readback.
fn run<B: Backend>(be: &B, op: &Op) -> Result<HostTensor, BackendError> {
    let up = |h: &HostTensor| be.upload(h);
    let y = match op {
        Op::Linear { x, w, b, act } => {
            let layer = be.prepare_linear(w, b.as_ref())?;
            be.linear(&up(x)?, &layer, *act)?
        }
        Op::Conv2d { x, w, b, spec } => {
            let layer = be.prepare_conv2d(w, b.as_ref(), *spec)?;
            be.conv2d(&up(x)?, &layer)?
        }
        Op::LayerNorm {
            x,
            gamma,
            beta,
            eps,
        } => be.layer_norm(&up(x)?, &up(gamma)?, &up(beta)?, *eps)?,
        Op::Softmax(x) => be.softmax(&up(x)?)?,
        Op::Activate(x, act) => be.activate(&up(x)?, *act)?,
        Op::Attention { qkv, heads, scale } => be.attention(&up(qkv)?, *heads, *scale)?,
        Op::Add(a, b) => be.add(&up(a)?, &up(b)?)?,
        Op::Scale(x, s) => be.scale(&up(x)?, *s)?,
        Op::Reshape(x, shape) => be.reshape(up(x)?, shape)?,
        Op::Permute(x, dims) => be.permute(&up(x)?, dims)?,
        Op::PrependTokens(tokens, x) => {
            let tokens = tokens.iter().map(up).collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&B::Tensor> = tokens.iter().collect();
            be.prepend_tokens(&refs, &up(x)?)?
        }
        Op::SelectToken(x, i) => be.select_token(&up(x)?, *i)?,
        Op::Binary(a, b, op) => be.binary(&up(a)?, &up(b)?, *op)?,
        Op::Compare(a, b, op) => be.compare(&up(a)?, &up(b)?, *op)?,
        Op::Select(m, a, b) => be.select(&up(m)?, &up(a)?, &up(b)?)?,
        Op::Reduce(x, axis, op) => be.reduce(&up(x)?, *axis, *op)?,
        Op::Pool2d(x, spec) => be.pool2d(&up(x)?, *spec)?,
        Op::Resize(x, size, mode) => be.resize(&up(x)?, *size, *mode)?,
        Op::Concat(xs, axis) => {
            let xs = xs.iter().map(up).collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&B::Tensor> = xs.iter().collect();
            be.concat(&refs, *axis)?
        }
        Op::Slice {
            x,
            axis,
            start,
            len,
        } => be.slice(&up(x)?, *axis, *start, *len)?,
        Op::WriteSlice {
            dst,
            axis,
            start,
            src,
        } => {
            let mut d = up(dst)?;
            be.write_slice(&mut d, *axis, *start, &up(src)?)?;
            d
        }
        Op::Matmul(a, b, tb) => be.matmul(&up(a)?, &up(b)?, *tb)?,
        Op::Embedding(table, ids) => be.embedding(&up(table)?, ids)?,
        Op::RmsNorm(x, g, eps) => be.rms_norm(&up(x)?, &up(g)?, *eps)?,
        Op::Rope(x, c, s) => be.rope(&up(x)?, &up(c)?, &up(s)?)?,
        Op::AttentionGqa { q, k, v, spec } => be.attention_gqa(&up(q)?, &up(k)?, &up(v)?, *spec)?,
        Op::KvCache {
            batch,
            capacity,
            kv_heads,
            head_dim,
            scale,
            steps,
        } => {
            let mut cache = KvCache::new(be, *batch, *capacity, *kv_heads, *head_dim)?;
            let mut joined = Vec::new();
            for step in steps {
                cache.append(be, &up(&step.k)?, &up(&step.v)?)?;
                if let Some(q) = &step.q {
                    let y = cache.attend(be, &up(q)?, *scale)?;
                    joined.extend_from_slice(be.readback(&y)?.data());
                }
            }
            let n = joined.len();
            return Ok(HostTensor::new(vec![n], joined).unwrap());
        }
    };
    be.readback(&y)
}

/// What a case expects of every backend.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The reference's values, within the tolerance.
    Values(Tol),
    /// A [`BackendError::Shape`] refusal.
    Refused,
}

#[derive(Debug)]
struct Case {
    name: String,
    op: Op,
    expect: Expect,
}

/// The table builder: `push(name, tol, op)` and `refuse(name, op)`.
#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    fn push(&mut self, name: impl Into<String>, tol: Tol, op: Op) {
        self.0.push(Case {
            name: name.into(),
            op,
            expect: Expect::Values(tol),
        });
    }

    fn refuse(&mut self, name: impl Into<String>, op: Op) {
        self.0.push(Case {
            name: name.into(),
            op,
            expect: Expect::Refused,
        });
    }
}

fn act_tol(act: Activation, base: Tol) -> Tol {
    match act {
        Activation::Gelu | Activation::Silu | Activation::Sigmoid => Tol {
            abs: base.abs.max(TRANSCENDENTAL.abs),
            rel: base.rel.max(TRANSCENDENTAL.rel),
        },
        _ => base,
    }
}

fn cases() -> Vec<Case> {
    let mut c = Table::default();

    // ---- linear: every activation, odd shapes, with and without bias.
    for (i, act) in Activation::ALL.into_iter().enumerate() {
        c.push(
            format!("3x5x7 -> 11, bias, {act:?}"),
            act_tol(act, ACCUMULATED),
            Op::Linear {
                x: t(&[3, 5, 7], 10 + i, 1.5),
                w: t(&[11, 7], 20 + i, 0.5),
                b: Some(t(&[11], 30 + i, 0.5)),
                act,
            },
        );
    }
    c.push(
        "1x13 -> 37 (past a 32-wide panel), no bias",
        ACCUMULATED,
        Op::Linear {
            x: t(&[1, 13], 1, 1.5),
            w: t(&[37, 13], 2, 0.5),
            b: None,
            act: Activation::Identity,
        },
    );
    c.push(
        "29x70 -> 67, bias, Gelu",
        ACCUMULATED,
        Op::Linear {
            x: t(&[29, 70], 3, 1.0),
            w: t(&[67, 70], 4, 0.2),
            b: Some(t(&[67], 5, 0.5)),
            act: Activation::Gelu,
        },
    );
    c.refuse(
        "input features differ from the layer's",
        Op::Linear {
            x: t(&[2, 6], 1, 1.0),
            w: t(&[4, 5], 2, 1.0),
            b: None,
            act: Activation::Identity,
        },
    );
    c.refuse(
        "bias of the wrong length",
        Op::Linear {
            x: t(&[2, 5], 1, 1.0),
            w: t(&[4, 5], 2, 1.0),
            b: Some(t(&[3], 3, 1.0)),
            act: Activation::Identity,
        },
    );

    // ---- conv2d: patch embedding, padding/stride, groups, dilation, depthwise,
    // pointwise, fused activations, batch 3, non-square images.
    let conv = |x: &[usize], w: &[usize], bias: bool, spec: Conv2dSpec, seed: usize| Op::Conv2d {
        x: t(x, seed, 1.5),
        w: t(w, seed + 1, 0.4),
        b: bias.then(|| t(&[w[0]], seed + 2, 0.5)),
        spec,
    };
    c.push(
        "patch embedding 4x4/4, 2x3x12x16 -> 8",
        ACCUMULATED,
        conv(
            &[2, 3, 12, 16],
            &[8, 3, 4, 4],
            true,
            Conv2dSpec::new([4, 4], [0, 0]),
            1,
        ),
    );
    c.push(
        "3x3 stride [2,1] pad 1, batch 3, 3x7x6 -> 4",
        ACCUMULATED,
        conv(
            &[3, 3, 7, 6],
            &[4, 3, 3, 2],
            true,
            Conv2dSpec::new([2, 1], [1, 1]),
            2,
        ),
    );
    c.push(
        "groups 3, 6 -> 9 channels, 9x11, Relu6",
        act_tol(Activation::Relu6, ACCUMULATED),
        conv(
            &[2, 6, 9, 11],
            &[9, 2, 3, 3],
            true,
            Conv2dSpec::new([1, 1], [1, 1])
                .groups(3)
                .activation(Activation::Relu6),
            3,
        ),
    );
    c.push(
        "dilation [2,3] pad [2,3], 5x13x10, HardSwish",
        ACCUMULATED,
        conv(
            &[1, 5, 13, 10],
            &[4, 5, 3, 3],
            true,
            Conv2dSpec::new([1, 2], [2, 3])
                .dilation([2, 3])
                .activation(Activation::HardSwish),
            4,
        ),
    );
    c.push(
        "grouped and dilated stride 2, groups 2, no bias, Silu",
        act_tol(Activation::Silu, ACCUMULATED),
        conv(
            &[2, 4, 10, 7],
            &[6, 2, 3, 2],
            false,
            Conv2dSpec::new([2, 2], [1, 0])
                .groups(2)
                .dilation([2, 1])
                .activation(Activation::Silu),
            5,
        ),
    );
    for (stride, act) in [(1, Activation::Relu), (2, Activation::Relu6)] {
        c.push(
            format!("depthwise 3x3 stride {stride} pad 1, 7 channels 9x13, {act:?}"),
            ACCUMULATED,
            conv(
                &[2, 7, 9, 13],
                &[7, 1, 3, 3],
                true,
                Conv2dSpec::new([stride, stride], [1, 1])
                    .groups(7)
                    .activation(act),
                6 + stride,
            ),
        );
    }
    c.push(
        "depthwise 5x5 dilation 2 pad 4, 3 channels 11x8",
        ACCUMULATED,
        conv(
            &[1, 3, 11, 8],
            &[3, 1, 5, 5],
            true,
            Conv2dSpec::new([1, 1], [4, 4]).groups(3).dilation([2, 2]),
            9,
        ),
    );
    c.push(
        "depthwise 3x3 stride 2 pad 0 (edge windows only partly fit), 5 channels 8x9",
        ACCUMULATED,
        conv(
            &[1, 5, 8, 9],
            &[5, 1, 3, 3],
            false,
            Conv2dSpec::new([2, 2], [0, 0]).groups(5),
            10,
        ),
    );
    c.push(
        "pointwise 1x1, 5 -> 7, 6x9, Sigmoid",
        act_tol(Activation::Sigmoid, ACCUMULATED),
        conv(
            &[2, 5, 6, 9],
            &[7, 5, 1, 1],
            true,
            Conv2dSpec::new([1, 1], [0, 0]).activation(Activation::Sigmoid),
            11,
        ),
    );
    c.push(
        "pointwise 1x1 grouped, groups 3, 6 -> 9, 5x4, Gelu",
        act_tol(Activation::Gelu, ACCUMULATED),
        conv(
            &[1, 6, 5, 4],
            &[9, 2, 1, 1],
            true,
            Conv2dSpec::new([1, 1], [0, 0])
                .groups(3)
                .activation(Activation::Gelu),
            12,
        ),
    );
    c.push(
        "1x1 stride 2 (not the pointwise path)",
        ACCUMULATED,
        conv(
            &[1, 4, 7, 5],
            &[3, 4, 1, 1],
            true,
            Conv2dSpec::new([2, 2], [0, 0]),
            13,
        ),
    );
    c.refuse(
        "input channels differ from the layer's",
        conv(
            &[1, 4, 8, 8],
            &[2, 3, 3, 3],
            true,
            Conv2dSpec::new([1, 1], [1, 1]),
            1,
        ),
    );
    c.refuse(
        "output channels not a multiple of groups",
        conv(
            &[1, 6, 8, 8],
            &[4, 2, 3, 3],
            true,
            Conv2dSpec::new([1, 1], [1, 1]).groups(3),
            1,
        ),
    );
    c.refuse(
        "input smaller than the dilated kernel",
        conv(
            &[1, 2, 4, 4],
            &[2, 2, 3, 3],
            false,
            Conv2dSpec::new([1, 1], [0, 0]).dilation([2, 2]),
            1,
        ),
    );
    c.refuse(
        "stride 0",
        conv(
            &[1, 2, 4, 4],
            &[2, 2, 3, 3],
            false,
            Conv2dSpec::new([0, 1], [0, 0]),
            1,
        ),
    );

    // ---- the ViT's row ops and layout ops.
    c.push(
        "3x5x7, eps 1e-6",
        ACCUMULATED,
        Op::LayerNorm {
            x: t(&[3, 5, 7], 1, 2.0),
            gamma: t(&[7], 2, 1.0),
            beta: t(&[7], 3, 1.0),
            eps: 1e-6,
        },
    );
    c.push(
        "1x13x192, eps 1e-5",
        ACCUMULATED,
        Op::LayerNorm {
            x: t(&[1, 13, 192], 4, 3.0),
            gamma: t(&[192], 5, 1.0),
            beta: t(&[192], 6, 1.0),
            eps: 1e-5,
        },
    );
    c.refuse(
        "gamma of the wrong length",
        Op::LayerNorm {
            x: t(&[2, 5], 1, 1.0),
            gamma: t(&[4], 2, 1.0),
            beta: t(&[5], 3, 1.0),
            eps: 1e-6,
        },
    );
    for shape in [vec![3, 5, 7], vec![1, 13], vec![2, 197]] {
        c.push(
            format!("{shape:?}"),
            TRANSCENDENTAL,
            Op::Softmax(t(&shape, 7, 6.0)),
        );
    }
    for (i, act) in Activation::ALL.into_iter().enumerate() {
        c.push(
            format!("3x5x7 in [-8, 8], {act:?}"),
            act_tol(act, ROUNDED),
            Op::Activate(t(&[3, 5, 7], 40 + i, 8.0), act),
        );
        c.push(
            format!("1x13 in [-1, 1], {act:?}"),
            act_tol(act, ROUNDED),
            Op::Activate(t(&[1, 13], 50 + i, 1.0), act),
        );
    }
    for (b, n, heads, hd) in [(2, 7, 3, 4), (1, 13, 2, 32), (3, 5, 1, 64)] {
        c.push(
            format!("B{b} N{n} {heads} heads x {hd}"),
            ATTENTION,
            Op::Attention {
                qkv: t(&[b, n, 3 * heads * hd], b * 100 + n, 1.5),
                heads,
                scale: (hd as f32).powf(-0.5),
            },
        );
    }
    c.refuse(
        "qkv width not 3 x heads x head_dim",
        Op::Attention {
            qkv: t(&[1, 4, 10], 1, 1.0),
            heads: 2,
            scale: 1.0,
        },
    );
    c.push(
        "same shape 3x5x7",
        ROUNDED,
        Op::Add(t(&[3, 5, 7], 1, 1.0), t(&[3, 5, 7], 2, 1.0)),
    );
    c.push(
        "position embedding [1,5,7] over batch 3",
        ROUNDED,
        Op::Add(t(&[3, 5, 7], 3, 1.0), t(&[1, 5, 7], 4, 1.0)),
    );
    c.refuse(
        "mismatched shapes",
        Op::Add(t(&[2, 3], 1, 1.0), t(&[3, 2], 2, 1.0)),
    );
    c.push(
        "3x5x7 by -0.37",
        ROUNDED,
        Op::Scale(t(&[3, 5, 7], 5, 1.0), -0.37),
    );
    c.push(
        "3x5x7 as 15x7",
        EXACT,
        Op::Reshape(t(&[3, 5, 7], 6, 1.0), vec![15, 7]),
    );
    c.refuse(
        "size changes",
        Op::Reshape(t(&[3, 5, 7], 6, 1.0), vec![3, 5, 8]),
    );
    for dims in [vec![2, 0, 1], vec![0, 2, 1, 3], vec![1, 0]] {
        let shape: Vec<usize> = [3, 5, 7, 2][..dims.len()].to_vec();
        c.push(
            format!("{shape:?} by {dims:?}"),
            EXACT,
            Op::Permute(t(&shape, 8, 1.0), dims),
        );
    }
    c.refuse(
        "not a permutation",
        Op::Permute(t(&[2, 3, 4], 1, 1.0), vec![0, 0, 1]),
    );
    c.push(
        "two tokens before batch 3 of 5x7",
        EXACT,
        Op::PrependTokens(
            vec![t(&[1, 1, 7], 1, 1.0), t(&[1, 1, 7], 2, 1.0)],
            t(&[3, 5, 7], 3, 1.0),
        ),
    );
    c.refuse(
        "token of the wrong width",
        Op::PrependTokens(vec![t(&[1, 1, 6], 1, 1.0)], t(&[3, 5, 7], 3, 1.0)),
    );
    c.push(
        "token 4 of 3x5x7",
        EXACT,
        Op::SelectToken(t(&[3, 5, 7], 9, 1.0), 4),
    );
    c.refuse(
        "token past the sequence",
        Op::SelectToken(t(&[3, 5, 7], 9, 1.0), 5),
    );

    // ---- broadcasting binary ops, comparisons, select.
    let pairs: [(&[usize], &[usize]); 6] = [
        (&[3, 5, 7], &[3, 5, 7]),
        (&[2, 1, 5], &[3, 1]),
        (&[3, 5, 7], &[7]),
        (&[2, 3, 4, 5], &[2, 3, 1, 1]),
        (&[1, 13], &[]),
        (&[4, 1], &[1, 6]),
    ];
    for (i, (a, b)) in pairs.iter().enumerate() {
        for op in BinaryOp::ALL {
            let rhs = if op == BinaryOp::Div {
                away_from_zero(b, 60 + i)
            } else {
                t(b, 60 + i, 1.5)
            };
            c.push(
                format!("{a:?} {op:?} {b:?}"),
                ROUNDED,
                Op::Binary(t(a, 70 + i, 1.5), rhs, op),
            );
        }
        for op in CompareOp::ALL {
            c.push(
                format!("{a:?} {op:?} {b:?}"),
                EXACT,
                Op::Compare(grid(a, i), grid(b, i + 3), op),
            );
        }
    }
    c.refuse(
        "[2,3] with [4,3]",
        Op::Binary(t(&[2, 3], 1, 1.0), t(&[4, 3], 2, 1.0), BinaryOp::Add),
    );
    c.refuse(
        "[3,5] with [5,3]",
        Op::Compare(t(&[3, 5], 1, 1.0), t(&[5, 3], 2, 1.0), CompareOp::Lt),
    );
    c.push(
        "mask [3,5,7] with a and b alike",
        EXACT,
        Op::Select(
            mask(&[3, 5, 7], 1),
            t(&[3, 5, 7], 2, 1.0),
            t(&[3, 5, 7], 3, 1.0),
        ),
    );
    c.push(
        "mask [5,1] over a [2,1,7] and b [7]",
        EXACT,
        Op::Select(mask(&[5, 1], 2), t(&[2, 1, 7], 4, 1.0), t(&[7], 5, 1.0)),
    );
    c.push(
        "causal mask [1,1,4,6] over scores [2,3,4,6] and a scalar",
        EXACT,
        Op::Select(
            mask(&[1, 1, 4, 6], 3),
            t(&[2, 3, 4, 6], 6, 1.0),
            t(&[], 7, 1.0),
        ),
    );
    c.refuse(
        "mask that does not broadcast",
        Op::Select(mask(&[4], 1), t(&[3, 5], 2, 1.0), t(&[3, 5], 3, 1.0)),
    );

    // ---- reductions.
    for (shape, axis) in [
        (vec![3, 5, 7], 0),
        (vec![3, 5, 7], 1),
        (vec![3, 5, 7], 2),
        (vec![1, 13], 1),
        (vec![2, 37], 1),
        (vec![13], 0),
    ] {
        for op in ReduceOp::ALL {
            let (x, tol) = match op {
                ReduceOp::Sum | ReduceOp::Mean => (t(&shape, axis + 1, 1.5), ROUNDED_SUM),
                ReduceOp::Max | ReduceOp::ArgMax => (grid(&shape, axis + 2), EXACT),
            };
            c.push(
                format!("{shape:?} axis {axis} {op:?}"),
                tol,
                Op::Reduce(x, axis, op),
            );
        }
    }
    c.refuse(
        "axis past the rank",
        Op::Reduce(t(&[3, 5], 1, 1.0), 2, ReduceOp::Sum),
    );
    c.refuse(
        "empty axis",
        Op::Reduce(t(&[3, 0, 2], 1, 1.0), 1, ReduceOp::Max),
    );

    // ---- pooling and resampling.
    let pool = |kind, kernel, stride, padding| Pool2dSpec {
        kind,
        kernel,
        stride,
        padding,
    };
    for kind in [PoolKind::Max, PoolKind::Avg] {
        let tol = if kind == PoolKind::Max {
            EXACT
        } else {
            ROUNDED
        };
        for (shape, spec) in [
            (vec![2, 3, 7, 9], pool(kind, [3, 3], [2, 2], [1, 1])),
            (vec![1, 5, 8, 6], pool(kind, [2, 2], [2, 2], [0, 0])),
            (vec![3, 2, 9, 5], pool(kind, [3, 2], [1, 2], [1, 1])),
            (vec![1, 4, 13, 11], pool(kind, [5, 5], [1, 1], [2, 2])),
            (vec![2, 3, 5, 7], Pool2dSpec::global(kind, [5, 7])),
        ] {
            c.push(
                format!("{shape:?} {spec:?}"),
                tol,
                Op::Pool2d(grid(&shape, 3), spec),
            );
        }
    }
    c.refuse(
        "padding over half the kernel",
        Op::Pool2d(
            t(&[1, 1, 8, 8], 1, 1.0),
            pool(PoolKind::Max, [3, 3], [1, 1], [2, 2]),
        ),
    );
    c.refuse(
        "window larger than the input",
        Op::Pool2d(
            t(&[1, 1, 3, 3], 1, 1.0),
            pool(PoolKind::Avg, [5, 5], [1, 1], [0, 0]),
        ),
    );
    for (shape, size) in [
        (vec![1, 3, 5, 7], [10, 14]),
        (vec![2, 2, 6, 4], [3, 9]),
        (vec![1, 1, 4, 4], [4, 4]),
        (vec![1, 2, 3, 5], [1, 1]),
        (vec![1, 2, 7, 3], [13, 11]),
    ] {
        let x = t(&shape, 11, 1.5);
        c.push(
            format!("{shape:?} to {size:?} nearest"),
            EXACT,
            Op::Resize(x.clone(), size, ResizeMode::Nearest),
        );
        for align_corners in [false, true] {
            c.push(
                format!("{shape:?} to {size:?} bilinear align_corners={align_corners}"),
                ROUNDED_SUM,
                Op::Resize(x.clone(), size, ResizeMode::Bilinear { align_corners }),
            );
        }
    }
    c.refuse(
        "to an empty size",
        Op::Resize(t(&[1, 1, 4, 4], 1, 1.0), [0, 3], ResizeMode::Nearest),
    );
    c.refuse(
        "a rank-3 input",
        Op::Resize(t(&[1, 4, 4], 1, 1.0), [2, 2], ResizeMode::Nearest),
    );

    // ---- concat, slice, write_slice, embedding.
    c.push(
        "three along axis 1: [2,3,5] [2,1,5] [2,4,5]",
        EXACT,
        Op::Concat(
            vec![
                t(&[2, 3, 5], 1, 1.0),
                t(&[2, 1, 5], 2, 1.0),
                t(&[2, 4, 5], 3, 1.0),
            ],
            1,
        ),
    );
    c.push(
        "two along axis 0: [1,13] [2,13]",
        EXACT,
        Op::Concat(vec![t(&[1, 13], 4, 1.0), t(&[2, 13], 5, 1.0)], 0),
    );
    c.push(
        "two along the last axis: [3,5,7] [3,5,2]",
        EXACT,
        Op::Concat(vec![t(&[3, 5, 7], 6, 1.0), t(&[3, 5, 2], 7, 1.0)], 2),
    );
    c.push("one tensor", EXACT, Op::Concat(vec![t(&[3, 5], 8, 1.0)], 0));
    c.refuse(
        "differing outside the axis",
        Op::Concat(vec![t(&[2, 3, 5], 1, 1.0), t(&[2, 3, 4], 2, 1.0)], 1),
    );
    c.refuse(
        "axis past the rank",
        Op::Concat(vec![t(&[2, 3], 1, 1.0)], 2),
    );
    for (axis, start, len) in [(0, 1, 2), (1, 2, 3), (2, 0, 7), (2, 6, 1), (1, 5, 0)] {
        c.push(
            format!("[3,5,7] axis {axis} {start}..+{len}"),
            EXACT,
            Op::Slice {
                x: t(&[3, 5, 7], 9, 1.0),
                axis,
                start,
                len,
            },
        );
    }
    c.refuse(
        "past the end",
        Op::Slice {
            x: t(&[3, 5, 7], 9, 1.0),
            axis: 1,
            start: 3,
            len: 3,
        },
    );
    for (axis, start, src) in [
        (1, 3, vec![2, 2, 3, 4]),
        (1, 0, vec![2, 1, 3, 4]),
        (3, 1, vec![2, 9, 3, 2]),
        (0, 0, vec![2, 9, 3, 4]),
    ] {
        c.push(
            format!("{src:?} into [2,9,3,4] axis {axis} at {start}"),
            EXACT,
            Op::WriteSlice {
                dst: t(&[2, 9, 3, 4], 10, 1.0),
                axis,
                start,
                src: t(&src, 11, 1.0),
            },
        );
    }
    c.refuse(
        "past the end",
        Op::WriteSlice {
            dst: t(&[2, 9, 3, 4], 10, 1.0),
            axis: 1,
            start: 8,
            src: t(&[2, 2, 3, 4], 11, 1.0),
        },
    );
    c.refuse(
        "differing outside the axis",
        Op::WriteSlice {
            dst: t(&[2, 9, 3, 4], 10, 1.0),
            axis: 1,
            start: 0,
            src: t(&[2, 2, 3, 5], 11, 1.0),
        },
    );
    c.push(
        "ids [4, 0, 4, 12] of [13, 7]",
        EXACT,
        Op::Embedding(t(&[13, 7], 12, 1.0), vec![4, 0, 4, 12]),
    );
    c.push("no ids", EXACT, Op::Embedding(t(&[13, 7], 12, 1.0), vec![]));
    c.refuse(
        "id past the table",
        Op::Embedding(t(&[13, 7], 12, 1.0), vec![3, 13]),
    );

    // ---- batched matmul.
    for (a, b, tb) in [
        (vec![3, 5, 7], vec![3, 7, 4], false),
        (vec![3, 5, 7], vec![3, 4, 7], true),
        (vec![2, 3, 1, 13], vec![2, 3, 13, 9], false),
        (vec![13, 37], vec![37, 33], false),
        (vec![1, 6, 64], vec![1, 29, 64], true),
    ] {
        c.push(
            format!("{a:?} x {b:?} transpose_b={tb}"),
            ACCUMULATED,
            Op::Matmul(t(&a, 13, 1.0), t(&b, 14, 1.0), tb),
        );
    }
    c.refuse(
        "inner sizes differ",
        Op::Matmul(t(&[3, 5, 7], 1, 1.0), t(&[3, 6, 4], 2, 1.0), false),
    );
    c.refuse(
        "batch sizes differ",
        Op::Matmul(t(&[3, 5, 7], 1, 1.0), t(&[2, 7, 4], 2, 1.0), false),
    );
    c.refuse(
        "rank 1",
        Op::Matmul(t(&[7], 1, 1.0), t(&[7, 4], 2, 1.0), false),
    );

    // ---- RMS norm and rope.
    c.push(
        "3x5x7 eps 1e-6",
        ACCUMULATED,
        Op::RmsNorm(t(&[3, 5, 7], 15, 2.0), t(&[7], 16, 1.0), 1e-6),
    );
    c.push(
        "1x13x896 eps 1e-6",
        ACCUMULATED,
        Op::RmsNorm(t(&[1, 13, 896], 17, 2.0), t(&[896], 18, 1.0), 1e-6),
    );
    c.refuse(
        "gamma of the wrong length",
        Op::RmsNorm(t(&[3, 5], 1, 1.0), t(&[4], 2, 1.0), 1e-6),
    );
    for (b, n, h, hd, offset) in [(2, 5, 3, 8, 0), (1, 1, 6, 64, 17), (3, 7, 2, 6, 3)] {
        let (cos, sin) = rope_tables(n, hd, offset);
        c.push(
            format!("B{b} N{n} H{h} hd{hd} from position {offset}"),
            ROUNDED_SUM,
            Op::Rope(t(&[b, n, h, hd], 19, 1.5), cos, sin),
        );
    }
    let (cos, sin) = rope_tables(5, 6, 0);
    c.refuse(
        "odd head_dim",
        Op::Rope(
            t(&[1, 5, 2, 5], 1, 1.0),
            t(&[5, 5], 2, 1.0),
            t(&[5, 5], 3, 1.0),
        ),
    );
    c.refuse(
        "tables for another length",
        Op::Rope(t(&[1, 4, 2, 6], 1, 1.0), cos, sin),
    );

    // ---- grouped-query attention.
    let gqa = |b, nq, hq, nk, hkv, hd, kv_len, causal: Option<usize>, seed| Op::AttentionGqa {
        q: t(&[b, nq, hq, hd], seed, 1.5),
        k: t(&[b, nk, hkv, hd], seed + 1, 1.5),
        v: t(&[b, nk, hkv, hd], seed + 2, 1.5),
        spec: AttentionSpec {
            scale: (hd as f32).powf(-0.5),
            kv_len,
            causal,
        },
    };
    c.push(
        "MHA B2 N7 3 heads x 8, full",
        ATTENTION,
        gqa(2, 7, 3, 7, 3, 8, 7, None, 1),
    );
    c.push(
        "GQA 6 over 2 heads, B1 N9 x 16, causal prefill",
        ATTENTION,
        gqa(1, 9, 6, 9, 2, 16, 9, Some(0), 2),
    );
    c.push(
        "GQA 6 over 2, kv_len 11 of capacity 20, one query at 10 (decode)",
        ATTENTION,
        gqa(2, 1, 6, 20, 2, 16, 11, Some(10), 3),
    );
    c.push(
        "GQA 6 over 2, kv_len 12 of 16, 3 queries at 9 (chunked decode)",
        ATTENTION,
        gqa(3, 3, 6, 16, 2, 8, 12, Some(9), 4),
    );
    c.push(
        "MQA 4 over 1, hd 64, kv_len 5 of 8, no mask",
        ATTENTION,
        gqa(1, 4, 4, 8, 1, 64, 5, None, 5),
    );
    c.push(
        "GQA 4 over 2, 13 queries, hd 32, causal",
        ATTENTION,
        gqa(1, 13, 4, 13, 2, 32, 13, Some(0), 6),
    );
    c.refuse(
        "6 query heads over 4 kv heads",
        gqa(1, 2, 6, 4, 4, 8, 4, None, 1),
    );
    c.refuse("kv_len past the keys", gqa(1, 2, 2, 4, 2, 8, 5, None, 1));
    c.refuse(
        "kv_len 0: the queries see no key",
        gqa(1, 2, 2, 4, 2, 8, 0, None, 1),
    );
    c.refuse(
        "k and v differ",
        Op::AttentionGqa {
            q: t(&[1, 2, 2, 8], 1, 1.0),
            k: t(&[1, 4, 2, 8], 2, 1.0),
            v: t(&[1, 3, 2, 8], 3, 1.0),
            spec: AttentionSpec {
                scale: 1.0,
                kv_len: 3,
                causal: None,
            },
        },
    );

    // ---- KV cache: prefill, decode steps, refusal past capacity.
    let kv = |b, n, seed| KvStep {
        k: t(&[b, n, 2, 8], seed, 1.5),
        v: t(&[b, n, 2, 8], seed + 1, 1.5),
        q: Some(t(&[b, n, 6, 8], seed + 2, 1.5)),
    };
    c.push(
        "B2, 6 over 2 heads: prefill 5, decode 1, decode 2, capacity 12",
        ATTENTION,
        Op::KvCache {
            batch: 2,
            capacity: 12,
            kv_heads: 2,
            head_dim: 8,
            scale: 8f32.powf(-0.5),
            steps: vec![kv(2, 5, 1), kv(2, 1, 2), kv(2, 2, 3)],
        },
    );
    c.push(
        "append without attending, then decode",
        ATTENTION,
        Op::KvCache {
            batch: 1,
            capacity: 6,
            kv_heads: 2,
            head_dim: 8,
            scale: 0.3,
            steps: vec![
                KvStep {
                    q: None,
                    ..kv(1, 3, 4)
                },
                kv(1, 1, 5),
            ],
        },
    );
    c.refuse(
        "append past the capacity",
        Op::KvCache {
            batch: 1,
            capacity: 4,
            kv_heads: 2,
            head_dim: 8,
            scale: 0.3,
            steps: vec![kv(1, 3, 1), kv(1, 2, 2)],
        },
    );

    // ---- sizes past the CPU's parallel threshold (16 Ki elements), so that the
    // row-chunked and multi-task paths run, not only the single-threaded ones.
    for act in [Activation::Silu, Activation::Gelu, Activation::HardSwish] {
        c.push(
            format!("parallel 3x100x64, {act:?}"),
            act_tol(act, ROUNDED),
            Op::Activate(t(&[3, 100, 64], 80, 6.0), act),
        );
    }
    c.push(
        "parallel 128x96 -> 160, bias, Silu",
        act_tol(Activation::Silu, ACCUMULATED),
        Op::Linear {
            x: t(&[128, 96], 81, 1.0),
            w: t(&[160, 96], 82, 0.2),
            b: Some(t(&[160], 83, 0.5)),
            act: Activation::Silu,
        },
    );
    c.push(
        "parallel grouped 3x3, groups 2, 8 -> 6 channels 32x40, Relu",
        ACCUMULATED,
        conv(
            &[1, 8, 32, 40],
            &[6, 4, 3, 3],
            true,
            Conv2dSpec::new([1, 1], [1, 1])
                .groups(2)
                .activation(Activation::Relu),
            84,
        ),
    );
    c.push(
        "parallel [2,3,64,64] Mul [3,1,1]",
        ROUNDED,
        Op::Binary(
            t(&[2, 3, 64, 64], 85, 1.5),
            t(&[3, 1, 1], 86, 1.5),
            BinaryOp::Mul,
        ),
    );
    c.push(
        "parallel [2,3,64,64] Add same shape",
        ROUNDED,
        Op::Binary(
            t(&[2, 3, 64, 64], 87, 1.5),
            t(&[2, 3, 64, 64], 88, 1.5),
            BinaryOp::Add,
        ),
    );
    c.push(
        "parallel [64,300] Sub [300]",
        ROUNDED,
        Op::Binary(t(&[64, 300], 89, 1.5), t(&[300], 90, 1.5), BinaryOp::Sub),
    );
    c.push(
        "parallel [2,3,64,64] Gt [1,1,64,1]",
        EXACT,
        Op::Compare(
            grid(&[2, 3, 64, 64], 1),
            grid(&[1, 1, 64, 1], 2),
            CompareOp::Gt,
        ),
    );
    c.push(
        "parallel mask [1,1,64,64] over [2,3,64,64] and a scalar",
        EXACT,
        Op::Select(
            mask(&[1, 1, 64, 64], 4),
            t(&[2, 3, 64, 64], 91, 1.0),
            t(&[], 92, 1.0),
        ),
    );
    for op in ReduceOp::ALL {
        let exact = matches!(op, ReduceOp::Max | ReduceOp::ArgMax);
        for (shape, axis) in [([40, 8, 500], 1), ([40, 500, 8], 2)] {
            let x = if exact {
                grid(&shape, 5)
            } else {
                t(&shape, 93, 1.5)
            };
            c.push(
                format!("parallel {shape:?} axis {axis} {op:?}"),
                if exact { EXACT } else { ROUNDED_SUM },
                Op::Reduce(x, axis, op),
            );
        }
    }
    for kind in [PoolKind::Max, PoolKind::Avg] {
        c.push(
            format!("parallel [1,8,64,64] 3x3/1 pad 1 {kind:?}"),
            if kind == PoolKind::Max {
                EXACT
            } else {
                ROUNDED
            },
            Op::Pool2d(grid(&[1, 8, 64, 64], 6), pool(kind, [3, 3], [1, 1], [1, 1])),
        );
    }
    c.push(
        "parallel [1,4,48,48] to [96,96] bilinear",
        ROUNDED_SUM,
        Op::Resize(
            t(&[1, 4, 48, 48], 94, 1.5),
            [96, 96],
            ResizeMode::Bilinear {
                align_corners: false,
            },
        ),
    );
    c.push(
        "parallel [1,4,48,48] to [96,96] nearest",
        EXACT,
        Op::Resize(t(&[1, 4, 48, 48], 95, 1.5), [96, 96], ResizeMode::Nearest),
    );
    c.push(
        "parallel 64x512",
        ACCUMULATED,
        Op::RmsNorm(t(&[64, 512], 96, 2.0), t(&[512], 97, 1.0), 1e-6),
    );
    let (cos, sin) = rope_tables(64, 64, 5);
    c.push(
        "parallel B1 N64 H4 hd64",
        ROUNDED_SUM,
        Op::Rope(t(&[1, 64, 4, 64], 98, 1.5), cos, sin),
    );
    c.push(
        "GQA 4 over 2, 64 queries x 32, causal (several row blocks per head)",
        ATTENTION,
        gqa(1, 64, 4, 64, 2, 32, 64, Some(0), 99),
    );

    // ---- empty tensors: a zero-sized dimension is a valid shape, and an op over it
    // returns an empty result of the right shape (no panic, no refusal).
    c.push(
        "empty [0,3] Add [3]",
        EXACT,
        Op::Binary(t(&[0, 3], 1, 1.0), t(&[3], 2, 1.0), BinaryOp::Add),
    );
    c.push(
        "empty [0,5] axis 1 Sum",
        EXACT,
        Op::Reduce(t(&[0, 5], 1, 1.0), 1, ReduceOp::Sum),
    );
    c.push(
        "empty piece along axis 1",
        EXACT,
        Op::Concat(vec![t(&[2, 0, 3], 1, 1.0), t(&[2, 2, 3], 2, 1.0)], 1),
    );
    c.push(
        "K = 0 gives zeros",
        EXACT,
        Op::Matmul(t(&[2, 3, 0], 1, 1.0), t(&[2, 0, 4], 2, 1.0), false),
    );
    c.push("no queries", EXACT, gqa(1, 0, 4, 5, 2, 8, 5, Some(5), 1));
    c.push(
        "batch 0",
        EXACT,
        Op::Activate(t(&[0, 5, 7], 1, 1.0), Activation::Gelu),
    );
    c.push(
        "no inputs: each row is its bias, Relu",
        EXACT,
        Op::Linear {
            x: t(&[3, 2, 0], 1, 1.0),
            w: t(&[5, 0], 2, 1.0),
            b: Some(t(&[5], 3, 1.0)),
            act: Activation::Relu,
        },
    );
    c.push(
        "no outputs",
        EXACT,
        Op::Linear {
            x: t(&[3, 4], 1, 1.0),
            w: t(&[0, 4], 2, 1.0),
            b: None,
            act: Activation::Identity,
        },
    );
    c.0
}

/// Sums of a few to a few hundred terms in f32 (reductions, bilinear weights, rope).
const ROUNDED_SUM: Tol = Tol {
    abs: 2e-6,
    rel: 2e-5,
};

/// The outcome of one case on one backend.
struct Outcome {
    backend: String,
    op: &'static str,
    case: String,
    /// Largest |got - want| (0 for refusals).
    max_err: f32,
    /// Largest |got - want| / (abs + rel |want|): above 1 fails.
    worst: f32,
    failure: Option<String>,
}

/// Compares `got` to `want` under `tol`; `Err` describes the worst element.
fn compare(got: &HostTensor, want: &HostTensor, tol: Tol) -> (f32, f32, Option<String>) {
    if got.shape() != want.shape() {
        return (
            f32::INFINITY,
            f32::INFINITY,
            Some(format!("shape {:?}, want {:?}", got.shape(), want.shape())),
        );
    }
    let (mut max_err, mut worst, mut at) = (0f32, 0f32, None);
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        if g.is_nan() && w.is_nan() {
            continue;
        }
        let err = (g - w).abs();
        let err = if err.is_nan() { f32::INFINITY } else { err };
        let bound = tol.abs + tol.rel * w.abs();
        let ratio = if bound > 0.0 {
            err / bound
        } else if err > 0.0 {
            f32::INFINITY
        } else {
            0.0
        };
        max_err = max_err.max(err);
        if ratio > worst {
            worst = ratio;
            at = Some((i, g, w));
        }
    }
    let failure = (worst > 1.0).then(|| {
        let (i, g, w) = at.unwrap_or_default();
        format!(
            "max |err| {max_err:.2e}; worst at flat index {i}: got {g}, want {w} (tol {:.0e} + {:.0e}|want|)",
            tol.abs, tol.rel
        )
    });
    (max_err, worst, failure)
}

fn check<B: Backend>(
    be: &B,
    label: &str,
    case: &Case,
    want: &Result<HostTensor, BackendError>,
) -> Outcome {
    let got = match guarded(|| run(be, &case.op)) {
        Ok(got) => got,
        Err(panic) => {
            return Outcome {
                backend: label.to_string(),
                op: case.op.name(),
                case: case.name.clone(),
                max_err: 0.0,
                worst: 0.0,
                failure: Some(panic),
            }
        }
    };
    let mut out = Outcome {
        backend: label.to_string(),
        op: case.op.name(),
        case: case.name.clone(),
        max_err: 0.0,
        worst: 0.0,
        failure: None,
    };
    match (case.expect, got, want) {
        (Expect::Refused, Err(BackendError::Shape { .. }), _) => {}
        (Expect::Refused, Err(e), _) => {
            out.failure = Some(format!("refused, but not as a shape error: {e}"))
        }
        (Expect::Refused, Ok(y), _) => {
            out.failure = Some(format!(
                "accepted an invalid input (returned {:?})",
                y.shape()
            ))
        }
        (Expect::Values(_), _, Err(e)) => out.failure = Some(format!("the reference failed: {e}")),
        (Expect::Values(_), Err(e), _) => out.failure = Some(format!("error: {e}")),
        (Expect::Values(tol), Ok(g), Ok(w)) => {
            let (max_err, worst, failure) = compare(&g, w, tol);
            out.max_err = max_err;
            out.worst = worst;
            out.failure = failure;
        }
    }
    out
}

/// Runs `f`, turning a panic into a message, so that one panicking kernel is one
/// failed case in the report instead of the end of the run.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("panicked: {msg}")
    })
}

fn wanted(label: &str) -> bool {
    match std::env::var("CONFORMANCE_BACKENDS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|p| label.starts_with(p.trim())),
        _ => true,
    }
}

#[cfg(feature = "wgpu")]
fn open_wgpu() -> Result<WgpuBackend, String> {
    WgpuBackend::new(&WgpuOptions {
        f16_weights: false,
        ..WgpuOptions::from_env()
    })
    .map_err(|e| e.to_string())
}

/// Runs every case on every backend; prints a per-op summary and every failure.
#[test]
fn every_backend_matches_the_reference_on_every_op() {
    let cases = cases();
    let reference = ReferenceBackend::new();
    let wants: Vec<_> = cases
        .iter()
        .map(|c| {
            guarded(|| run(&reference, &c.op))
                .unwrap_or_else(|p| Err(BackendError::shape("reference", p)))
        })
        .collect();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut problems: Vec<String> = Vec::new();

    // The reference must itself refuse what a case says is invalid.
    for (case, want) in cases.iter().zip(&wants) {
        if matches!(case.expect, Expect::Refused)
            && !matches!(want, Err(BackendError::Shape { .. }))
        {
            problems.push(format!(
                "{} / {}: the reference does not refuse it",
                case.op.name(),
                case.name
            ));
        }
    }

    let mut cpus: Vec<(String, CpuBackend)> = vec![("cpu".into(), CpuBackend::new(2).unwrap())];
    for isa in [Isa::Avx2, Isa::Portable] {
        let be = CpuBackend::with_isa(2, isa).unwrap();
        if be.isa() == isa && be.isa() != cpus[0].1.isa() {
            cpus.push((format!("cpu/{isa:?}").to_lowercase(), be));
        }
    }
    for (label, be) in &cpus {
        if wanted(label) {
            for (case, want) in cases.iter().zip(&wants) {
                outcomes.push(check(be, label, case, want));
            }
        }
    }
    // `cargo test --workspace` builds the models crate with wgpu (the edge turns the
    // feature on); a build without it says so.
    #[cfg(not(feature = "wgpu"))]
    println!("skip wgpu: splitstream-models built without its `wgpu` feature");
    #[cfg(feature = "wgpu")]
    if wanted("wgpu") {
        match open_wgpu() {
            Ok(g) => {
                let label = "wgpu";
                for (case, want) in cases.iter().zip(&wants) {
                    outcomes.push(check(&g, label, case, want));
                }
            }
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                problems.push(format!("wgpu: no adapter under CI=true: {e}"))
            }
            Err(e) => println!("skip wgpu: {e}"),
        }
    }

    // Summary per (backend, op): cases, failures, largest error, worst error/tolerance.
    println!(
        "\n{:<12} {:<15} {:>6} {:>6} {:>10} {:>9}",
        "backend", "op", "cases", "fail", "max |err|", "err/tol"
    );
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for o in &outcomes {
        if !keys.contains(&(o.backend.as_str(), o.op)) {
            keys.push((o.backend.as_str(), o.op));
        }
    }
    for (backend, op) in keys {
        let rows: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.backend == backend && o.op == op)
            .collect();
        let fails = rows.iter().filter(|o| o.failure.is_some()).count();
        let max_err = rows
            .iter()
            .filter(|o| o.failure.is_none())
            .fold(0f32, |m, o| m.max(o.max_err));
        let worst = rows
            .iter()
            .filter(|o| o.failure.is_none())
            .fold(0f32, |m, o| m.max(o.worst));
        println!(
            "{backend:<12} {op:<15} {:>6} {fails:>6} {max_err:>10.2e} {worst:>9.3}",
            rows.len()
        );
    }
    for o in &outcomes {
        if let Some(f) = &o.failure {
            problems.push(format!("{:<12} {:<14} {}: {f}", o.backend, o.op, o.case));
        }
    }
    if !problems.is_empty() {
        panic!(
            "{} of {} (case, backend) checks failed:\n{}",
            problems.len(),
            outcomes.len(),
            problems.join("\n")
        );
    }
}

/// The CPU's depthwise and pointwise fast paths on FemtoDet-sized layers.
#[test]
fn cpu_depthwise_and_pointwise_fast_paths_match_the_reference_at_femtodet_sizes() {
    let cpu = CpuBackend::new(2).unwrap();
    let reference = ReferenceBackend::new();
    let x = t(&[1, 48, 40, 40], 1, 1.5);
    let cases = [
        (
            "depthwise 3x3 s1",
            t(&[48, 1, 3, 3], 2, 0.4),
            Conv2dSpec::new([1, 1], [1, 1])
                .groups(48)
                .activation(Activation::Relu),
        ),
        (
            "depthwise 3x3 s2",
            t(&[48, 1, 3, 3], 3, 0.4),
            Conv2dSpec::new([2, 2], [1, 1])
                .groups(48)
                .activation(Activation::Relu6),
        ),
        (
            "pointwise 48 -> 96",
            t(&[96, 48, 1, 1], 4, 0.2),
            Conv2dSpec::new([1, 1], [0, 0]).activation(Activation::Relu),
        ),
        (
            "pointwise grouped 48 -> 48 in 4",
            t(&[48, 12, 1, 1], 5, 0.3),
            Conv2dSpec::new([1, 1], [0, 0]).groups(4),
        ),
    ];
    for (name, w, spec) in cases {
        let b = t(&[w.shape()[0]], 6, 0.5);
        let op = Op::Conv2d {
            x: x.clone(),
            w,
            b: Some(b),
            spec,
        };
        let want = run(&reference, &op).unwrap();
        let got = run(&cpu, &op).unwrap();
        let (max_err, _, failure) = compare(&got, &want, ACCUMULATED);
        assert!(failure.is_none(), "{name}: {}", failure.unwrap_or_default());
        if name.starts_with("depthwise") {
            // The direct kernel is compiled per ISA but never contracts into FMAs.
            let portable = CpuBackend::with_isa(2, Isa::Portable).unwrap();
            assert!(
                run(&portable, &op).unwrap() == got,
                "{name}: the portable build of the depthwise kernel differs from {:?}",
                cpu.isa()
            );
        }
        println!("{name}: max |err| {max_err:.2e}");
    }
}

/// Degenerate shapes (rank 0, zero-sized dimensions, ranks an op does not take) never
/// panic the CPU backend (nor the reference): each op either refuses with a shape error
/// or agrees with the reference.
#[test]
fn cpu_never_panics_on_degenerate_shapes() {
    let shapes: [&[usize]; 10] = [
        &[],
        &[0],
        &[1],
        &[5],
        &[3, 0],
        &[0, 4],
        &[2, 3, 4],
        &[1, 1, 1, 1],
        &[2, 0, 3, 3],
        &[1, 2, 3, 0],
    ];
    let mut ops = Vec::new();
    for (i, &s) in shapes.iter().enumerate() {
        let x = t(s, i, 1.0);
        let last = s.last().copied().unwrap_or(1);
        ops.push(Op::Activate(x.clone(), Activation::Silu));
        ops.push(Op::Softmax(x.clone()));
        ops.push(Op::LayerNorm {
            x: x.clone(),
            gamma: t(&[last], 1, 1.0),
            beta: t(&[last], 2, 1.0),
            eps: 1e-5,
        });
        ops.push(Op::RmsNorm(x.clone(), t(&[last], 3, 1.0), 1e-6));
        ops.push(Op::Scale(x.clone(), 2.0));
        ops.push(Op::SelectToken(x.clone(), 0));
        ops.push(Op::Attention {
            qkv: x.clone(),
            heads: 1,
            scale: 1.0,
        });
        ops.push(Op::Embedding(x.clone(), vec![0]));
        ops.push(Op::Matmul(x.clone(), x.clone(), true));
        ops.push(Op::Matmul(x.clone(), x.clone(), false));
        ops.push(Op::Permute(x.clone(), (0..s.len()).rev().collect()));
        ops.push(Op::PrependTokens(vec![t(&[1, 1, last], 4, 1.0)], x.clone()));
        ops.push(Op::Linear {
            x: x.clone(),
            w: t(&[2, last], 5, 1.0),
            b: Some(t(&[2], 6, 1.0)),
            act: Activation::Gelu,
        });
        ops.push(Op::Pool2d(
            x.clone(),
            Pool2dSpec {
                kind: PoolKind::Avg,
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
            },
        ));
        ops.push(Op::Resize(
            x.clone(),
            [2, 3],
            ResizeMode::Bilinear {
                align_corners: true,
            },
        ));
        let channels = s.get(1).copied().unwrap_or(1);
        for groups in [1, channels.max(1)] {
            ops.push(Op::Conv2d {
                x: x.clone(),
                w: t(&[channels.max(1), channels / groups, 1, 1], 7, 1.0),
                b: None,
                spec: Conv2dSpec::new([1, 1], [0, 0]).groups(groups),
            });
        }
        ops.push(Op::AttentionGqa {
            q: x.clone(),
            k: x.clone(),
            v: x.clone(),
            spec: AttentionSpec {
                scale: 1.0,
                kv_len: s.get(1).copied().unwrap_or(0),
                causal: Some(0),
            },
        });
        if s.len() == 4 {
            let (cos, sin) = (t(&[s[1], s[3]], 8, 1.0), t(&[s[1], s[3]], 9, 1.0));
            ops.push(Op::Rope(x.clone(), cos, sin));
        }
        for axis in 0..=s.len() {
            for op in ReduceOp::ALL {
                ops.push(Op::Reduce(x.clone(), axis, op));
            }
            ops.push(Op::Slice {
                x: x.clone(),
                axis,
                start: 0,
                len: 1,
            });
            ops.push(Op::Concat(vec![x.clone(), x.clone()], axis));
            ops.push(Op::WriteSlice {
                dst: x.clone(),
                axis,
                start: 0,
                src: x.clone(),
            });
        }
        for (j, &s2) in shapes.iter().enumerate() {
            let y = t(s2, j + 20, 1.0);
            ops.push(Op::Binary(x.clone(), y.clone(), BinaryOp::Div));
            ops.push(Op::Compare(x.clone(), y.clone(), CompareOp::Le));
            ops.push(Op::Select(mask(s, j), x.clone(), y.clone()));
            ops.push(Op::Add(x.clone(), y));
        }
    }
    let cpu = CpuBackend::new(2).unwrap();
    let reference = ReferenceBackend::new();
    let mut problems = Vec::new();
    for op in &ops {
        let what = || format!("{} on {:?}", op.name(), first_shape(op));
        let want = guarded(|| run(&reference, op));
        let got = guarded(|| run(&cpu, op));
        match (want, got) {
            (Err(p), _) => problems.push(format!("reference {}: {p}", what())),
            (_, Err(p)) => problems.push(format!("cpu {}: {p}", what())),
            (Ok(Ok(w)), Ok(Ok(g))) => {
                if let (_, _, Some(f)) = compare(&g, &w, ACCUMULATED) {
                    problems.push(format!("cpu {}: {f}", what()));
                }
            }
            (Ok(Err(_)), Ok(Err(_))) => {}
            (Ok(w), Ok(g)) => problems.push(format!(
                "{}: reference {:?} but cpu {:?}",
                what(),
                w.map(|t| t.shape().to_vec()),
                g.map(|t| t.shape().to_vec())
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} degenerate cases failed:\n{}",
        problems.len(),
        ops.len(),
        problems.join("\n")
    );
}

/// The shape of an op's first input, for messages.
fn first_shape(op: &Op) -> Vec<usize> {
    let x = match op {
        Op::Linear { x, .. }
        | Op::Conv2d { x, .. }
        | Op::LayerNorm { x, .. }
        | Op::Slice { x, .. }
        | Op::Softmax(x)
        | Op::Activate(x, _)
        | Op::Add(x, _)
        | Op::Scale(x, _)
        | Op::Reshape(x, _)
        | Op::Permute(x, _)
        | Op::PrependTokens(_, x)
        | Op::SelectToken(x, _)
        | Op::Binary(x, ..)
        | Op::Compare(x, ..)
        | Op::Select(_, x, _)
        | Op::Reduce(x, ..)
        | Op::Pool2d(x, _)
        | Op::Resize(x, ..)
        | Op::Matmul(x, ..)
        | Op::Embedding(x, _)
        | Op::RmsNorm(x, ..)
        | Op::Rope(x, ..) => x,
        Op::Attention { qkv, .. } => qkv,
        Op::WriteSlice { dst, .. } => dst,
        Op::AttentionGqa { q, .. } => q,
        Op::Concat(xs, _) => match xs.first() {
            Some(x) => x,
            None => return Vec::new(),
        },
        Op::KvCache { .. } => return Vec::new(),
    };
    x.shape().to_vec()
}
