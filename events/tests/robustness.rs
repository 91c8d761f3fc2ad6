//! Bad input: truncated files, random bytes, absurd sizes. Every case is a clear
//! error (or a clean decode), never a panic, and nothing is allocated for a declared
//! size before it is checked.

use std::io::Cursor;

use proptest::prelude::*;
use splitstream_events::encode;
use splitstream_events::formats::aedat4::Compression;
use splitstream_events::{open_reader, Event, Format, OpenError, ReadError, SourceOptions};

fn drain(bytes: Vec<u8>, format: Option<Format>, ext: Option<&str>) -> Result<usize, String> {
    let options = SourceOptions {
        format,
        ..Default::default()
    };
    let mut reader = open_reader(Cursor::new(bytes), ext, &options).map_err(|e| e.to_string())?;
    let mut batch = Vec::new();
    let mut n = 0;
    loop {
        match reader.read_batch(&mut batch) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn sample() -> Vec<Event> {
    (0..200)
        .map(|i| Event::new(i * 7, (i % 100) as u16, (i % 90) as u16, i % 3 == 0))
        .collect()
}

fn all_formats() -> Vec<(Format, &'static str, Vec<u8>)> {
    let ev = sample();
    let with = |v: &str, body: Vec<u8>| {
        let mut b = encode::prophesee_header(v, 640, 480);
        b.extend_from_slice(&body);
        b
    };
    vec![
        (Format::Evt3, "raw", with("3.0", encode::evt3_bytes(&ev))),
        (Format::Evt2, "raw", with("2.0", encode::evt2(&ev))),
        (Format::Evt21, "raw", with("2.1", encode::evt21(&ev))),
        (
            Format::Aedat4,
            "aedat4",
            encode::aedat4(&ev, 640, 480, Compression::Zstd, 64, true),
        ),
        (
            Format::Aedat4,
            "aedat4",
            encode::aedat4(&ev, 640, 480, Compression::Lz4, 64, true),
        ),
        (Format::Aedat2, "aedat", encode::aedat2_dvs128(&ev)),
        (Format::Aedat31, "aedat", encode::aedat31(&ev, "DVS128", 64)),
        (Format::NBin, "bin", encode::nbin(&ev)),
    ]
}

#[test]
fn a_file_cut_mid_unit_is_a_truncation_error() {
    for (format, ext, bytes) in all_formats() {
        assert_eq!(
            drain(bytes.clone(), None, Some(ext)),
            Ok(200),
            "{format} whole file"
        );
        // Cut one byte off the end: inside the last word, record or packet.
        let cut = bytes[..bytes.len() - 1].to_vec();
        let err = drain(cut, None, Some(ext)).expect_err("a cut file must not decode cleanly");
        assert!(
            err.contains("truncated") || err.contains("does not decode"),
            "{format}: {err}"
        );
    }
}

#[test]
fn a_file_cut_anywhere_never_panics() {
    for (_, ext, bytes) in all_formats() {
        for len in (0..bytes.len()).step_by(7) {
            let _ = drain(bytes[..len].to_vec(), None, Some(ext));
        }
    }
}

#[test]
fn unknown_bytes_are_an_unknown_format_error() {
    let options = SourceOptions::default();
    let err = open_reader(
        Cursor::new(vec![0xFFu8, 0x00, 0x13, 0x37, 0, 0, 0, 0]),
        Some("dat"),
        &options,
    )
    .err()
    .expect("must fail");
    assert!(matches!(err, OpenError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("unknown event format"));
    let empty = open_reader(Cursor::new(Vec::new()), None, &options)
        .err()
        .expect("must fail");
    assert!(empty.to_string().contains("empty"), "{empty}");
}

#[test]
fn an_absurd_aedat4_packet_size_is_refused_before_allocation() {
    let mut bytes = encode::aedat4(&sample(), 640, 480, Compression::None, 1000, true);
    let header_end = bytes.len() - encode::aedat4_packet(&sample(), Compression::None).len();
    bytes[header_end + 4..header_end + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let options = SourceOptions::default();
    let mut reader = open_reader(Cursor::new(bytes), None, &options).expect("header is fine");
    let err = reader.read_batch(&mut Vec::new()).expect_err("absurd size");
    assert!(matches!(err, ReadError::TooLarge { .. }), "{err}");
}

#[test]
fn an_absurd_aedat4_header_size_is_refused() {
    let mut bytes = b"#!AER-DAT4.0\r\n".to_vec();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = drain(bytes, None, None).expect_err("absurd header");
    assert!(err.contains("exceeds"), "{err}");
}

#[test]
fn a_zstd_bomb_claiming_gigabytes_is_refused() {
    // A real zstd frame whose header declares 4 GiB of content.
    let mut frame = zstd_frame_claiming(4 << 30);
    let mut bytes = b"#!AER-DAT4.0\r\n".to_vec();
    let full = encode::aedat4(&[], 640, 480, Compression::Zstd, 10, false);
    bytes.extend_from_slice(&full);
    bytes.extend_from_slice(&0i32.to_le_bytes());
    bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    bytes.append(&mut frame);
    let err = drain(bytes, None, None).expect_err("bomb");
    assert!(
        err.contains("exceeds the limit") || err.contains("does not decode"),
        "{err}"
    );
}

fn zstd_frame_claiming(size: u64) -> Vec<u8> {
    // Magic, frame header descriptor: FCS field 8 bytes (0b11 << 6), single segment.
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0];
    f.extend_from_slice(&size.to_le_bytes());
    // A raw last block of 3 bytes.
    f.extend_from_slice(&[0x19, 0x00, 0x00, 1, 2, 3]);
    f
}

#[test]
fn an_absurd_aedat31_event_size_is_corrupt() {
    let mut bytes = encode::aedat31(&sample(), "DVS128", 1000);
    let start = bytes
        .windows(14)
        .position(|w| w == b"#!END-HEADER\r\n")
        .expect("header")
        + 14;
    bytes[start + 4..start + 8].copy_from_slice(&i32::MAX.to_le_bytes());
    let err = drain(bytes, None, None).expect_err("absurd");
    assert!(err.contains("event size"), "{err}");
}

#[test]
fn a_prophesee_header_without_its_encoding_is_a_clear_error() {
    let err = drain(
        b"% Date 2020-01-01\n% end\n\x00\x00".to_vec(),
        None,
        Some("raw"),
    )
    .expect_err("no evt line");
    assert!(err.contains("% evt"), "{err}");
    // Told the format, it decodes.
    assert_eq!(
        drain(
            b"% Date 2020-01-01\n% end\n\x00\x00".to_vec(),
            Some(Format::Evt3),
            Some("raw")
        ),
        Ok(0)
    );
}

#[test]
fn a_text_file_with_a_garbage_line_names_the_line() {
    let err = drain(
        b"t,x,y,p\n1,2,3,1\n2,banana,3,0\n".to_vec(),
        None,
        Some("csv"),
    )
    .expect_err("bad line");
    assert!(err.contains("line 3") && err.contains("banana"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_in_any_format(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for format in [Format::Evt2, Format::Evt21, Format::Evt3, Format::Aedat4, Format::Aedat2, Format::Aedat31, Format::NBin, Format::Text, Format::Npy] {
            let _ = drain(bytes.clone(), Some(format), None);
        }
    }

    #[test]
    fn flipped_bytes_in_real_encodings_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16)) {
        for (_, ext, mut bytes) in all_formats() {
            for (i, v) in &flips {
                let at = i.index(bytes.len());
                bytes[at] ^= v;
            }
            let _ = drain(bytes, None, Some(ext));
        }
    }
}

#[test]
fn open_reader_honours_the_batch_cap() {
    // Regression (found by the evt2/evt21/evt3 fuzzers): `open_reader` ignored
    // `batch_events`, so one batch could hold a whole window of events.
    for (format, ext, bytes) in all_formats() {
        let options = SourceOptions {
            batch_events: 16,
            ..Default::default()
        };
        let mut reader = open_reader(Cursor::new(bytes), Some(ext), &options).expect("opens");
        let mut batch = Vec::new();
        while reader.read_batch(&mut batch).expect("decodes") > 0 {
            assert!(batch.len() <= 16 + 32, "{format}: batch of {}", batch.len());
        }
    }
}

#[test]
fn an_npy_header_with_multibyte_type_strings_is_an_error_not_a_panic() {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let dict =
        "{'descr': [('t', '\u{e9}i8'), ('x', '<i2')], 'fortran_order': False, 'shape': (1,), }\n";
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    let err = drain(bytes, None, Some("npy")).expect_err("bad type");
    assert!(err.contains("unsupported type"), "{err}");
}
