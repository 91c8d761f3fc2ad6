//! Round trips and hostile frames through the public API.

use half::{bf16, f16};
use splitstream_codec::{
    decode, encode, max_quantization_error, Bits, CodecParams, DecodeError, DecodeLimits, Decoder,
    EncodeError, Encoder, Entropy, Scheme, Tensor, TensorData, TensorView,
};

const ZSTD1: Entropy = Entropy::Zstd { level: 1 };

/// Deterministic token-like data: smooth structure, a few outlier channels.
fn tokens(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let d = *shape.last().unwrap_or(&1);
    (0..n)
        .map(|i| {
            let c = i % d;
            let base = ((i as f32) * 0.37).sin() * 0.8 + ((i / d) as f32 * 0.05).cos();
            if c % 61 == 7 {
                base * 12.0
            } else {
                base
            }
        })
        .collect()
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// Recomputes the CRC-32C after a test edits a frame, so the edit is what the decoder
/// judges rather than the checksum.
fn reseal(frame: &mut [u8]) {
    let body = frame.len() - 4;
    let crc = crc32c::crc32c(&frame[..body]);
    frame[body..].copy_from_slice(&crc.to_le_bytes());
}

fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        other => panic!("expected f32, got {:?}", other.dtype()),
    }
}

#[test]
fn lossless_f32_is_bit_exact_with_and_without_zstd() {
    let shape = [2, 197, 192];
    let mut data = tokens(&shape);
    data[5] = f32::NAN;
    data[6] = -0.0;
    data[7] = f32::INFINITY;
    data[8] = f32::from_bits(1); // subnormal
    let view = TensorView::f32(&shape, &data).unwrap();
    for entropy in [Entropy::None, ZSTD1, Entropy::Zstd { level: 3 }] {
        let frame = encode(&view, &CodecParams::LOSSLESS.with_entropy(entropy)).unwrap();
        let back = decode(&frame, &limits()).unwrap();
        assert_eq!(back.shape, shape);
        let bits: Vec<u32> = f32s(&back).iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = data.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, want, "entropy {entropy:?}");
    }
}

#[test]
fn lossless_f16_and_bf16_are_bit_exact() {
    let shape = [3, 5, 7];
    let data = tokens(&shape);
    let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    let b: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
    for entropy in [Entropy::None, ZSTD1] {
        let p = CodecParams::LOSSLESS.with_entropy(entropy);
        let back = decode(
            &encode(&TensorView::f16(&shape, &h).unwrap(), &p).unwrap(),
            &limits(),
        )
        .unwrap();
        assert_eq!(back.data, TensorData::F16(h.clone()));
        let back = decode(
            &encode(&TensorView::bf16(&shape, &b).unwrap(), &p).unwrap(),
            &limits(),
        )
        .unwrap();
        assert_eq!(back.data, TensorData::BF16(b.clone()));
    }
}

fn assert_within_bound(data: &[f32], back: &[f32], bound: f32, what: &str) {
    assert_eq!(data.len(), back.len());
    for (i, (&x, &y)) in data.iter().zip(back).enumerate() {
        // scale/2 from rounding, plus a few f32 ulps of the magnitudes involved.
        let slack = 4.0 * f32::EPSILON * (x.abs() + y.abs() + 1.0);
        assert!(
            (x - y).abs() <= bound + slack,
            "{what}: element {i}: {x} decoded as {y}, bound {bound}"
        );
    }
}

#[test]
fn affine_per_tensor_stays_within_half_a_step() {
    let shape = [2, 197, 192];
    let data = tokens(&shape);
    let view = TensorView::f32(&shape, &data).unwrap();
    let (lo, hi) = data
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    for bits in [Bits::B8, Bits::B4, Bits::B2] {
        for entropy in [Entropy::None, ZSTD1] {
            let frame = encode(&view, &CodecParams::affine(bits, entropy)).unwrap();
            let bound = max_quantization_error(&frame).unwrap();
            let expected = (hi - lo) / f32::from(bits.max_symbol()) / 2.0;
            assert!(
                (bound - expected).abs() <= expected * 1e-5,
                "{bound} vs {expected}"
            );
            let back = decode(&frame, &limits()).unwrap();
            assert_within_bound(&data, f32s(&back), bound, &format!("{bits:?}"));
        }
    }
}

