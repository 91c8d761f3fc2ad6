//! The wgpu backend against the CPU backend, kernel by kernel on odd shapes (none a
//! multiple of the kernels' tiles). DeiT-Tiny against timm is in `wgpu_deit.rs`.
//!
//! These run on whatever adapter wgpu finds, software ones included: in CI that is Mesa
//! lavapipe. Without any adapter they fail under `CI=true` and print a skip elsewhere.

use std::sync::OnceLock;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuInitError, WgpuOptions};
use splitstream_models::backend::Conv2dSpec;
use splitstream_models::{Activation, Backend, HostTensor};

/// f32 kernels against the CPU's: accumulation order differs, nothing else.
const KERNEL_TOLERANCE: f32 = 2e-5;

fn open(f16_weights: bool) -> Result<WgpuBackend, WgpuInitError> {
    WgpuBackend::new(&WgpuOptions {
        f16_weights,
        ..WgpuOptions::from_env()
    })
}

/// One device for the whole file (f32 weights, so kernels compare tightly).
fn gpu(test: &str) -> Option<WgpuBackend> {
    static GPU: OnceLock<Result<WgpuBackend, WgpuInitError>> = OnceLock::new();
    splitstream_testkit::open_or_skip(test, GPU.get_or_init(|| open(false)).as_ref()).cloned()
}

fn cpu() -> CpuBackend {
    CpuBackend::new(2).unwrap()
}

/// A deterministic tensor with values spread over about [-1.5, 1.5].
fn t(shape: &[usize], seed: usize) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97_531)) % 10_007;
            h as f32 / 10_007.0 * 3.0 - 1.5
        })
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// Weights exactly representable in f16 (multiples of 1/64 in [-0.75, 0.75]), so the
/// f16 storage path must agree with the f32 one.
fn w16(shape: &[usize], seed: usize) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| ((i * 7919 + seed * 31) % 97) as f32 / 64.0 - 0.75)
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// Largest |a - b| relative to the largest |b|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn assert_close(name: &str, got: &HostTensor, want: &HostTensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let d = max_rel_diff(got.data(), want.data());
    assert!(d <= tol, "{name}: max relative diff {d:e} > {tol:e}");
}

/// Runs `f` on both backends with the same host inputs and compares the results.
fn on_both<F, G>(name: &str, gpu: &WgpuBackend, tol: f32, f: F, g: G)
where
    F: Fn(&CpuBackend) -> HostTensor,
    G: Fn(&WgpuBackend) -> HostTensor,
{
    let want = f(&cpu());
    let got = g(gpu);
    assert_close(name, &got, &want, tol);
}

fn linear_on<B: Backend>(
    be: &B,
    x: &HostTensor,
    w: &HostTensor,
    b: &HostTensor,
    act: Activation,
) -> HostTensor {
    let layer = be.prepare_linear(w, Some(b)).unwrap();
    let y = be.linear(&be.upload(x).unwrap(), &layer, act).unwrap();
    be.readback(&y).unwrap()
}

#[test]
fn linear_with_bias_and_gelu_matches_cpu_on_odd_shapes() {
    let Some(g) = gpu("linear") else { return };
    // K = 29: the scalar loader; K = 36: the vec4 loader. M and N off the 64 tile.
    for (shape, n, seed) in [
        (vec![2, 37, 29], 67, 1),
        (vec![131, 36], 70, 2),
        (vec![1, 3], 1, 3),
    ] {
        let k = *shape.last().unwrap();
        let x = t(&shape, seed);
        let w = t(&[n, k], seed + 10);
        let b = t(&[n], seed + 20);
        for act in [Activation::Identity, Activation::Gelu] {
            on_both(
                &format!("linear {shape:?}x[{n},{k}] {act:?}"),
                &g,
                KERNEL_TOLERANCE,
                |c| linear_on(c, &x, &w, &b, act),
                |gb| linear_on(gb, &x, &w, &b, act),
            );
        }
    }
}

