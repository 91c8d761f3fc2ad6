//! Decodes arbitrary bytes: must return Ok or an error, never panic, never read out of
//! bounds (ASan), never allocate past the limits.
//!
//! The first input byte picks the mode. Odd: the rest is a frame whose trailing
//! CRC-32C is recomputed first, so mutations get past the checksum and exercise the
//! field checks, the zstd stage and the unpacking. Even: the rest is decoded as is.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use splitstream_codec::{
    Bits, CodecParams, DecodeLimits, Decoder, Encoder, Entropy, Scheme, TensorView,
};

/// Small limits so that a frame claiming a large shape is refused, and an allocation
/// past them would show as an RSS blow-up.
const LIMITS: DecodeLimits = DecodeLimits {
    max_elements: 1 << 16,
    max_bytes: 1 << 18,
};

/// Keyframes 1 (8-bit per tensor), 2 (4-bit per channel) and 3 (binary), encoded
/// once, so that deltas in the input reach the delta path.
fn keyframes() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let shape = [2, 3, 4];
        let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 2.0).collect();
        let spikes: Vec<f32> = (0..24).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
        let binary = CodecParams {
            scheme: Scheme::Binary,
            entropy: Entropy::None,
        };
        let keys = [
            (1, CodecParams::affine(Bits::B8, Entropy::None), &values),
            (
                2,
                CodecParams::affine_per_channel(Bits::B4, 1, Entropy::None),
                &values,
            ),
            (3, binary, &spikes),
        ];
        let mut encoder = Encoder::new();
        let mut frames = Vec::new();
        for (id, params, data) in keys {
            let mut frame = Vec::new();
            let view = TensorView::f32(&shape, data).expect("fixed shape matches");
            encoder
                .encode_keyframe_into(&view, &params, id, &mut frame)
                .expect("fixed keyframe encodes");
            frames.push(frame);
        }
        frames
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut frame = rest.to_vec();
    if mode & 1 == 1 && frame.len() >= 4 {
        let body = frame.len() - 4;
        let crc = crc32c::crc32c(&frame[..body]);
        frame[body..].copy_from_slice(&crc.to_le_bytes());
    }
    let mut decoder = Decoder::with_limits(LIMITS);
    for key in keyframes() {
        decoder.decode(key).expect("fixed keyframe decodes");
    }
    if let Ok(tensor) = decoder.decode(&frame) {
        // Whatever decodes must be self-consistent.
        let n: usize = tensor.shape.iter().product();
        assert_eq!(n, tensor.data.len());
        assert!(n <= LIMITS.max_elements);
    }
    // The stateless entry point too.
    let _ = splitstream_codec::decode(&frame, &LIMITS);
});
