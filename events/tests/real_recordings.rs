//! Decoding the real recordings in `../shared/events/` against their truths.

use splitstream_events::{npy, open_path, Event, EventReader, Format, SourceOptions};

fn read_all(reader: &mut dyn EventReader) -> Vec<Event> {
    let mut all = Vec::new();
    let mut batch = Vec::new();
    while reader.read_batch(&mut batch).expect("decodes") > 0 {
        all.extend_from_slice(&batch);
    }
    all
}

fn truth(path: &std::path::Path) -> Vec<Event> {
    npy::read_all(std::fs::File::open(path).expect("truth opens")).expect("truth reads")
}

fn first_difference(a: &[Event], b: &[Event]) -> Option<(usize, Option<Event>, Option<Event>)> {
    (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .map(|i| (i, a.get(i).copied(), b.get(i).copied()))
}

#[test]
fn evt3_sample_decodes_to_exactly_its_truth() {
    let Some(dir) = splitstream_testkit::events_dir("evt3_sample_decodes_to_exactly_its_truth")
    else {
        return;
    };
    let mut reader =
        open_path(&dir.join("evt3_sample.raw"), &SourceOptions::default()).expect("opens");
    assert_eq!(reader.info().format, Format::Evt3);
    assert_eq!(reader.info().resolution(), Some((1280, 720)));
    let events = read_all(&mut reader);
    let expected = truth(&dir.join("evt3_sample.npy"));
    assert_eq!(expected.len(), 219_596);
    assert_eq!(first_difference(&events, &expected), None);
}

#[test]
fn evt3_sample_decodes_the_same_in_tiny_batches_and_windows() {
    let Some(dir) =
        splitstream_testkit::events_dir("evt3_sample_decodes_the_same_in_tiny_batches_and_windows")
    else {
        return;
    };
    let options = SourceOptions {
        buffer_bytes: 4096,
        batch_events: 7,
        ..Default::default()
    };
    let mut reader = open_path(&dir.join("evt3_sample.raw"), &options).expect("opens");
    let events = read_all(&mut reader);
    let expected = truth(&dir.join("evt3_sample.npy"));
    assert_eq!(first_difference(&events, &expected), None);
}

#[test]
fn gen41_zstd_aedat4_decodes_to_exactly_its_truth() {
    let Some(dir) =
        splitstream_testkit::events_dir("gen41_zstd_aedat4_decodes_to_exactly_its_truth")
    else {
        return;
    };
    let mut reader =
        open_path(&dir.join("gen41_zstd.aedat4"), &SourceOptions::default()).expect("opens");
    assert_eq!(reader.info().format, Format::Aedat4);
    assert_eq!(reader.info().resolution(), Some((1280, 720)));
    let events = read_all(&mut reader);
    let expected = truth(&dir.join("gen41_zstd.npy"));
    assert_eq!(expected.len(), 109_798);
    assert_eq!(first_difference(&events, &expected), None);
}

#[test]
fn evt2_sample_has_its_resolution_monotonic_time_and_a_plausible_count() {
    let Some(dir) = splitstream_testkit::events_dir(
        "evt2_sample_has_its_resolution_monotonic_time_and_a_plausible_count",
    ) else {
        return;
    };
    let path = dir.join("evt2_sample.raw");
    let mut reader = open_path(&path, &SourceOptions::default()).expect("opens");
    assert_eq!(reader.info().format, Format::Evt2);
    assert_eq!(reader.info().resolution(), Some((640, 480)));
    let events = read_all(&mut reader);
    // Every 32-bit word is at most one event; time-high words take some of them.
    let words = std::fs::metadata(&path).expect("stat").len() / 4;
    assert!(
        events.len() as u64 > words * 8 / 10 && (events.len() as u64) < words,
        "{} events from {words} words",
        events.len()
    );
    assert!(
        events.windows(2).all(|w| w[0].t <= w[1].t),
        "time goes backwards"
    );
    assert!(
        events.iter().all(|e| e.x < 640 && e.y < 480),
        "pixel outside 640x480"
    );
    assert!(events.iter().any(|e| e.p) && events.iter().any(|e| !e.p));
}

/// The first event packet of the real AEDAT 4 recording (iniVation's MonoCameraWriter),
/// decompressed: its size-prefixed flatbuffer.
fn first_real_aedat4_packet(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let file = std::fs::read(dir.join("gen41_zstd.aedat4")).expect("reads");
    let magic = splitstream_events::formats::aedat4::MAGIC.len();
    let header_len =
        u32::from_le_bytes(file[magic..magic + 4].try_into().expect("4 bytes")) as usize;
    let header = file[magic + 4..magic + 4 + header_len].to_vec();
    let at = magic + 4 + header_len;
    let size = u32::from_le_bytes(file[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
    let packet = zstd::decode_all(&file[at + 8..at + 8 + size]).expect("zstd frame");
    (header, packet)
}

#[test]
fn spec_made_aedat4_is_laid_out_byte_for_byte_as_inivations_writer_lays_it_out() {
    // dv-processing refuses packets whose identifier is not followed by padding, so
    // the encoder (and every spec-made file the benches hand to dv-processing) must
    // match the real writer's layout, not merely be a valid flatbuffer.
    let Some(dir) = splitstream_testkit::events_dir(
        "spec_made_aedat4_is_laid_out_byte_for_byte_as_inivations_writer_lays_it_out",
    ) else {
        return;
    };
    let (real_header, real_packet) = first_real_aedat4_packet(&dir);
    let n = u32::from_le_bytes(real_packet[28..32].try_into().expect("4 bytes")) as usize;
    let events = truth(&dir.join("gen41_zstd.npy"));
    let ours = splitstream_events::encode::aedat4_packet(
        &events[..n],
        splitstream_events::formats::aedat4::Compression::None,
    );
    // 8 bytes of packet header (stream id, size), then the flatbuffer.
    assert_eq!(ours.len(), 8 + real_packet.len());
    let first_difference = (0..real_packet.len()).find(|&i| ours[8 + i] != real_packet[i]);
    assert_eq!(first_difference, None, "packet bytes differ");
    // The IOHeader: root offset, identifier, padding and vtable (the fields differ).
    let ours = splitstream_events::encode::aedat4(
        &[],
        1280,
        720,
        splitstream_events::formats::aedat4::Compression::Zstd,
        1,
        true,
    );
    let magic = splitstream_events::formats::aedat4::MAGIC.len();
    assert_eq!(&ours[magic + 4..magic + 4 + 24], &real_header[..24]);
}
