//! Spec-made files: events written by the encoders (which follow the published
//! format specs) decode back to themselves, across wrap-arounds and vector words.

use std::io::Cursor;

use splitstream_events::encode;
use splitstream_events::formats::aedat4::Compression;
use splitstream_events::npy::NpyWriter;
use splitstream_events::{open_reader, Event, EventReader, Format, SourceOptions};

fn decode_with(
    bytes: Vec<u8>,
    ext: Option<&str>,
    options: &SourceOptions,
) -> (Format, Option<(u16, u16)>, Vec<Event>) {
    let mut reader = open_reader(Cursor::new(bytes), ext, options).expect("opens");
    let mut all = Vec::new();
    let mut batch = Vec::new();
    while reader.read_batch(&mut batch).expect("decodes") > 0 {
        all.extend_from_slice(&batch);
    }
    (reader.info().format, reader.info().resolution(), all)
}

fn decode(bytes: Vec<u8>, ext: Option<&str>) -> (Format, Option<(u16, u16)>, Vec<Event>) {
    decode_with(bytes, ext, &SourceOptions::default())
}

/// A deterministic scene: rows of events with runs of neighbouring pixels (so the
/// vector encodings are used), times growing by `step` us per group.
fn scene(groups: usize, step: i64, start: i64, width: u16, height: u16) -> Vec<Event> {
    let mut events = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for g in 0..groups {
        let t = start + g as i64 * step;
        let y = (next() % u64::from(height)) as u16;
        let p = next() % 2 == 0;
        let x0 = (next() % u64::from(width.saturating_sub(40))) as u16;
        // A run of up to 30 pixels with gaps, then a lone pixel on another row.
        let mask = next();
        for i in 0..30u16 {
            if mask >> i & 1 == 1 {
                events.push(Event::new(t, x0 + i, y, p));
            }
        }
        events.push(Event::new(
            t,
            (next() % u64::from(width)) as u16,
            (y + 1) % height,
            !p,
        ));
    }
    events
}

fn with_header(version: &str, w: u16, h: u16, body: Vec<u8>) -> Vec<u8> {
    let mut bytes = encode::prophesee_header(version, w, h);
    bytes.extend_from_slice(&body);
    bytes
}

#[test]
fn evt3_round_trips_with_vector_words_and_24_bit_wraps() {
    // 4000 groups 11 ms apart: 44 s, past two wraps of the 24-bit time base (16.8 s).
    let events = scene(4000, 11_000, 5, 1280, 720);
    let words = encode::evt3(&events);
    assert!(
        words.iter().any(|w| w >> 12 == 0x4),
        "no VECT_12 word written"
    );
    assert!(
        words.iter().any(|w| w >> 12 == 0x5),
        "no VECT_8 word written"
    );
    let (format, res, decoded) = decode(
        with_header("3.0", 1280, 720, encode::evt3_bytes(&events)),
        Some("raw"),
    );
    assert_eq!(format, Format::Evt3);
    assert_eq!(res, Some((1280, 720)));
    assert!(decoded.last().expect("events").t > 2 * (1 << 24));
    assert_eq!(decoded, events);
}

#[test]
fn evt3_round_trips_gaps_just_past_a_wrap_and_dense_microseconds() {
    let mut events = Vec::new();
    for (i, t) in [
        0i64,
        4095,
        4096,
        4097,
        (1 << 24) - 1,
        1 << 24,
        (1 << 24) + 4095,
        (1 << 24) + 8191,
        3 << 24,
        (3 << 24) + 1,
    ]
    .iter()
    .enumerate()
    {
        events.push(Event::new(*t, i as u16, 3, i % 2 == 0));
    }
    let (_, _, decoded) = decode(
        with_header("3.0", 640, 480, encode::evt3_bytes(&events)),
        None,
    );
    assert_eq!(decoded, events);
}

#[test]
fn evt3_decodes_the_same_through_a_tiny_window() {
    let events = scene(500, 300, 0, 640, 480);
    let options = SourceOptions {
        buffer_bytes: 4096,
        batch_events: 5,
        ..Default::default()
    };
    let (_, _, decoded) = decode_with(
        with_header("3.0", 640, 480, encode::evt3_bytes(&events)),
        None,
        &options,
    );
    assert_eq!(decoded, events);
}

#[test]
fn evt2_round_trips_across_the_34_bit_wrap() {
    // Start 50 ms before 2^34 us (4 h 46 min) and run 100 ms past it.
    let start = (1i64 << 34) - 50_000;
    let events: Vec<Event> = scene(1500, 100, start, 640, 480);
    let (format, res, decoded) = decode(with_header("2.0", 640, 480, encode::evt2(&events)), None);
    assert_eq!((format, res), (Format::Evt2, Some((640, 480))));
    assert!(decoded.last().expect("events").t > 1 << 34);
    assert_eq!(decoded, events);
}

