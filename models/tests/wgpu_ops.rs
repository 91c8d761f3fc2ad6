//! The wgpu kernels of the wider op set where `conformance.rs`'s small table does not
//! reach: FemtoDet-sized depthwise and pointwise convolutions (the direct kernel and
//! the im2col-free matmul), a KV-cache decode loop against one causal prefill, a chain
//! of the new ops with in-place cache writes and no readback in between (determinism),
//! and the wgpu kernels' own limits refused as shape errors.
//!
//! They run on whatever adapter wgpu finds (Mesa lavapipe in CI); without one they
//! fail under `CI=true` and print a skip elsewhere.

use std::sync::OnceLock;

use splitstream_models::backend::reference::ReferenceBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuInitError, WgpuOptions};
use splitstream_models::backend::{AttentionSpec, BinaryOp, Conv2dSpec, KvCache};
use splitstream_models::{Activation, Backend, BackendError, HostTensor};

fn gpu(test: &str) -> Option<WgpuBackend> {
    static GPU: OnceLock<Result<WgpuBackend, WgpuInitError>> = OnceLock::new();
    let opened = GPU.get_or_init(|| {
        WgpuBackend::new(&WgpuOptions {
            f16_weights: false,
            ..WgpuOptions::from_env()
        })
    });
    match opened {
        Ok(g) => Some(g.clone()),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: no wgpu adapter under CI=true: {e}")
        }
        Err(e) => {
            println!("skip {test}: {e}");
            None
        }
    }
}

/// A deterministic tensor with values spread over `[-amp, amp]`.
fn t(shape: &[usize], seed: usize, amp: f32) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let h = (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97_531)) % 10_007;
            (h as f32 / 10_007.0 * 2.0 - 1.0) * amp
        })
        .collect();
    HostTensor::new(shape.to_vec(), data).unwrap()
}

