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