#[test]
fn linear_without_bias_is_a_plain_product() {
    let Some(g) = gpu("linear_no_bias") else {
        return;
    };
    let x = t(&[5, 17], 4);
    let w = t(&[9, 17], 5);
    fn run<B: Backend>(be: &B, x: &HostTensor, w: &HostTensor) -> HostTensor {
        let l = be.prepare_linear(w, None).unwrap();
        let y = be.linear(&be.upload(x).unwrap(), &l, Activation::Identity);
        be.readback(&y.unwrap()).unwrap()
    }
    let want = run(&cpu(), &x, &w);
    assert_close(
        "linear without bias",
        &run(&g, &x, &w),
        &want,
        KERNEL_TOLERANCE,
    );
}

#[test]
fn f16_weight_storage_agrees_with_f32_on_f16_exact_weights() {
    let Some(g32) = gpu("f16_weights") else {
        return;
    };
    let g16 = match open(true) {
        Ok(g) if g.f16_weights() => g,
        _ => {
            println!(
                "skip f16_weights: adapter {} lacks SHADER_F16",
                g32.describe()
            );
            return;
        }
    };
    let x = t(&[3, 41, 36], 6);
    let w = w16(&[75, 36], 7);
    let b = t(&[75], 8);
    let a = linear_on(&g32, &x, &w, &b, Activation::Gelu);
    let h = linear_on(&g16, &x, &w, &b, Activation::Gelu);
    assert_close("f16 vs f32 weights", &h, &a, 1e-6);
}