#[test]
fn affine_per_channel_stays_within_each_channels_half_step() {
    let shape = [2, 197, 192];
    let data = tokens(&shape);
    let view = TensorView::f32(&shape, &data).unwrap();
    for axis in 0..3 {
        for bits in [Bits::B8, Bits::B4, Bits::B2] {
            let frame = encode(&view, &CodecParams::affine_per_channel(bits, axis, ZSTD1)).unwrap();
            let back = decode(&frame, &limits()).unwrap();
            let back = f32s(&back);
            // Check each channel against its own range.
            let (outer, channels): (usize, usize) = (shape[..axis].iter().product(), shape[axis]);
            let inner: usize = shape[axis + 1..].iter().product();
            for c in 0..channels {
                let idx: Vec<usize> = (0..outer)
                    .flat_map(|o| (0..inner).map(move |i| (o * channels + c) * inner + i))
                    .collect();
                let xs: Vec<f32> = idx.iter().map(|&i| data[i]).collect();
                let ys: Vec<f32> = idx.iter().map(|&i| back[i]).collect();
                let (lo, hi) = xs
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let bound = (hi - lo) / f32::from(bits.max_symbol()) / 2.0;
                assert_within_bound(
                    &xs,
                    &ys,
                    bound * (1.0 + 1e-5),
                    &format!("axis {axis} {bits:?} channel {c}"),
                );
            }
        }
    }
}

#[test]
fn per_channel_beats_per_tensor_on_outlier_channels() {
    let shape = [1, 197, 192];
    let data = tokens(&shape);
    let view = TensorView::f32(&shape, &data).unwrap();
    let err = |p: CodecParams| {
        let back = decode(&encode(&view, &p).unwrap(), &limits()).unwrap();
        f32s(&back)
            .iter()
            .zip(&data)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
    };
    assert!(
        err(CodecParams::affine_per_channel(Bits::B4, 2, ZSTD1))
            < err(CodecParams::affine(Bits::B4, ZSTD1))
    );
}

#[test]
fn constant_tensor_quantizes_exactly() {
    let shape = [4, 4];
    let data = vec![3.25f32; 16];
    let frame = encode(
        &TensorView::f32(&shape, &data).unwrap(),
        &CodecParams::UINT8_ZSTD1,
    )
    .unwrap();
    assert_eq!(f32s(&decode(&frame, &limits()).unwrap()), &data[..]);
}

#[test]
fn affine_f16_input_comes_back_as_f16() {
    let shape = [8, 9];
    let data: Vec<f16> = tokens(&shape).iter().map(|&v| f16::from_f32(v)).collect();
    let frame = encode(
        &TensorView::f16(&shape, &data).unwrap(),
        &CodecParams::UINT8_ZSTD1,
    )
    .unwrap();
    let back = decode(&frame, &limits()).unwrap();
    assert_eq!(back.dtype(), splitstream_codec::DType::F16);
    let bound = max_quantization_error(&frame).unwrap();
    let xs: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
    for (x, y) in xs.iter().zip(back.to_f32()) {
        // plus f16 rounding of the result (|x| < 16 here: ulp/2 <= 2^-7).
        assert!((x - y).abs() <= bound + 2f32.powi(-7), "{x} vs {y}");
    }
}

#[test]
fn infinite_values_are_refused_by_affine_schemes() {
    let data = [1.0, f32::INFINITY, 0.0];
    let view = TensorView::f32(&[3], &data).unwrap();
    assert_eq!(
        encode(&view, &CodecParams::UINT8_ZSTD1),
        Err(EncodeError::NonFinite)
    );
}

fn spikes(n: usize) -> Vec<f32> {
    let mut state = 0x2545F491u32;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            f32::from(u8::from(state.is_multiple_of(10)))
        })
        .collect()
}

