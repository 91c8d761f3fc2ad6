//! Criterion: encoding and decoding bottleneck frames (`splitstream-codec`) at the
//! shapes the runtime sends: DeiT-Tiny tokens after a block `[1, 197, 192]` and a
//! rank-32 learned bottleneck `[1, 197, 32]`, in the device's codecs.
//!
//! `cargo bench -p splitstream-bench --bench codec` (add `-- --quick` for a short
//! run). Byte counts, errors and the peers (zstd on raw f32, JPEG) are
//! `splitstream-bench codec`'s; this measures speed with criterion's statistics.
#![forbid(unsafe_code)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use splitstream_codec::{Bits, CodecParams, Decoder, Encoder, Entropy, Tensor, TensorView};

/// Activation-like values: a seeded, smooth field with a few outliers (as ViT tokens
/// have), so quantization and zstd see realistic structure.
fn tokens(n: usize, d: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n * d)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let (t, c) = (i / d, i % d);
            let smooth = ((t as f32) * 0.05 + (c as f32) * 0.3).sin();
            let outlier = if c % 61 == 0 { 8.0 } else { 0.0 };
            smooth + 0.3 * noise + outlier
        })
        .collect()
}

fn schemes() -> [(&'static str, CodecParams); 4] {
    let zstd = Entropy::Zstd { level: 1 };
    [
        ("lossless", CodecParams::LOSSLESS),
        ("lossless-zstd", CodecParams::LOSSLESS.with_entropy(zstd)),
        ("u8", CodecParams::affine(Bits::B8, Entropy::None)),
        (
            "u4-channel",
            CodecParams::affine_per_channel(Bits::B4, 2, Entropy::None),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    for (shape_name, n, d) in [("tokens_197x192", 197, 192), ("bottleneck_197x32", 197, 32)] {
        let data = tokens(n, d);
        let shape = [1, n, d];
        let view = TensorView::f32(&shape, &data).expect("a valid view");
        let mut group = c.benchmark_group(format!("codec/{shape_name}"));
        group.throughput(Throughput::Bytes((data.len() * 4) as u64));
        for (name, params) in schemes() {
            let mut enc = Encoder::new();
            let mut frame = Vec::new();
            enc.encode_into(&view, &params, &mut frame)
                .expect("encodes");
            group.bench_function(BenchmarkId::new("encode", name), |b| {
                b.iter(|| {
                    enc.encode_into(&view, &params, &mut frame)
                        .expect("encodes")
                })
            });
            let mut dec = Decoder::new();
            let mut out = Tensor::default();
            group.bench_function(BenchmarkId::new("decode", name), |b| {
                b.iter(|| dec.decode_into(&frame, &mut out).expect("decodes"))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = codec
}
criterion_main!(benches);
