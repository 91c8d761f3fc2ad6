//! Decodes arbitrary bytes: must return Ok or an error, never panic, never read out of
//! bounds (ASan), never allocate past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitstream_codec::{
    Bits, CodecParams, DecodeLimits, Decoder, Encoder, Entropy, Scheme, TensorView,
};

/// Small limits so that a frame claiming a large shape is refused, and an allocation
/// past them would show as a leak/RSS blow-up.
const LIMITS: DecodeLimits = DecodeLimits {
    max_elements: 1 << 16,
    max_bytes: 1 << 18,
};

fuzz_target!(|data: &[u8]| {
    // A decoder holding keyframes 1 (8-bit per tensor), 2 (4-bit per channel) and
    // 3 (binary), so deltas in the input reach the delta path.
    let mut decoder = Decoder::with_limits(LIMITS);
    let mut encoder = Encoder::new();
    let shape = [2, 3, 4];
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 2.0).collect();
    let spikes: Vec<f32> = (0..24).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
    let mut frame = Vec::new();
    let keys = [
        (1, CodecParams::UINT8_ZSTD1, &values),
        (
            2,
            CodecParams::affine_per_channel(Bits::B4, 1, Entropy::None),
            &values,
        ),
        (
            3,
            CodecParams {
                scheme: Scheme::Binary,
                entropy: Entropy::None,
            },
            &spikes,
        ),
    ];
    for (id, params, data) in keys {
        if let Ok(view) = TensorView::f32(&shape, data) {
            if encoder
                .encode_keyframe_into(&view, &params, id, &mut frame)
                .is_ok()
            {
                let _ = decoder.decode(&frame);
            }
        }
    }
    if let Ok(tensor) = decoder.decode(data) {
        // Whatever decodes must be self-consistent.
        let n: usize = tensor.shape.iter().product();
        assert_eq!(n, tensor.data.len());
        assert!(n <= LIMITS.max_elements);
    }
    // The stateless entry point too.
    let _ = splitstream_codec::decode(data, &LIMITS);
});