/// A convolution on either backend (object-safe, so one closure serves both).
trait ConvOn {
    fn run(
        &self,
        x: &HostTensor,
        w: &HostTensor,
        b: &HostTensor,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> HostTensor;
}

impl<B: Backend> ConvOn for B {
    fn run(
        &self,
        x: &HostTensor,
        w: &HostTensor,
        b: &HostTensor,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> HostTensor {
        let l = self
            .prepare_conv2d(w, Some(b), Conv2dSpec::new(stride, pad))
            .unwrap();
        self.readback(&self.conv2d(&self.upload(x).unwrap(), &l).unwrap())
            .unwrap()
    }
}

#[test]
fn conv2d_matches_cpu_with_padding_stride_and_patch_embedding() {
    let Some(g) = gpu("conv2d") else { return };
    // A general convolution, and a patch embedding (stride = kernel) on a 20x20 image.
    let cases = [
        ([2, 3, 11, 9], [5, 3, 3, 2], [2, 1], [1, 1]),
        ([3, 3, 20, 20], [7, 3, 4, 4], [4, 4], [0, 0]),
    ];
    for (i, (xs, ws, stride, pad)) in cases.into_iter().enumerate() {
        let x = t(&xs, 30 + i);
        let w = t(&ws, 40 + i);
        let b = t(&[ws[0]], 50 + i);
        let run = |be: &dyn ConvOn| be.run(&x, &w, &b, stride, pad);
        let want = run(&cpu());
        let got = run(&g);
        assert_close(
            &format!("conv2d {xs:?} * {ws:?}"),
            &got,
            &want,
            KERNEL_TOLERANCE,
        );
    }
}

#[test]
fn layer_norm_and_softmax_match_cpu_on_odd_rows() {
    let Some(g) = gpu("rows") else { return };
    for (shape, seed) in [(vec![3, 7, 193], 60), (vec![4, 5], 61), (vec![2, 300], 62)] {
        let d = *shape.last().unwrap();
        let mut x = t(&shape, seed);
        // An offset and spread that punish a one-pass variance or a missing max.
        for v in x.data_mut() {
            *v = *v * 8.0 + 30.0;
        }
        let gamma = t(&[d], seed + 1);
        let beta = t(&[d], seed + 2);
        on_both(
            &format!("layer_norm {shape:?}"),
            &g,
            KERNEL_TOLERANCE,
            |c| {
                let y = c.layer_norm(
                    &c.upload(&x).unwrap(),
                    &c.upload(&gamma).unwrap(),
                    &c.upload(&beta).unwrap(),
                    1e-6,
                );
                c.readback(&y.unwrap()).unwrap()
            },
            |c| {
                let y = c.layer_norm(
                    &c.upload(&x).unwrap(),
                    &c.upload(&gamma).unwrap(),
                    &c.upload(&beta).unwrap(),
                    1e-6,
                );
                c.readback(&y.unwrap()).unwrap()
            },
        );
        on_both(
            &format!("softmax {shape:?}"),
            &g,
            KERNEL_TOLERANCE,
            |c| {
                c.readback(&c.softmax(&c.upload(&x).unwrap()).unwrap())
                    .unwrap()
            },
            |c| {
                c.readback(&c.softmax(&c.upload(&x).unwrap()).unwrap())
                    .unwrap()
            },
        );
    }
}

#[test]
fn attention_matches_cpu_on_odd_and_deit_shapes() {
    let Some(g) = gpu("attention") else { return };
    // (batch, tokens, heads, head_dim): odd everything; then DeiT-Tiny's 197 tokens of
    // 3 heads x 64, which spans several query and key blocks.
    for (b, n, heads, hd) in [(2, 77, 3, 5), (1, 197, 3, 64), (3, 1, 2, 8)] {
        let qkv = t(&[b, n, 3 * heads * hd], b * n + hd);
        let scale = (hd as f32).powf(-0.5);
        on_both(
            &format!("attention b{b} n{n} h{heads} hd{hd}"),
            &g,
            KERNEL_TOLERANCE,
            |c| {
                c.readback(&c.attention(&c.upload(&qkv).unwrap(), heads, scale).unwrap())
                    .unwrap()
            },
            |c| {
                c.readback(&c.attention(&c.upload(&qkv).unwrap(), heads, scale).unwrap())
                    .unwrap()
            },
        );
    }
}

#[test]
fn elementwise_and_layout_ops_match_cpu() {
    let Some(g) = gpu("elementwise") else { return };
    let x = t(&[3, 5, 7], 70);
    let y = t(&[3, 5, 7], 71);
    let pos = t(&[1, 5, 7], 72);
    let x4 = t(&[2, 3, 4, 5], 73);
    let cls = t(&[1, 1, 7], 74);
    let dist = t(&[1, 1, 7], 75);
    // Pure data movement and single roundings: these must agree exactly.
    let check = |name: &str,
                 f: &dyn Fn(&CpuBackend) -> HostTensor,
                 h: &dyn Fn(&WgpuBackend) -> HostTensor| {
        let want = f(&cpu());
        let got = h(&g);
        assert_eq!(got.shape(), want.shape(), "{name}");
        assert_eq!(got.data(), want.data(), "{name}");
    };
    macro_rules! both {
        ($name:expr, |$be:ident| $body:expr) => {
            check($name, &|$be: &CpuBackend| $body, &|$be: &WgpuBackend| $body)
        };
    }
    both!("add", |be| be
        .readback(
            &be.add(&be.upload(&x).unwrap(), &be.upload(&y).unwrap())
                .unwrap()
        )
        .unwrap());
    both!("add broadcast", |be| be
        .readback(
            &be.add(&be.upload(&x).unwrap(), &be.upload(&pos).unwrap())
                .unwrap()
        )
        .unwrap());
    both!("scale", |be| be
        .readback(&be.scale(&be.upload(&x).unwrap(), 0.37).unwrap())
        .unwrap());
    both!("permute 021", |be| be
        .readback(&be.permute(&be.upload(&x).unwrap(), &[0, 2, 1]).unwrap())
        .unwrap());
    both!("permute 3102", |be| be
        .readback(&be.permute(&be.upload(&x4).unwrap(), &[3, 1, 0, 2]).unwrap())
        .unwrap());
    both!("prepend two tokens", |be| {
        let (c, d, xs) = (
            be.upload(&cls).unwrap(),
            be.upload(&dist).unwrap(),
            be.upload(&x).unwrap(),
        );
        be.readback(&be.prepend_tokens(&[&c, &d], &xs).unwrap())
            .unwrap()
    });
    both!("select token", |be| be
        .readback(&be.select_token(&be.upload(&x).unwrap(), 3).unwrap())
        .unwrap());
    both!("reshape", |be| {
        let v = be.reshape(be.upload(&x).unwrap(), &[15, 7]).unwrap();
        be.readback(&v).unwrap()
    });
    // GELU goes through a different erf on each backend: close, not equal.
    on_both(
        "gelu",
        &g,
        KERNEL_TOLERANCE,
        |c| {
            c.readback(
                &c.activate(&c.upload(&x).unwrap(), Activation::Gelu)
                    .unwrap(),
            )
            .unwrap()
        },
        |c| {
            c.readback(
                &c.activate(&c.upload(&x).unwrap(), Activation::Gelu)
                    .unwrap(),
            )
            .unwrap()
        },
    );
}

#[test]
fn a_chain_of_ops_without_readback_is_deterministic() {
    let Some(g) = gpu("chain") else { return };
    let x = t(&[2, 33, 20], 80);
    let w = t(&[20, 20], 81);
    let b = t(&[20], 82);
    let layer = g.prepare_linear(&w, Some(&b)).unwrap();
    let run = || {
        // Ten layers recorded back to back; intermediate buffers are dropped (and
        // recycled by the pool) before anything is submitted.
        let mut h = g.upload(&x).unwrap();
        for _ in 0..10 {
            let y = g.linear(&h, &layer, Activation::Gelu).unwrap();
            h = g.add(&h, &y).unwrap();
        }
        g.readback(&h).unwrap()
    };
    let (first, second) = (run(), run());
    assert_eq!(first.data(), second.data());
    let c = cpu();
    let cl = c.prepare_linear(&w, Some(&b)).unwrap();
    let mut h = c.upload(&x).unwrap();
    for _ in 0..10 {
        let y = c.linear(&h, &cl, Activation::Gelu).unwrap();
        h = c.add(&h, &y).unwrap();
    }
    assert_close("10-layer chain", &first, &c.readback(&h).unwrap(), 1e-4);
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let Some(g) = gpu("errors") else { return };
    let a = g.upload(&t(&[2, 3], 1)).unwrap();
    let b = g.upload(&t(&[3, 2], 2)).unwrap();
    assert!(g.add(&a, &b).is_err());
    assert!(g.attention(&a, 2, 1.0).is_err());
    assert!(g.permute(&a, &[0, 0]).is_err());
    assert!(g
        .select_token(&g.upload(&t(&[1, 2, 3], 3)).unwrap(), 2)
        .is_err());
    let layer = g.prepare_linear(&t(&[4, 5], 4), None).unwrap();
    assert!(g.linear(&a, &layer, Activation::Identity).is_err());
    assert!(g.prepare_linear(&t(&[4, 5], 5), Some(&t(&[3], 6))).is_err());
    // The backend is still usable afterwards.
    assert_eq!(
        g.readback(&g.scale(&a, 2.0).unwrap()).unwrap().data().len(),
        6
    );
}

#[test]
fn auto_never_picks_a_software_adapter() {
    let Some(g) = gpu("auto") else { return };
    let auto = WgpuBackend::auto(&WgpuOptions::default()).unwrap();
    if let Some(a) = &auto {
        assert!(!a.is_software(), "auto chose {}", a.describe());
    }
    if g.is_software() {
        // Asked for exactly this software adapter, auto still declines it.
        let named = WgpuOptions {
            adapter_name: Some(g.adapter_info().name.clone()),
            ..WgpuOptions::default()
        };
        assert!(WgpuBackend::auto(&named).unwrap().is_none());
        assert!(WgpuBackend::new(&named).is_ok());
    }
    let missing = WgpuOptions {
        adapter_name: Some("no adapter is called this".into()),
        ..WgpuOptions::default()
    };
    let err = WgpuBackend::new(&missing).unwrap_err();
    assert!(matches!(err, WgpuInitError::NoAdapter { .. }), "{err}");
}