#[test]
fn binary_spikes_round_trip_exactly_at_one_bit_each() {
    let shape = [16, 1001];
    let data = spikes(16 * 1001);
    let view = TensorView::f32(&shape, &data).unwrap();
    let p = CodecParams {
        scheme: Scheme::Binary,
        entropy: Entropy::None,
    };
    let frame = encode(&view, &p).unwrap();
    assert!(frame.len() < 16 * 1001 / 8 + 100);
    assert_eq!(f32s(&decode(&frame, &limits()).unwrap()), &data[..]);
}

#[test]
fn binary_scheme_refuses_other_values() {
    let data = [0.0, 1.0, 0.5];
    let view = TensorView::f32(&[3], &data).unwrap();
    let p = CodecParams {
        scheme: Scheme::Binary,
        entropy: ZSTD1,
    };
    assert_eq!(
        encode(&view, &p),
        Err(EncodeError::NotBinary {
            index: 2,
            value: 0.5
        })
    );
}

#[test]
fn per_channel_axis_out_of_range_is_an_encode_error() {
    let data = [0.0; 6];
    let view = TensorView::f32(&[2, 3], &data).unwrap();
    assert_eq!(
        encode(&view, &CodecParams::affine_per_channel(Bits::B8, 2, ZSTD1)),
        Err(EncodeError::AxisOutOfRange { axis: 2, rank: 2 })
    );
}

fn sample_frame() -> Vec<u8> {
    let shape = [2, 19, 12];
    let data = tokens(&shape);
    encode(
        &TensorView::f32(&shape, &data).unwrap(),
        &CodecParams::UINT8_ZSTD1,
    )
    .unwrap()
}

#[test]
fn every_truncation_is_an_error() {
    let frame = sample_frame();
    for len in 0..frame.len() {
        let err = decode(&frame[..len], &limits()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "prefix of {len} bytes gave {err:?}"
        );
    }
}

#[test]
fn a_flipped_payload_bit_is_a_checksum_mismatch() {
    let frame = sample_frame();
    let mut bad = frame.clone();
    let at = frame.len() - 10;
    bad[at] ^= 0x10;
    assert!(matches!(
        decode(&bad, &limits()),
        Err(DecodeError::ChecksumMismatch { .. })
    ));
}

#[test]
fn every_single_bit_flip_is_detected() {
    let frame = sample_frame();
    for byte in 0..frame.len() {
        for bit in 0..8 {
            let mut bad = frame.clone();
            bad[byte] ^= 1 << bit;
            let err = decode(&bad, &limits()).expect_err("a flipped bit decoded");
            // Flips in the fields that locate the checksum show up as a length error;
            // magic and version flips as those; everything else as the checksum.
            let expected = match byte {
                0..=3 => matches!(err, DecodeError::BadMagic { .. }),
                4..=5 => matches!(err, DecodeError::UnsupportedVersion { .. }),
                _ => matches!(
                    err,
                    DecodeError::ChecksumMismatch { .. }
                        | DecodeError::Truncated { .. }
                        | DecodeError::TrailingBytes { .. }
                        | DecodeError::InvalidField { .. }
                ),
            };
            assert!(expected, "byte {byte} bit {bit}: {err:?}");
        }
    }
}

#[test]
fn a_newer_version_is_refused_by_name() {
    let mut frame = sample_frame();
    frame[4..6].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut frame);
    assert_eq!(
        decode(&frame, &limits()),
        Err(DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );
    frame[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        decode(&frame, &limits()),
        Err(DecodeError::UnsupportedVersion { found: 0, .. })
    ));
}