/// Largest |got - want| relative to the largest |want|.
fn rel_diff(got: &HostTensor, want: &HostTensor) -> f32 {
    assert_eq!(got.shape(), want.shape());
    let scale = want
        .data()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let worst = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

fn conv_on<B: Backend>(
    be: &B,
    x: &HostTensor,
    w: &HostTensor,
    b: &HostTensor,
    spec: Conv2dSpec,
) -> HostTensor {
    let layer = be.prepare_conv2d(w, Some(b), spec).unwrap();
    be.readback(&be.conv2d(&be.upload(x).unwrap(), &layer).unwrap())
        .unwrap()
}

#[test]
fn femtodet_sized_depthwise_and_pointwise_convs_match_the_reference() {
    let Some(g) = gpu("femtodet convs") else {
        return;
    };
    let r = ReferenceBackend::new();
    let x = t(&[2, 48, 40, 40], 1, 1.5);
    let cases = [
        (
            "depthwise 3x3 s1 ReLU6",
            t(&[48, 1, 3, 3], 2, 0.5),
            Conv2dSpec::new([1, 1], [1, 1])
                .groups(48)
                .activation(Activation::Relu6),
        ),
        (
            "depthwise 3x3 s2",
            t(&[48, 1, 3, 3], 3, 0.5),
            Conv2dSpec::new([2, 2], [1, 1]).groups(48),
        ),
        (
            "depthwise 5x5 dilation 2, multiplier 2, HardSwish",
            t(&[96, 1, 5, 5], 4, 0.3),
            Conv2dSpec::new([1, 1], [4, 4])
                .groups(48)
                .dilation([2, 2])
                .activation(Activation::HardSwish),
        ),
        (
            "pointwise 48 -> 96 ReLU",
            t(&[96, 48, 1, 1], 5, 0.3),
            Conv2dSpec::new([1, 1], [0, 0]).activation(Activation::Relu),
        ),
        (
            "pointwise 48 -> 24, groups 4, SiLU",
            t(&[24, 12, 1, 1], 6, 0.3),
            Conv2dSpec::new([1, 1], [0, 0])
                .groups(4)
                .activation(Activation::Silu),
        ),
    ];
    for (name, w, spec) in cases {
        let b = t(&[w.shape()[0]], 7, 0.5);
        let want = conv_on(&r, &x, &w, &b, spec);
        let got = conv_on(&g, &x, &w, &b, spec);
        let d = rel_diff(&got, &want);
        assert!(d <= 1e-5, "{name}: max relative diff {d:e}");
    }
}

#[test]
fn kv_cache_decode_matches_one_causal_prefill() {
    let Some(g) = gpu("kv cache") else { return };
    // Llama-like grouped heads: 6 query heads over 2 key/value heads of 40 channels
    // (not a multiple of 4), 70 positions (two key blocks of the kernel and a partial
    // third), of which the first 61 are one prefill and the rest decoded one by one.
    let (batch, n, hq, hkv, hd, prefill) = (2, 70, 6, 2, 40, 61);
    let scale = 1.0 / (hd as f32).sqrt();
    let q = g.upload(&t(&[batch, n, hq, hd], 10, 1.0)).unwrap();
    let k = g.upload(&t(&[batch, n, hkv, hd], 11, 1.0)).unwrap();
    let v = g.upload(&t(&[batch, n, hkv, hd], 12, 1.0)).unwrap();
    let full = g
        .attention_gqa(
            &q,
            &k,
            &v,
            AttentionSpec {
                scale,
                kv_len: n,
                causal: Some(0),
            },
        )
        .unwrap();
    let full = g.readback(&full).unwrap();

    let mut cache = KvCache::new(&g, batch, n + 3, hkv, hd).unwrap();
    let mut rows = Vec::new();
    let mut at = 0;
    for len in std::iter::once(prefill).chain(std::iter::repeat_n(1, n - prefill)) {
        let part = |x: &_| g.slice(x, 1, at, len).unwrap();
        cache.append(&g, &part(&k), &part(&v)).unwrap();
        let out = cache.attend(&g, &part(&q), scale).unwrap();
        rows.push(out);
        at += len;
    }
    let refs: Vec<_> = rows.iter().collect();
    let decoded = g.readback(&g.concat(&refs, 1).unwrap()).unwrap();
    let d = rel_diff(&decoded, &full);
    assert!(d <= 1e-6, "decode vs prefill: max relative diff {d:e}");

    let r = ReferenceBackend::new();
    let rq = r.upload(&t(&[batch, n, hq, hd], 10, 1.0)).unwrap();
    let rk = r.upload(&t(&[batch, n, hkv, hd], 11, 1.0)).unwrap();
    let rv = r.upload(&t(&[batch, n, hkv, hd], 12, 1.0)).unwrap();
    let want = r
        .attention_gqa(
            &rq,
            &rk,
            &rv,
            AttentionSpec {
                scale,
                kv_len: n,
                causal: Some(0),
            },
        )
        .unwrap();
    let d = rel_diff(&full, &r.readback(&want).unwrap());
    assert!(d <= 1e-5, "prefill vs reference: max relative diff {d:e}");
}

#[test]
fn a_chain_of_new_ops_with_in_place_writes_is_deterministic() {
    let Some(g) = gpu("chain") else { return };
    let x = t(&[3, 17, 24], 20, 1.0);
    let gamma = t(&[24], 21, 1.0);
    let run = || {
        // Nothing is read back until the end: every op, the in-place writes included,
        // is recorded into one pending chain, and buffers freed on the way are reused.
        let mut acc = g
            .upload(&HostTensor::zeros(vec![3, 40, 24]).unwrap())
            .unwrap();
        let mut h = g.upload(&x).unwrap();
        let mut at = 0;
        for step in 0..4 {
            let n = g.rms_norm(&h, &g.upload(&gamma).unwrap(), 1e-6).unwrap();
            let s = g.activate(&n, Activation::Silu).unwrap();
            let p = g.matmul(&s, &n, true).unwrap();
            let m = g
                .reduce(&p, 2, splitstream_models::backend::ReduceOp::Max)
                .unwrap();
            let m = g.reshape(m, &[3, 17, 1]).unwrap();
            h = g.binary(&s, &m, BinaryOp::Mul).unwrap();
            let len = 7 + step;
            g.write_slice(&mut acc, 1, at, &g.slice(&h, 1, step, len).unwrap())
                .unwrap();
            at += len;
        }
        g.readback(&acc).unwrap()
    };
    let first = run();
    assert_eq!(first.data(), run().data());
    assert!(first.data()[..34 * 24].iter().any(|&v| v != 0.0));
    assert!(first.data()[34 * 24..40 * 24].iter().all(|&v| v == 0.0));
}

#[test]
fn the_kernels_limits_are_shape_errors() {
    let Some(g) = gpu("limits") else { return };
    let is_shape = |r: Result<_, BackendError>| matches!(r, Err(BackendError::Shape { .. }));
    let rank7 = g.upload(&t(&[1, 1, 1, 1, 2, 1, 3], 30, 1.0)).unwrap();
    assert!(is_shape(g.binary(&rank7, &rank7, BinaryOp::Add)));
    let wide = g.upload(&t(&[1, 2, 1, 260], 31, 1.0)).unwrap();
    let spec = AttentionSpec {
        scale: 1.0,
        kv_len: 2,
        causal: None,
    };
    assert!(is_shape(g.attention_gqa(&wide, &wide, &wide, spec)));
    let table = g.upload(&t(&[5, 3], 32, 1.0)).unwrap();
    assert!(is_shape(g.embedding(&table, &[1, 5])));
    // Still usable afterwards.
    let rows = g
        .readback(&g.embedding(&table, &[4, 0, 4]).unwrap())
        .unwrap();
    assert_eq!(rows.shape(), [3, 3]);
    assert_eq!(rows.data()[..3], rows.data()[6..]);
}

/// Equal, NaN matching NaN (bit patterns of NaNs may differ).
fn same_with_nans(name: &str, got: &HostTensor, want: &HostTensor) {
    assert_eq!(got.shape(), want.shape(), "{name}");
    for (i, (a, b)) in got.data().iter().zip(want.data()).enumerate() {
        assert!(
            a == b || (a.is_nan() && b.is_nan()),
            "{name}: element {i} is {a}, the reference says {b}"
        );
    }
}

#[test]
fn nans_and_infinities_follow_the_reference() {
    let Some(g) = gpu("nans") else { return };
    let r = ReferenceBackend::new();
    let special = [
        f32::NAN,
        1.0,
        -0.0,
        f32::INFINITY,
        2.0,
        f32::NEG_INFINITY,
        0.0,
        f32::NAN,
    ];
    let a = HostTensor::new(vec![2, 4], special.to_vec()).unwrap();
    let b = HostTensor::new(vec![2, 4], special.iter().rev().copied().collect()).unwrap();
    let img = HostTensor::new(vec![1, 2, 2, 2], special.to_vec()).unwrap();
    macro_rules! both {
        ($name:expr, |$be:ident| $body:expr) => {{
            let want = {
                let $be = &r;
                $body
            };
            let got = {
                let $be = &g;
                $body
            };
            same_with_nans($name, &got, &want);
        }};
    }
    for op in BinaryOp::ALL {
        both!(&format!("{op:?}"), |be| be
            .readback(
                &be.binary(&be.upload(&a).unwrap(), &be.upload(&b).unwrap(), op)
                    .unwrap()
            )
            .unwrap());
    }
    for op in splitstream_models::backend::CompareOp::ALL {
        both!(&format!("{op:?}"), |be| be
            .readback(
                &be.compare(&be.upload(&a).unwrap(), &be.upload(&b).unwrap(), op)
                    .unwrap()
            )
            .unwrap());
    }
    both!("select on a NaN mask", |be| {
        let (m, x, y) = (
            be.upload(&a).unwrap(),
            be.upload(&b).unwrap(),
            be.upload(&img).unwrap(),
        );
        let y = be.reshape(y, &[2, 4]).unwrap();
        be.readback(&be.select(&m, &x, &y).unwrap()).unwrap()
    });
    for op in splitstream_models::backend::ReduceOp::ALL {
        for axis in 0..2 {
            both!(&format!("{op:?} axis {axis}"), |be| be
                .readback(&be.reduce(&be.upload(&b).unwrap(), axis, op).unwrap())
                .unwrap());
        }
    }
    both!("max pool", |be| be
        .readback(
            &be.pool2d(
                &be.upload(&img).unwrap(),
                splitstream_models::backend::Pool2dSpec {
                    kind: splitstream_models::backend::PoolKind::Max,
                    kernel: [2, 1],
                    stride: [1, 1],
                    padding: [0, 0],
                },
            )
            .unwrap()
        )
        .unwrap());
}

#[test]
fn long_rows_reduce_by_workgroup_like_the_reference() {
    use splitstream_models::backend::ReduceOp;
    let Some(g) = gpu("long rows") else { return };
    let r = ReferenceBackend::new();
    // Values on a coarse grid, so that the maximum ties many times in a row (argmax
    // must take the first); a vocabulary-sized row; a row just past the threshold; and
    // a row with two NaNs (the first wins argmax, max is NaN).
    let tied = |shape: &[usize], seed: usize| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|i| (((i * 7919 + seed * 13) % 9) as f32 - 4.0) * 0.5)
            .collect();
        HostTensor::new(shape.to_vec(), data).unwrap()
    };
    let mut nans = t(&[1, 3000], 4, 1.0).data().to_vec();
    nans[1234] = f32::NAN;
    nans[2000] = f32::NAN;
    let nans = HostTensor::new(vec![1, 3000], nans).unwrap();
    for x in [
        tied(&[3, 5000], 1),
        t(&[2, 151_936], 2, 3.0),
        tied(&[4, 1024], 3),
        nans,
    ] {
        for op in ReduceOp::ALL {
            let want = r
                .readback(&r.reduce(&r.upload(&x).unwrap(), 1, op).unwrap())
                .unwrap();
            let got = g
                .readback(&g.reduce(&g.upload(&x).unwrap(), 1, op).unwrap())
                .unwrap();
            let name = format!("{op:?} over {:?}", x.shape());
            if matches!(op, ReduceOp::Max | ReduceOp::ArgMax) || x.data().iter().any(|v| v.is_nan())
            {
                same_with_nans(&name, &got, &want);
                continue;
            }
            // Sums of thousands of values, added in another order: within f32 noise
            // of the sum of their magnitudes.
            let bound = 1e-6 * x.data().iter().map(|v| v.abs()).sum::<f32>();
            for (a, b) in got.data().iter().zip(want.data()) {
                assert!((a - b).abs() <= bound, "{name}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn decoding_attention_matches_the_reference_on_long_caches_and_odd_heads() {
    let Some(g) = gpu("decode") else { return };
    let r = ReferenceBackend::new();
    // (queries, query heads, kv heads, head width, keys, kv_len, causal offset): one
    // and four queries (the decoding kernel's range) and five (the prefill kernel's),
    // head widths off the vec4 grid and at the kernel's maximum, caches longer than
    // the 64 threads that split them.
    for (nq, hq, hkv, hd, nk, kv_len, causal) in [
        (1, 14, 2, 64, 300, 300, Some(299)),
        (1, 4, 4, 37, 300, 211, None),
        (4, 6, 2, 256, 130, 129, Some(125)),
        (5, 6, 2, 37, 130, 129, Some(124)),
        (2, 2, 1, 3, 1000, 999, Some(997)),
    ] {
        let spec = AttentionSpec {
            scale: (hd as f32).powf(-0.5),
            kv_len,
            causal,
        };
        let (q, k, v) = (
            t(&[2, nq, hq, hd], 40, 1.5),
            t(&[2, nk, hkv, hd], 41, 1.5),
            t(&[2, nk, hkv, hd], 42, 1.5),
        );
        let want = r
            .readback(
                &r.attention_gqa(
                    &r.upload(&q).unwrap(),
                    &r.upload(&k).unwrap(),
                    &r.upload(&v).unwrap(),
                    spec,
                )
                .unwrap(),
            )
            .unwrap();
        let got = g
            .readback(
                &g.attention_gqa(
                    &g.upload(&q).unwrap(),
                    &g.upload(&k).unwrap(),
                    &g.upload(&v).unwrap(),
                    spec,
                )
                .unwrap(),
            )
            .unwrap();
        let d = rel_diff(&got, &want);
        assert!(
            d <= 1e-5,
            "Nq {nq}, hd {hd}, kv_len {kv_len}: max relative diff {d:e}"
        );
    }
}
