//! Criterion: the event-camera decoders (`splitstream-events`) on streams written by
//! the spec encoders (`events::encode`) from one seeded event list, and on the real
//! EVT 3.0 recording when `../shared/events` is there (else it is left out).
//!
//! `cargo bench -p splitstream-bench --bench events` (add `-- --quick` for a short
//! run). The comparison with expelliarmus is `splitstream-bench events`'s; this
//! tracks each decoder's rate with criterion's statistics.
#![forbid(unsafe_code)]

use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use splitstream_events::formats::aedat4::Compression;
use splitstream_events::{encode, open_reader, Event, SourceOptions};

/// A seeded stream of `n` events on a `w` x `h` sensor, time increasing by 0-3 µs.
fn events(n: usize, w: u16, h: u16) -> Vec<Event> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut t = 0i64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            t += (state & 3) as i64;
            let x = ((state >> 8) % u64::from(w)) as u16;
            let y = ((state >> 24) % u64::from(h)) as u16;
            Event::new(t, x, y, state >> 63 == 1)
        })
        .collect()
}

fn with_header(version: &str, w: u16, h: u16, body: &[u8]) -> Vec<u8> {
    let mut b = encode::prophesee_header(version, w, h);
    b.extend_from_slice(body);
    b
}

/// Decodes the whole stream, returning the event count.
fn decode(bytes: &Bytes, ext: Option<&str>) -> usize {
    let mut reader = open_reader(Cursor::new(bytes.clone()), ext, &SourceOptions::default())
        .expect("the stream opens");
    let mut batch = Vec::new();
    let mut n = 0;
    while reader.read_batch(&mut batch).expect("decodes") > 0 {
        n += batch.len();
    }
    n
}

fn shared_evt3() -> Option<PathBuf> {
    let root = match std::env::var_os("SPLITSTREAM_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    Some(root.join("events/evt3_sample.raw")).filter(|p| p.is_file())
}

fn decoders(c: &mut Criterion) {
    let hd = events(100_000, 1280, 720);
    let dvs128 = events(100_000, 128, 128);
    let nmnist = events(100_000, 34, 34);
    let mut streams: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "evt3",
            with_header("3.0", 1280, 720, &encode::evt3_bytes(&hd)),
            Some("raw"),
        ),
        (
            "evt2",
            with_header("2.0", 1280, 720, &encode::evt2(&hd)),
            Some("raw"),
        ),
        (
            "evt21",
            with_header("2.1", 1280, 720, &encode::evt21(&hd)),
            Some("raw"),
        ),
        (
            "aedat4_none",
            encode::aedat4(&hd, 1280, 720, Compression::None, 10_000, true),
            Some("aedat4"),
        ),
        (
            "aedat4_lz4",
            encode::aedat4(&hd, 1280, 720, Compression::Lz4, 10_000, true),
            Some("aedat4"),
        ),
        (
            "aedat31",
            encode::aedat31(&hd, "DAVIS346", 8192),
            Some("aedat"),
        ),
        ("aedat2", encode::aedat2_dvs128(&dvs128), Some("aedat")),
        ("nmnist_bin", encode::nbin(&nmnist), Some("bin")),
    ];
    if let Some(path) = shared_evt3() {
        if let Ok(bytes) = std::fs::read(&path) {
            streams.push(("evt3_real_recording", bytes, Some("raw")));
        }
    }
    let mut group = c.benchmark_group("events_decode");
    for (name, bytes, ext) in streams {
        let bytes = Bytes::from(bytes);
        let n = decode(&bytes, ext);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| decode(&bytes, ext))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = decoders
}
criterion_main!(benches);