#[test]
fn version_one_frames_keep_decoding() {
    // A frame pinned byte for byte: version 1, affine 8-bit per tensor, no entropy,
    // shape [2, 2], scale 0.5, offset -1, symbols 0 1 2 255. If the layout changes
    // without a new version, this breaks.
    let mut frame = Vec::new();
    frame.extend_from_slice(b"SSTF");
    frame.extend_from_slice(&1u16.to_le_bytes());
    frame.extend_from_slice(&[1, 0, 8, 0, 0, 2, 0, 0, 0, 0]);
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&4u32.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&2u32.to_le_bytes());
    frame.extend_from_slice(&2u32.to_le_bytes());
    frame.extend_from_slice(&0.5f32.to_le_bytes());
    frame.extend_from_slice(&(-1.0f32).to_le_bytes());
    frame.extend_from_slice(&[0, 1, 2, 255]);
    frame.extend_from_slice(&[0; 4]);
    reseal(&mut frame);
    let back = decode(&frame, &limits()).unwrap();
    assert_eq!(back.shape, [2, 2]);
    assert_eq!(f32s(&back), &[-1.0, -0.5, 0.0, 126.5]);
}

#[test]
fn bad_magic_is_named() {
    let mut frame = sample_frame();
    frame[0] = b'X';
    assert!(matches!(
        decode(&frame, &limits()),
        Err(DecodeError::BadMagic { .. })
    ));
    assert!(matches!(
        decode(b"GIF89a", &limits()),
        Err(DecodeError::BadMagic { .. })
    ));
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut frame = sample_frame();
    frame.push(0);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(DecodeError::TrailingBytes { .. })
    ));
}

/// A lossless f32 frame with no payload whose header claims `dims`.
fn frame_claiming(dims: &[u32]) -> Vec<u8> {
    let mut frame = encode(&TensorView::f32(&[0], &[]).unwrap(), &CodecParams::LOSSLESS).unwrap();
    // Rebuild: fixed header with the new rank, the dims, no payload, checksum.
    frame.truncate(28);
    frame[11] = dims.len() as u8;
    for d in dims {
        frame.extend_from_slice(&d.to_le_bytes());
    }
    frame.extend_from_slice(&[0; 4]);
    reseal(&mut frame);
    frame
}

#[test]
fn an_oversized_shape_is_refused_before_allocating() {
    let frame = frame_claiming(&[u32::MAX, u32::MAX, u32::MAX]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(DecodeError::ShapeTooLarge {
            elements: u64::MAX,
            ..
        })
    ));
    let frame = frame_claiming(&[1 << 16, 1 << 16]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(DecodeError::ShapeTooLarge {
            elements: 4294967296,
            ..
        })
    ));
}

#[test]
fn the_callers_limits_are_enforced() {
    let frame = sample_frame();
    let small = DecodeLimits {
        max_elements: 100,
        max_bytes: 1 << 20,
    };
    assert!(matches!(
        decode(&frame, &small),
        Err(DecodeError::ShapeTooLarge { limit: 100, .. })
    ));
    let small = DecodeLimits {
        max_elements: 1 << 20,
        max_bytes: 100,
    };
    assert!(matches!(
        decode(&frame, &small),
        Err(DecodeError::OutputTooLarge { limit: 100, .. })
    ));
}

#[test]
fn a_small_shape_with_a_short_payload_is_an_error() {
    // Shape within limits, but no payload for it.
    let frame = frame_claiming(&[4, 4]);
    assert_eq!(
        decode(&frame, &limits()),
        Err(DecodeError::PayloadLength {
            expected: 64,
            got: 0
        })
    );
}

#[test]
fn a_zstd_payload_that_inflates_past_the_shape_is_an_error() {
    // Affine 8-bit [4] with zstd, but the zstd frame holds 1000 bytes.
    let data = [0.0f32, 1.0, 2.0, 3.0];
    let frame = encode(
        &TensorView::f32(&[4], &data).unwrap(),
        &CodecParams::UINT8_ZSTD1,
    )
    .unwrap();
    let bomb = zstd::bulk::compress(&[7u8; 1000], 1).unwrap();
    let head = frame.len() - 4 - payload_len(&frame);
    let mut bad = frame[..head].to_vec();
    bad.extend_from_slice(&bomb);
    bad[20..24].copy_from_slice(&(bomb.len() as u32).to_le_bytes());
    bad.extend_from_slice(&[0; 4]);
    reseal(&mut bad);
    assert!(matches!(
        decode(&bad, &limits()),
        Err(DecodeError::Zstd { .. })
    ));
}

