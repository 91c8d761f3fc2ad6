//! Live sources: a DV network stream from a tiny server on 127.0.0.1, a file that is
//! still being written, a pipe, and real-time pacing.

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use splitstream_events::encode;
use splitstream_events::formats::aedat4::Compression;
use splitstream_events::source::{Follow, Pacer};
use splitstream_events::{
    open, open_reader, Event, EventReader, Format, SourceOptions, SourceSpec,
};

fn events(n: i64, step: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                1_000 + i * step,
                (i * 7 % 320) as u16,
                (i * 3 % 240) as u16,
                i % 2 == 0,
            )
        })
        .collect()
}

fn drain(reader: &mut dyn EventReader) -> Vec<Event> {
    let mut all = Vec::new();
    let mut batch = Vec::new();
    while reader.read_batch(&mut batch).expect("reads") > 0 {
        all.extend_from_slice(&batch);
    }
    all
}

#[test]
fn dv_tcp_stream_from_a_local_server_decodes_every_packet() {
    let sent = events(5000, 3);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let to_send = sent.clone();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        // What DV's network output sends: the IOHeader, then packets as they come.
        let header_only = encode::aedat4(&[], 320, 240, Compression::Lz4, 1, false);
        sock.write_all(&header_only).expect("header");
        for chunk in to_send.chunks(700) {
            sock.write_all(&encode::aedat4_packet(chunk, Compression::Lz4))
                .expect("packet");
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut reader = open(
        &format!("dv+tcp://127.0.0.1:{port}"),
        &SourceOptions::default(),
    )
    .expect("connects");
    assert_eq!(reader.info().format, Format::Aedat4);
    assert_eq!(reader.info().resolution(), Some((320, 240)));
    let got = drain(&mut reader);
    server.join().expect("server");
    assert_eq!(got, sent);
}

#[test]
fn a_dv_tcp_spec_without_a_port_is_a_clear_error() {
    let err = "dv+tcp://localhost"
        .parse::<SourceSpec>()
        .expect_err("no port");
    assert!(err.to_string().contains("HOST:PORT"), "{err}");
    assert_eq!("-".parse::<SourceSpec>().expect("stdin"), SourceSpec::Stdin);
    assert!("http://x".parse::<SourceSpec>().is_err());
}

#[test]
fn a_growing_file_is_followed_until_the_stop_flag() {
    let dir = std::env::temp_dir().join(format!("splitstream-follow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("growing.raw");
    let all = events(3000, 10);
    let mut bytes = encode::prophesee_header("2.0", 320, 240);
    bytes.extend_from_slice(&encode::evt2(&all));
    let (first, rest) = bytes.split_at(bytes.len() / 3);
    std::fs::write(&path, first).expect("first part");
    let stop = Arc::new(AtomicBool::new(false));
    let options = SourceOptions {
        follow: Some(Follow {
            poll: Duration::from_millis(5),
            idle_timeout: None,
            stop: Some(stop.clone()),
        }),
        ..Default::default()
    };
    let mut reader = open(path.to_str().expect("utf-8 path"), &options).expect("opens");
    let writer_path = path.clone();
    let rest = rest.to_vec();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(writer_path)
            .expect("append");
        for chunk in rest.chunks(1000) {
            std::thread::sleep(Duration::from_millis(3));
            f.write_all(chunk).expect("write");
            f.flush().expect("flush");
        }
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
    });
    let got = drain(&mut reader);
    writer.join().expect("writer");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(got, all);
}

#[test]
fn a_pipe_is_read_as_it_arrives() {
    let all = events(2000, 5);
    let mut bytes = encode::prophesee_header("3.0", 320, 240);
    bytes.extend_from_slice(&encode::evt3_bytes(&all));
    // A connected socket pair reads like a pipe: bytes arrive in pieces, then EOF.
    let (mut tx, rx) = std::os::unix::net::UnixStream::pair().expect("pair");
    let writer = std::thread::spawn(move || {
        for chunk in bytes.chunks(333) {
            tx.write_all(chunk).expect("write");
        }
        drop(tx);
    });
    let mut reader = open_reader(rx, None, &SourceOptions::default()).expect("opens");
    let got = drain(&mut reader);
    writer.join().expect("writer");
    assert_eq!(got, all);
}

#[test]
fn the_pacer_releases_events_at_recorded_speed() {
    let mut pacer = Pacer::new(2.0);
    assert_eq!(pacer.horizon(5_000, Duration::ZERO), 5_000);
    // At twice the speed, 10 ms of wall time reaches 20 ms of recording.
    assert_eq!(pacer.horizon(9_999, Duration::from_millis(10)), 25_000);
    assert_eq!(
        pacer.wait(45_000, Duration::from_millis(10)),
        Duration::from_millis(10)
    );
    assert_eq!(pacer.wait(1_000, Duration::from_millis(10)), Duration::ZERO);
}

#[test]
fn realtime_playback_takes_the_recorded_duration() {
    // 150 ms of events played at recorded speed: no sooner than ~150 ms.
    let all = events(150, 1_000);
    let mut bytes = encode::prophesee_header("2.0", 320, 240);
    bytes.extend_from_slice(&encode::evt2(&all));
    let path =
        std::env::temp_dir().join(format!("splitstream-realtime-{}.raw", std::process::id()));
    std::fs::write(&path, bytes).expect("write");
    let options = SourceOptions {
        realtime: true,
        ..Default::default()
    };
    let start = Instant::now();
    let mut reader = open(path.to_str().expect("utf-8"), &options).expect("opens");
    let got = drain(&mut reader);
    let took = start.elapsed();
    std::fs::remove_file(&path).ok();
    assert_eq!(got, all);
    assert!(
        took >= Duration::from_millis(140),
        "played 149 ms of events in {took:?}"
    );
}
