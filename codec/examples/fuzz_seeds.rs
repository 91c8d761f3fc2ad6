//! Writes one valid frame per scheme into a directory, as a starting corpus for the
//! decoder fuzz target: `cargo run -p splitstream-codec --example fuzz_seeds -- DIR`.
//! Each file is the target's mode byte (1: recompute the checksum after mutation)
//! followed by the frame.

use splitstream_codec::{Bits, CodecParams, Encoder, Entropy, Scheme, TensorView};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: fuzz_seeds DIR (the corpus directory to write into)")?;
    std::fs::create_dir_all(&dir)?;
    let shape = [2, 3, 4];
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 2.0).collect();
    let next: Vec<f32> = values.iter().map(|v| v + 0.1).collect();
    let spikes: Vec<f32> = (0..24).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
    let view = TensorView::f32(&shape, &values)?;
    let spike_view = TensorView::f32(&shape, &spikes)?;
    let zstd = Entropy::Zstd { level: 1 };
    let binary = CodecParams {
        scheme: Scheme::Binary,
        entropy: Entropy::None,
    };
    let mut enc = Encoder::new();
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    for entropy in [Entropy::None, zstd] {
        let tag = if entropy == Entropy::None {
            "raw"
        } else {
            "zstd"
        };
        frames.push((
            format!("lossless-{tag}"),
            enc.encode(&view, &CodecParams::LOSSLESS.with_entropy(entropy))?,
        ));
        for bits in [Bits::B8, Bits::B4, Bits::B2] {
            let b = bits.get();
            frames.push((
                format!("affine{b}-{tag}"),
                enc.encode(&view, &CodecParams::affine(bits, entropy))?,
            ));
            frames.push((
                format!("affine{b}-axis1-{tag}"),
                enc.encode(&view, &CodecParams::affine_per_channel(bits, 1, entropy))?,
            ));
        }
        frames.push((
            format!("binary-{tag}"),
            enc.encode(&spike_view, &binary.with_entropy(entropy))?,
        ));
    }
    // Deltas against the keyframes the fuzz target holds (ids 1, 2, 3).
    let mut frame = Vec::new();
    enc.encode_keyframe_into(&view, &CodecParams::UINT8_ZSTD1, 1, &mut frame)?;
    frames.push(("keyframe1".into(), frame.clone()));
    enc.encode_delta_into(&TensorView::f32(&shape, &next)?, 1, zstd, &mut frame)?;
    frames.push(("delta1".into(), frame.clone()));
    enc.encode_keyframe_into(
        &view,
        &CodecParams::affine_per_channel(Bits::B4, 1, Entropy::None),
        2,
        &mut frame,
    )?;
    enc.encode_delta_into(
        &TensorView::f32(&shape, &next)?,
        2,
        Entropy::None,
        &mut frame,
    )?;
    frames.push(("delta2".into(), frame.clone()));
    enc.encode_keyframe_into(&spike_view, &binary, 3, &mut frame)?;
    enc.encode_delta_into(&spike_view, 3, Entropy::None, &mut frame)?;
    frames.push(("delta3".into(), frame.clone()));
    for (name, bytes) in &frames {
        let mut seed = vec![1u8];
        seed.extend_from_slice(bytes);
        std::fs::write(std::path::Path::new(&dir).join(name), seed)?;
    }
    println!("wrote {} seed frames to {dir}", frames.len());
    Ok(())
}