fn payload_len(frame: &[u8]) -> usize {
    u32::from_le_bytes(frame[20..24].try_into().unwrap()) as usize
}

#[test]
fn non_finite_parameters_are_refused() {
    let mut frame = sample_frame();
    // Params follow the 28-byte header and 3 dims: scale at 40.
    frame[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut frame);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(DecodeError::InvalidParameter { index: 0, .. })
    ));
}

#[test]
fn unknown_field_values_are_refused() {
    for (at, value, field) in [
        (6, 9u8, "scheme"),
        (7, 9, "dtype"),
        (10, 9, "entropy"),
        (9, 0x80, "flags"),
    ] {
        let mut frame = sample_frame();
        frame[at] = value;
        reseal(&mut frame);
        assert_eq!(
            decode(&frame, &limits()),
            Err(DecodeError::InvalidField {
                field,
                value: u64::from(value)
            }),
            "{field}"
        );
    }
}

#[test]
fn deltas_against_a_held_keyframe_round_trip_and_shrink() {
    let shape = [1, 197, 192];
    let key = tokens(&shape);
    // The next frame: mostly the same, a few tokens changed a little.
    let mut next = key.clone();
    for v in next.iter_mut().skip(1000).take(500) {
        *v += 0.05;
    }
    let params = CodecParams::UINT8_ZSTD1;
    let mut enc = Encoder::new();
    let mut dec = Decoder::new();
    let mut frame = Vec::new();
    enc.encode_keyframe_into(
        &TensorView::f32(&shape, &key).unwrap(),
        &params,
        7,
        &mut frame,
    )
    .unwrap();
    let key_len = frame.len();
    let bound = max_quantization_error(&frame).unwrap();
    dec.decode(&frame).unwrap();
    assert_eq!(dec.keyframe_ids(), [7]);

    enc.encode_delta_into(
        &TensorView::f32(&shape, &next).unwrap(),
        7,
        ZSTD1,
        &mut frame,
    )
    .unwrap();
    assert!(
        frame.len() * 4 < key_len,
        "delta {} vs keyframe {key_len}",
        frame.len()
    );
    let back = dec.decode(&frame).unwrap();
    assert_within_bound(&next, f32s(&back), bound * (1.0 + 1e-5), "delta");

    // The same delta without the keyframe: a clear error, never garbage.
    assert_eq!(
        decode(&frame, &limits()),
        Err(DecodeError::UnknownKeyframe { id: 7 })
    );
    let mut fresh = Decoder::new();
    assert_eq!(
        fresh.decode(&frame),
        Err(DecodeError::UnknownKeyframe { id: 7 })
    );
}

#[test]
fn per_channel_and_binary_deltas_round_trip() {
    let shape = [2, 50, 16];
    let key = tokens(&shape);
    let next: Vec<f32> = key.iter().map(|v| v * 0.99).collect();
    let mut enc = Encoder::new();
    let mut dec = Decoder::new();
    let mut frame = Vec::new();
    let p = CodecParams::affine_per_channel(Bits::B4, 2, ZSTD1);
    enc.encode_keyframe_into(&TensorView::f32(&shape, &key).unwrap(), &p, 1, &mut frame)
        .unwrap();
    let bound = max_quantization_error(&frame).unwrap();
    dec.decode(&frame).unwrap();
    enc.encode_delta_into(
        &TensorView::f32(&shape, &next).unwrap(),
        1,
        Entropy::None,
        &mut frame,
    )
    .unwrap();
    assert_within_bound(
        &next,
        f32s(&dec.decode(&frame).unwrap()),
        bound * (1.0 + 1e-5),
        "per-channel delta",
    );

    let s0 = spikes(4096);
    let mut s1 = s0.clone();
    s1[10] = 1.0 - s1[10];
    let shape = [4096];
    let p = CodecParams {
        scheme: Scheme::Binary,
        entropy: ZSTD1,
    };
    enc.encode_keyframe_into(&TensorView::f32(&shape, &s0).unwrap(), &p, 2, &mut frame)
        .unwrap();
    dec.decode(&frame).unwrap();
    enc.encode_delta_into(&TensorView::f32(&shape, &s1).unwrap(), 2, ZSTD1, &mut frame)
        .unwrap();
    assert!(
        frame.len() < 100,
        "one flipped spike took {} bytes",
        frame.len()
    );
    assert_eq!(f32s(&dec.decode(&frame).unwrap()), &s1[..]);
}

