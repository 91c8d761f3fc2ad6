//! Property tests: round trips, the quantization error bound, and decoding arbitrary
//! or mutated bytes without panicking.

use proptest::prelude::*;
use splitstream_codec::{
    decode, max_quantization_error, Bits, CodecParams, DecodeLimits, Decoder, Encoder, Entropy,
    Granularity, Scheme, TensorData, TensorView,
};

fn shape_and_len() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..7, 0..4)
}

fn entropy() -> impl Strategy<Value = Entropy> {
    prop_oneof![
        Just(Entropy::None),
        (-3i32..4).prop_map(|level| Entropy::Zstd { level })
    ]
}

fn bits() -> impl Strategy<Value = Bits> {
    prop_oneof![Just(Bits::B8), Just(Bits::B4), Just(Bits::B2)]
}

/// A shape and that many finite values spanning a random magnitude.
fn finite_tensor() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (shape_and_len(), -20i32..20).prop_flat_map(|(shape, exp)| {
        let n: usize = shape.iter().product();
        let mag = 2f32.powi(exp);
        (
            Just(shape),
            prop::collection::vec(-1.0f32..1.0, n)
                .prop_map(move |v| v.into_iter().map(|x| x * mag).collect::<Vec<f32>>()),
        )
    })
}

fn to_f32(data: &TensorData) -> Vec<f32> {
    match data {
        TensorData::F32(v) => v.clone(),
        other => panic!("expected f32, got {:?}", other.dtype()),
    }
}

proptest! {
    #[test]
    fn lossless_round_trips_any_bit_pattern(
        (shape, bits) in shape_and_len().prop_flat_map(|s| {
            let n: usize = s.iter().product();
            (Just(s), prop::collection::vec(any::<u32>(), n))
        }),
        entropy in entropy(),
    ) {
        let data: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let frame = splitstream_codec::encode(
            &TensorView::f32(&shape, &data).unwrap(),
            &CodecParams::LOSSLESS.with_entropy(entropy),
        ).unwrap();
        let back = decode(&frame, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(&back.shape, &shape);
        let got: Vec<u32> = to_f32(&back.data).iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(got, bits);
    }

    #[test]
    fn affine_error_stays_within_half_a_step(
        (shape, data) in finite_tensor(),
        bits in bits(),
        per_channel in any::<bool>(),
        axis_pick in any::<usize>(),
        entropy in entropy(),
    ) {
        let granularity = if per_channel && !shape.is_empty() {
            Granularity::PerChannel { axis: axis_pick % shape.len() }
        } else {
            Granularity::PerTensor
        };
        let params = CodecParams { scheme: Scheme::Affine { bits, granularity }, entropy };
        let frame = splitstream_codec::encode(&TensorView::f32(&shape, &data).unwrap(), &params).unwrap();
        let back = to_f32(&decode(&frame, &DecodeLimits::default()).unwrap().data);
        let bound = max_quantization_error(&frame).unwrap_or(0.0);
        for (x, y) in data.iter().zip(&back) {
            let slack = 4.0 * f32::EPSILON * (x.abs() + y.abs()) + f32::MIN_POSITIVE;
            prop_assert!((x - y).abs() <= bound + slack, "{} -> {} (bound {})", x, y, bound);
        }
    }

    #[test]
    fn a_delta_decodes_to_what_the_keyframe_parameters_give(
        (shape, key) in finite_tensor(),
        bits in bits(),
        shift in -0.5f32..0.5,
    ) {
        let n = key.len();
        // Move the values inside the keyframe's range so no clamping happens.
        let (lo, hi) = key.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let next: Vec<f32> = key.iter().map(|&v| (v + shift * (hi - lo)).clamp(lo, hi)).collect();
        let params = CodecParams::affine(bits, Entropy::Zstd { level: 1 });
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut frame = Vec::new();
        enc.encode_keyframe_into(&TensorView::f32(&shape, &key).unwrap(), &params, 9, &mut frame).unwrap();
        let bound = max_quantization_error(&frame).unwrap_or(0.0);
        dec.decode(&frame).unwrap();
        enc.encode_delta_into(&TensorView::f32(&shape, &next).unwrap(), 9, Entropy::Zstd { level: 1 }, &mut frame).unwrap();
        let back = to_f32(&dec.decode(&frame).unwrap().data);
        prop_assert_eq!(back.len(), n);
        for (x, y) in next.iter().zip(&back) {
            let slack = 4.0 * f32::EPSILON * (x.abs() + y.abs()) + f32::MIN_POSITIVE;
            prop_assert!((x - y).abs() <= bound + slack, "{} -> {} (bound {})", x, y, bound);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes, &DecodeLimits::default());
    }

    #[test]
    fn mutated_frames_are_errors_or_consistent_tensors(
        (shape, data) in finite_tensor(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        reseal in any::<bool>(),
        entropy in entropy(),
    ) {
        let mut frame = splitstream_codec::encode(
            &TensorView::f32(&shape, &data).unwrap(),
            &CodecParams::affine_per_channel(Bits::B4, 0, entropy),
        ).or_else(|_| splitstream_codec::encode(
            &TensorView::f32(&shape, &data).unwrap(),
            &CodecParams::affine(Bits::B4, entropy),
        )).unwrap();
        for (at, value) in edits {
            let i = at % frame.len();
            frame[i] = value;
        }
        if reseal {
            // Past the checksum, so the field checks themselves are exercised.
            let body = frame.len() - 4;
            let crc = crc32c::crc32c(&frame[..body]);
            frame[body..].copy_from_slice(&crc.to_le_bytes());
        }
        let limits = DecodeLimits { max_elements: 1 << 12, max_bytes: 1 << 14 };
        if let Ok(t) = decode(&frame, &limits) {
            let n: usize = t.shape.iter().product();
            prop_assert_eq!(n, t.data.len());
            prop_assert!(n <= limits.max_elements);
        }
    }
}