#[test]
fn evt21_round_trips_with_32_pixel_masks_across_the_wrap() {
    let start = (1i64 << 34) - 20_000;
    let events: Vec<Event> = scene(1000, 50, start, 1280, 720);
    let mut sorted = events.clone();
    // Within one word the mask yields columns in increasing order; the scene writes
    // runs in increasing order within 32-aligned blocks except across block edges.
    sorted.sort_by_key(|e| {
        (
            e.t,
            e.y != events.iter().find(|f| f.t == e.t).map_or(0, |f| f.y),
            e.x & !31,
            e.x,
        )
    });
    let bytes = encode::evt21(&sorted);
    let (format, _, decoded) = decode(with_header("2.1", 1280, 720, bytes), None);
    assert_eq!(format, Format::Evt21);
    assert_eq!(decoded, sorted);
}

#[test]
fn aedat2_dvs128_round_trips_across_the_32_bit_wrap() {
    let start = (1i64 << 32) - 30_000;
    let events = scene(300, 200, start, 128, 128);
    let (format, res, decoded) = decode(encode::aedat2_dvs128(&events), Some("aedat"));
    assert_eq!((format, res), (Format::Aedat2, Some((128, 128))));
    assert_eq!(decoded, events);
}

#[test]
fn aedat31_round_trips_across_packets_and_the_31_bit_overflow() {
    let start = (1i64 << 31) - 40_000;
    let events = scene(400, 200, start, 346, 260);
    let (format, res, decoded) = decode(encode::aedat31(&events, "DAVIS346", 500), Some("aedat"));
    assert_eq!((format, res), (Format::Aedat31, Some((346, 260))));
    assert_eq!(decoded, events);
}

#[test]
fn aedat4_round_trips_with_every_compression() {
    let events = scene(2000, 37, 1_700_000_000_000_000, 640, 480);
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let bytes = encode::aedat4(&events, 640, 480, compression, 1000, true);
        let (format, res, decoded) = decode(bytes, None);
        assert_eq!(
            (format, res),
            (Format::Aedat4, Some((640, 480))),
            "{compression:?}"
        );
        assert_eq!(decoded, events, "{compression:?}");
    }
}

#[test]
fn nmnist_bin_round_trips_with_overflow_records() {
    // 20 s of events: the 23-bit field overflows (8.4 s) and needs overflow records.
    let events: Vec<Event> = scene(400, 50_000, 0, 240, 180)
        .into_iter()
        .filter(|e| e.y != 240)
        .collect();
    let (format, _, decoded) = decode(encode::nbin(&events), Some("bin"));
    assert_eq!(format, Format::NBin);
    assert_eq!(decoded, events);
}

#[test]
fn csv_with_a_header_in_another_column_order_decodes() {
    let text = "x,y,p,t\n10,20,1,100\n11,21,0,105\n";
    let (format, _, decoded) = decode(text.as_bytes().to_vec(), Some("csv"));
    assert_eq!(format, Format::Text);
    assert_eq!(
        decoded,
        vec![
            Event::new(100, 10, 20, true),
            Event::new(105, 11, 21, false)
        ]
    );
}

#[test]
fn text_in_seconds_with_a_size_line_decodes_to_microseconds() {
    let text = "240 180\n0.000001 5 6 1\n0.5 7 8 0\n1.25 9 10 1";
    let (_, res, decoded) = decode(text.as_bytes().to_vec(), Some("txt"));
    assert_eq!(res, Some((240, 180)));
    assert_eq!(
        decoded,
        vec![
            Event::new(1, 5, 6, true),
            Event::new(500_000, 7, 8, false),
            Event::new(1_250_000, 9, 10, true)
        ]
    );
}

#[test]
fn npy_written_by_the_writer_reads_back() {
    let events = scene(300, 10, 123, 1280, 720);
    let mut writer = NpyWriter::new(Cursor::new(Vec::new())).expect("header");
    writer.write(&events[..100]).expect("write");
    writer.write(&events[100..]).expect("write");
    let bytes = writer.finish().expect("finish").into_inner();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header = 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    assert_eq!(header % 64, 0, "header is padded to 64 bytes");
    assert_eq!(
        bytes.len() - header,
        13 * events.len(),
        "records are 13 packed bytes"
    );
    let (format, _, decoded) = decode(bytes, Some("npy"));
    assert_eq!(format, Format::Npy);
    assert_eq!(decoded, events);
}