#[test]
fn a_delta_against_an_unknown_or_mismatched_keyframe_is_an_encode_error() {
    let mut enc = Encoder::new();
    let data = tokens(&[4, 4]);
    let view = TensorView::f32(&[4, 4], &data).unwrap();
    let mut frame = Vec::new();
    assert_eq!(
        enc.encode_delta_into(&view, 3, ZSTD1, &mut frame),
        Err(EncodeError::UnknownKeyframe { id: 3 })
    );
    enc.encode_keyframe_into(&view, &CodecParams::UINT8_ZSTD1, 3, &mut frame)
        .unwrap();
    let other = TensorView::f32(&[2, 8], &data).unwrap();
    assert!(matches!(
        enc.encode_delta_into(&other, 3, ZSTD1, &mut frame),
        Err(EncodeError::KeyframeMismatch { id: 3, .. })
    ));
    assert_eq!(
        enc.encode_keyframe_into(&view, &CodecParams::LOSSLESS, 4, &mut frame),
        Err(EncodeError::KeyframeNeedsSymbols)
    );
}

#[test]
fn keyframes_beyond_the_limit_evict_the_oldest() {
    let mut enc = Encoder::with_max_keyframes(2);
    let mut dec = Decoder::with_limits_and_keyframes(limits(), 2);
    let data = tokens(&[8]);
    let view = TensorView::f32(&[8], &data).unwrap();
    let mut frame = Vec::new();
    for id in 1..=3 {
        enc.encode_keyframe_into(&view, &CodecParams::UINT8_ZSTD1, id, &mut frame)
            .unwrap();
        dec.decode(&frame).unwrap();
    }
    assert_eq!(enc.keyframe_ids(), [2, 3]);
    assert_eq!(dec.keyframe_ids(), [2, 3]);
}

#[test]
fn a_decoder_reuses_its_output_across_dtypes() {
    let mut dec = Decoder::new();
    let mut out = Tensor::default();
    let data = tokens(&[3, 3]);
    let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    let f1 = encode(
        &TensorView::f32(&[3, 3], &data).unwrap(),
        &CodecParams::LOSSLESS,
    )
    .unwrap();
    let f2 = encode(
        &TensorView::f16(&[9], &h).unwrap(),
        &CodecParams::UINT8_ZSTD1,
    )
    .unwrap();
    dec.decode_into(&f1, &mut out).unwrap();
    assert_eq!(f32s(&out), &data[..]);
    dec.decode_into(&f2, &mut out).unwrap();
    assert_eq!(out.shape, [9]);
    assert_eq!(out.dtype(), splitstream_codec::DType::F16);
    dec.decode_into(&f1, &mut out).unwrap();
    assert_eq!(f32s(&out), &data[..]);
}

#[test]
fn scalars_and_empty_tensors_round_trip() {
    for shape in [&[][..], &[0][..], &[3, 0, 2][..]] {
        let n: usize = shape.iter().product();
        let data = vec![1.5f32; n];
        for p in [
            CodecParams::LOSSLESS,
            CodecParams::UINT8_ZSTD1,
            CodecParams::affine_per_channel(Bits::B2, 0, ZSTD1),
        ] {
            if shape.is_empty()
                && matches!(
                    p.scheme,
                    Scheme::Affine {
                        granularity: splitstream_codec::Granularity::PerChannel { .. },
                        ..
                    }
                )
            {
                continue;
            }
            let frame = encode(&TensorView::f32(shape, &data).unwrap(), &p).unwrap();
            let back = decode(&frame, &limits()).unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(f32s(&back), &data[..]);
        }
    }
}
