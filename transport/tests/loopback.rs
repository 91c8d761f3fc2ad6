//! End-to-end tests of the transport on loopback with real QUIC and real TLS 1.3.
//! Every wait is bounded by a timeout; every loop by a count.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use splitstream_transport::wire::{
    self, code, AnswerHeader, FrameHeader, Hello, Secret, ToDevice, ToEdge,
};
use splitstream_transport::{
    tls, Advice, Capabilities, Client, ClientConfig, CodecSpec, ConnectError, ConnectionState,
    DropReason, FrameOutcome, Limits, ModelId, ModelRegistry, OutgoingFrame, ReconfigureError,
    RejectReason, Responder, Server, ServerConfig, ServerIdentity, ServerTrust, Status,
    StreamConfig, TokenStore,
};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "0123456789abcdef-token";

fn model() -> ModelId {
    ModelId::from_weights_bytes("vit_tiny_patch16_224", b"the weights file")
}

fn stream(split: &str) -> StreamConfig {
    StreamConfig {
        model: model(),
        split: split.into(),
        codec: CodecSpec::new("affine-u8", vec![8]),
    }
}

fn registry() -> ModelRegistry {
    let mut r = ModelRegistry::new();
    r.insert(
        "vit_tiny_patch16_224",
        model().weights_sha256,
        ["blocks.3", "blocks.6"],
        ["affine-u8", "f16"],
    );
    r
}

fn tokens(n: usize) -> TokenStore {
    let mut t = TokenStore::new();
    for i in 0..n {
        t.insert(format!("dev-{i}"), TOKEN);
    }
    t
}

fn test_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_millis(800),
        frame_read_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_secs(2),
        keep_alive_interval: Duration::from_millis(400),
        status_interval: Duration::from_millis(200),
        ..Limits::default()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// What the test edge runtime does with frames.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Answers `split|payload reversed`.
    Echo,
    /// Keeps every frame unanswered.
    Hold,
}

#[derive(Default)]
struct EdgeLog {
    held: Vec<Responder>,
    frames: usize,
    sessions_ended: usize,
}

fn start_edge(
    identity: ServerIdentity,
    bind: SocketAddr,
    devices: usize,
    limits: Limits,
) -> (Server, Arc<Mutex<EdgeLog>>) {
    let mut config = ServerConfig::new(bind, identity, tokens(devices));
    config.limits = limits;
    let server = Server::bind(config, registry()).expect("edge binds on loopback");
    (server, Arc::new(Mutex::new(EdgeLog::default())))
}

/// Runs the test runtime: accepts sessions and answers per `behaviour`.
fn serve(
    mut server: Server,
    log: Arc<Mutex<EdgeLog>>,
    behaviour: Behaviour,
) -> tokio::task::JoinHandle<Server> {
    tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                s = server.accept() => {
                    let Some(mut session) = s else { break };
                    let log = log.clone();
                    sessions.spawn(async move {
                        while let Some(frame) = session.next_frame().await {
                            log.lock().unwrap().frames += 1;
                            match behaviour {
                                Behaviour::Echo => {
                                    let mut out = format!("{}|", frame.meta.config.split).into_bytes();
                                    out.extend(frame.payload.iter().rev());
                                    let _ = frame.responder.answer(Bytes::from(out));
                                }
                                Behaviour::Hold => log.lock().unwrap().held.push(frame.responder),
                            }
                        }
                        log.lock().unwrap().sessions_ended += 1;
                    });
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                // Hand the server back when the test asks (by aborting is not needed:
                // tests keep the handle and shut down through `Server::shutdown`).
            }
        }
        server
    })
}

fn client_config(addr: SocketAddr, trust: ServerTrust, device: &str) -> ClientConfig {
    let mut c = ClientConfig::new(addr, trust, device, TOKEN, stream("blocks.3"));
    c.connect_timeout = Duration::from_secs(5);
    c.idle_timeout = Duration::from_secs(2);
    c.keep_alive_interval = Duration::from_millis(400);
    c.reconnect.initial_delay = Duration::from_millis(50);
    c.reconnect.max_delay = Duration::from_millis(400);
    c
}

fn expected_echo(split: &str, payload: &[u8]) -> Bytes {
    let mut out = format!("{split}|").into_bytes();
    out.extend(payload.iter().rev());
    Bytes::from(out)
}

async fn wait_for_state(
    client: &Client,
    want: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut rx = client.state();
    let state = tokio::time::timeout(WAIT, rx.wait_for(|s| want(s)))
        .await
        .expect("state change within the bound")
        .expect("state channel open")
        .clone();
    state
}

/// A bare QUIC connection with our TLS settings, for peers that misbehave on purpose.
async fn raw_connect(
    addr: SocketAddr,
    fp: tls::Fingerprint,
    alpn: &[u8],
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let crypto = tls::client_crypto_with_alpn(&ServerTrust::Pinned(fp), alpn).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let conn = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "localhost")
        .unwrap()
        .await?;
    Ok((endpoint, conn))
}

fn hello(device: &str, token: &str) -> ToEdge {
    ToEdge::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        device_id: device.into(),
        token: Secret(token.into()),
        config: stream("blocks.3"),
        capabilities: Capabilities::default(),
    })
}

/// Raw handshake; returns the control streams after `Welcome`.
async fn raw_session(
    conn: &quinn::Connection,
    device: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::write_message(&mut send, &hello(device, TOKEN))
        .await
        .unwrap();
    let reply: ToDevice = wire::read_message(&mut recv, 1 << 16).await.unwrap();
    assert!(matches!(reply, ToDevice::Welcome(_)), "{reply:?}");
    (send, recv)
}

/// A frame header from a raw device: configuration epoch 0, times in microseconds.
fn raw_header(seq: u64, sent_us: u64, deadline_us: u64, payload_len: u32) -> FrameHeader {
    FrameHeader {
        seq,
        epoch: 0,
        capture_us: 0,
        sent_us,
        deadline_us,
        payload_len,
    }
}

async fn closed_code(conn: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed within the bound")
    {
        quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
        _ => None,
    }
}

async fn one_good_frame(client: &Client, payload: &[u8]) {
    let report = client
        .send_frame(OutgoingFrame::new(
            Bytes::copy_from_slice(payload),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        FrameOutcome::Answered(expected_echo("blocks.3", payload))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_session_answers_frames_reports_status_and_reconfigures() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let mut config = ServerConfig::new(loopback(), id, tokens(1));
    config.limits = test_limits();
    let mut server = Server::bind(config, registry()).unwrap();
    let addr = server.local_addr();
    let client = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    assert!(client.state().borrow().is_connected());
    let session = tokio::time::timeout(WAIT, server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*session.info().device_id, "dev-0");
    let status = Status {
        load: 0.75,
        queue_delay_us: 1234,
        power_headroom: 0.2,
        advice: Advice::PreferLocal,
    };
    session.push_status(status);
    let mut config_rx = session.config();
    let runtime = tokio::spawn(async move {
        let mut session = session;
        let mut seqs = Vec::new();
        while let Some(frame) = session.next_frame().await {
            seqs.push(frame.meta.header.seq);
            let mut out = format!("{}|", frame.meta.config.split).into_bytes();
            out.extend(frame.payload.iter().rev());
            frame.responder.answer(Bytes::from(out)).unwrap();
        }
        (seqs, session.counters())
    });

    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..5 {
        one_good_frame(&client, &payload).await;
    }
    let mut status_rx = client.status();
    let seen = tokio::time::timeout(
        WAIT,
        status_rx.wait_for(|s| s.is_some_and(|s| s.advice == Advice::PreferLocal)),
    )
    .await
    .expect("status within the bound")
    .unwrap()
    .unwrap();
    assert_eq!(seen, status);

    let epoch = client
        .reconfigure("blocks.6".into(), CodecSpec::new("f16", vec![]))
        .await
        .unwrap();
    assert_eq!(epoch, 1);
    tokio::time::timeout(WAIT, config_rx.wait_for(|(e, _)| *e == 1))
        .await
        .unwrap()
        .unwrap();
    let report = client
        .send_frame(OutgoingFrame::new(
            Bytes::from_static(b"abc"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        FrameOutcome::Answered(expected_echo("blocks.6", b"abc"))
    );
    let refused = client
        .reconfigure("blocks.99".into(), CodecSpec::new("f16", vec![]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ReconfigureError::Rejected(RejectReason::UnsupportedSplit { .. })
        ),
        "{refused}"
    );
    assert_eq!(client.stream_config().split, "blocks.6");

    let counters = client.counters();
    assert_eq!((counters.sent, counters.answered), (6, 6));
    client.close().await;
    let (seqs, edge_counters) = tokio::time::timeout(WAIT, runtime).await.unwrap().unwrap();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(edge_counters.answered, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_rejected_as_bad_token() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let (server, log) = start_edge(id, loopback(), 1, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);
    let mut cfg = client_config(addr, ServerTrust::Pinned(fp), "dev-0");
    cfg.token = Secret("not-the-token-at-all".into());
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Rejected(RejectReason::BadToken)),
        "{err}"
    );
    assert!(err.to_string().contains("token file"), "{err}");
    // An unknown device gets the same answer: the edge does not reveal which ids exist.
    let err = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-77"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Rejected(RejectReason::BadToken)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_and_wrong_weights_are_rejected_with_their_reason() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let (server, log) = start_edge(id, loopback(), 1, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);
    let mut cfg = client_config(addr, ServerTrust::Pinned(fp), "dev-0");
    cfg.stream.model = ModelId::from_weights_bytes("deit_small_patch16_224", b"w");
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::Rejected(RejectReason::UnknownModel { arch }) if arch == "deit_small_patch16_224"),
        "{err}"
    );
    let mut cfg = client_config(addr, ServerTrust::Pinned(fp), "dev-0");
    cfg.stream.model = ModelId::from_weights_bytes("vit_tiny_patch16_224", b"other weights");
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Rejected(RejectReason::WeightsMismatch { .. })
        ),
        "{err}"
    );
    let mut cfg = client_config(addr, ServerTrust::Pinned(fp), "dev-0");
    cfg.stream.codec = CodecSpec::new("jpeg", vec![]);
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Rejected(RejectReason::UnsupportedCodec { .. })
        ),
        "{err}"
    );
    let mut cfg = client_config(addr, ServerTrust::Pinned(fp), "dev-0");
    cfg.protocol_version = wire::PROTOCOL_VERSION + 1;
    let err = Client::connect(cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Rejected(RejectReason::VersionTooNew {
                device,
                edge_max,
            }) if device == wire::PROTOCOL_VERSION + 1 && edge_max == wire::PROTOCOL_VERSION
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fingerprint_fails_tls_and_names_both_fingerprints() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let real = id.fingerprint();
    let (server, log) = start_edge(id, loopback(), 1, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);
    let other = ServerIdentity::self_signed(&["localhost"])
        .unwrap()
        .fingerprint();
    let err = Client::connect(client_config(addr, ServerTrust::Pinned(other), "dev-0"))
        .await
        .unwrap_err();
    match &err {
        ConnectError::FingerprintMismatch { expected, actual } => {
            assert_eq!(*expected, other);
            assert_eq!(*actual, real);
        }
        e => panic!("expected a fingerprint mismatch, got {e}"),
    }
    assert!(err.to_string().contains(&real.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_file_trust_accepts_a_ca_signed_edge_and_refuses_a_self_signed_one() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("splitstream-transport-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.join("edge.pem"),
        dir.join("edge.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let id = ServerIdentity::from_pem_files(&cert_path, &key_path).unwrap();
    let (server, log) = start_edge(id, loopback(), 1, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);
    let client = Client::connect(client_config(
        addr,
        ServerTrust::CaFile(ca_path.clone()),
        "dev-0",
    ))
    .await
    .unwrap();
    one_good_frame(&client, b"via a CA").await;
    client.close().await;

    let self_signed = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let (server, log) = start_edge(self_signed, loopback(), 1, test_limits());
    let addr = server.local_addr();
    let _edge2 = serve(server, log, Behaviour::Echo);
    let err = Client::connect(client_config(addr, ServerTrust::CaFile(ca_path), "dev-0"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::CertificateUntrusted(_)),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_fails_tls_on_both_sides_and_the_edge_keeps_serving() {
    // A device reaching a QUIC service that is not splitstream.
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let mut crypto = tls::server_crypto(&id, &Default::default()).unwrap();
    crypto.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
    let foreign =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(quic)), loopback())
            .unwrap();
    let foreign_addr = foreign.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        if let Some(incoming) = foreign.accept().await {
            let _ = incoming.await;
        }
        foreign
    });
    let err = Client::connect(client_config(
        foreign_addr,
        ServerTrust::Pinned(fp),
        "dev-0",
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::AlpnMismatch), "{err}");
    let _ = tokio::time::timeout(WAIT, accepting).await;

    // A foreign client reaching our edge: refused in TLS, and a good device still works.
    let (server, log) = start_edge(id, loopback(), 1, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);
    let foreign_client = raw_connect(addr, fp, b"h3").await;
    assert!(foreign_client.is_err(), "edge accepted a foreign ALPN");
    let client = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    one_good_frame(&client, b"still fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_close_only_the_offending_peer() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let (server, log) = start_edge(id, loopback(), 2, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);
    let good = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();

    // Garbage where the Hello should be: the connection is closed as malformed.
    let (_e1, garbage) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (mut s, _r) = garbage.open_bi().await.unwrap();
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    // A 4 GiB length prefix: refused before any allocation.
    let (_e2, huge) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (mut s2, _r2) = huge.open_bi().await.unwrap();
    s2.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    one_good_frame(&good, b"meanwhile").await;
    assert_eq!(
        closed_code(&garbage).await,
        Some(u64::from(code::MALFORMED))
    );
    assert_eq!(closed_code(&huge).await, Some(u64::from(code::TOO_LARGE)));

    // After a good handshake: a bad frame header and an oversized frame reset their
    // own streams; the same connection then gets a good frame answered.
    let (_e3, conn) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (_ctl_send, _ctl_recv) = raw_session(&conn, "dev-1").await;
    let (mut bad_send, mut bad_recv) = conn.open_bi().await.unwrap();
    bad_send
        .write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let err = tokio::time::timeout(
        WAIT,
        wire::read_message::<AnswerHeader, _>(&mut bad_recv, 1024),
    )
    .await
    .unwrap();
    assert!(err.is_err(), "malformed frame got an answer: {err:?}");
    let (mut big_send, mut big_recv) = conn.open_bi().await.unwrap();
    let header = raw_header(1, 0, 5_000_000, u32::MAX);
    wire::write_message(&mut big_send, &header).await.unwrap();
    let err = tokio::time::timeout(
        WAIT,
        wire::read_message::<AnswerHeader, _>(&mut big_recv, 1024),
    )
    .await
    .unwrap();
    assert!(err.is_err(), "oversized frame got an answer: {err:?}");
    let (mut ok_send, mut ok_recv) = conn.open_bi().await.unwrap();
    let header = raw_header(2, 0, 5_000_000, 3);
    wire::write_message(&mut ok_send, &header).await.unwrap();
    ok_send.write_all(b"xyz").await.unwrap();
    ok_send.finish().unwrap();
    let answer: AnswerHeader = tokio::time::timeout(WAIT, wire::read_message(&mut ok_recv, 1024))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            answer,
            AnswerHeader::Result {
                payload_len: 12,
                ..
            }
        ),
        "{answer:?}"
    );
    let body = wire::read_payload(&mut ok_recv, 12).await.unwrap();
    assert_eq!(body, expected_echo("blocks.3", b"xyz"));
    assert!(
        conn.close_reason().is_none(),
        "a bad frame must not close the connection"
    );
    one_good_frame(&good, b"after all that").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_peers_are_timed_out_without_hurting_other_devices() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    // Timeouts long enough that the good device is surely done before they fire: the
    // point is that it is served while the slow peers still hold their connections.
    let limits = Limits {
        handshake_timeout: Duration::from_secs(3),
        frame_read_timeout: Duration::from_secs(3),
        ..test_limits()
    };
    let (server, log) = start_edge(id, loopback(), 2, limits);
    let addr = server.local_addr();
    let _edge = serve(server, log, Behaviour::Echo);

    // Peer 1 opens the control stream and sends one byte of a Hello, then nothing.
    let (_e1, lazy) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (mut s, _r) = lazy.open_bi().await.unwrap();
    s.write_all(&[1]).await.unwrap();
    // Peer 2 authenticates, then opens every frame stream it may and stalls them all.
    let (_e2, stalled) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (_cs, _cr) = raw_session(&stalled, "dev-1").await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let (mut s, r) = stalled.open_bi().await.unwrap();
        s.write_all(&[9]).await.unwrap();
        streams.push((s, r));
    }
    // A good device is served while both stall.
    let good = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    for _ in 0..5 {
        one_good_frame(&good, b"not starved").await;
    }
    assert!(
        lazy.close_reason().is_none(),
        "the good device had to wait for the slowloris to be cut off"
    );
    assert_eq!(
        closed_code(&lazy).await,
        Some(u64::from(code::HANDSHAKE_TIMEOUT))
    );
    for (_, recv) in streams.iter_mut() {
        let r = tokio::time::timeout(WAIT, wire::read_message::<AnswerHeader, _>(recv, 1024))
            .await
            .unwrap();
        assert!(r.is_err(), "stalled stream got an answer");
    }
    // The stalled streams were reset; once the peer lets go of its halves, their slots
    // are free again (a peer that never does only starves itself).
    drop(streams);
    let (mut s, mut r) = tokio::time::timeout(WAIT, stalled.open_bi())
        .await
        .unwrap()
        .unwrap();
    let header = raw_header(1, 0, 5_000_000, 1);
    wire::write_message(&mut s, &header).await.unwrap();
    s.write_all(b"z").await.unwrap();
    s.finish().unwrap();
    let answer: AnswerHeader = tokio::time::timeout(WAIT, wire::read_message(&mut r, 1024))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(answer, AnswerHeader::Result { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_at_once_all_get_answers() {
    const DEVICES: usize = 200;
    const FRAMES: usize = 3;
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    // 200 TLS handshakes at once on a small CI machine take a while.
    // Lost Initial packets (200 arrive at once) are retried on QUIC's backoff, so the
    // idle timeouts here are longer than in the other tests.
    let limits = Limits {
        handshake_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(20),
        ..test_limits()
    };
    let (server, log) = start_edge(id, loopback(), DEVICES, limits);
    let addr = server.local_addr();
    let _edge = serve(server, log.clone(), Behaviour::Echo);
    let mut devices = tokio::task::JoinSet::new();
    for i in 0..DEVICES {
        devices.spawn(async move {
            let mut cfg = client_config(addr, ServerTrust::Pinned(fp), &format!("dev-{i}"));
            cfg.connect_timeout = Duration::from_secs(20);
            cfg.idle_timeout = Duration::from_secs(20);
            let client = Client::connect(cfg)
                .await
                .map_err(|e| format!("dev-{i}: {e}"))?;
            let mut answered = 0;
            for f in 0..FRAMES {
                let payload = format!("dev-{i} frame {f}").into_bytes();
                let report = client
                    .send_frame(OutgoingFrame::new(
                        Bytes::from(payload.clone()),
                        Duration::from_secs(20),
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                if report.outcome == FrameOutcome::Answered(expected_echo("blocks.3", &payload)) {
                    answered += 1;
                } else {
                    return Err(format!("dev-{i} frame {f}: {:?}", report.outcome));
                }
            }
            client.close().await;
            Ok::<usize, String>(answered)
        });
    }
    let mut total = 0;
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = devices.join_next().await {
            total += r.unwrap().unwrap();
        }
    });
    all.await.expect("200 devices finished within the bound");
    assert_eq!(total, DEVICES * FRAMES);
    assert_eq!(log.lock().unwrap().frames, DEVICES * FRAMES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_frame_overtakes_the_oldest_and_the_edge_sees_the_cancel() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let limits = Limits {
        max_in_flight: 2,
        ..test_limits()
    };
    let (server, log) = start_edge(id, loopback(), 1, limits);
    let addr = server.local_addr();
    let _edge = serve(server, log.clone(), Behaviour::Hold);
    let client = Arc::new(
        Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
            .await
            .unwrap(),
    );
    assert_eq!(client.limits().unwrap().max_in_flight, 2);
    let mut tasks = Vec::new();
    for i in 0..2u8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.send_frame(OutgoingFrame::new(
                Bytes::from(vec![i]),
                Duration::from_secs(5),
            ))
            .await
            .unwrap()
        }));
        // Both frames reach the edge before the third is sent.
        let deadline = Instant::now() + WAIT;
        while log.lock().unwrap().held.len() < usize::from(i) + 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let c = client.clone();
    let third = tokio::spawn(async move {
        c.send_frame(OutgoingFrame::new(
            Bytes::from_static(b"new"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
    });
    let first = tokio::time::timeout(WAIT, tasks.remove(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.outcome, FrameOutcome::Overtaken);
    assert_eq!(first.seq, Some(1));
    // The edge learns the first frame is no longer wanted.
    let deadline = Instant::now() + WAIT;
    while !log.lock().unwrap().held[0].is_cancelled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(log.lock().unwrap().held[0].is_cancelled());
    // Answer the rest.
    let deadline = Instant::now() + WAIT;
    while log.lock().unwrap().held.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held: Vec<Responder> = std::mem::take(&mut log.lock().unwrap().held);
    for r in held.into_iter().skip(1) {
        r.answer(Bytes::from_static(b"done")).unwrap();
    }
    let second = tokio::time::timeout(WAIT, tasks.remove(0))
        .await
        .unwrap()
        .unwrap();
    let third = tokio::time::timeout(WAIT, third).await.unwrap().unwrap();
    assert_eq!(
        second.outcome,
        FrameOutcome::Answered(Bytes::from_static(b"done"))
    );
    assert_eq!(
        third.outcome,
        FrameOutcome::Answered(Bytes::from_static(b"done"))
    );
    let c = client.counters();
    assert_eq!((c.sent, c.overtaken, c.answered, c.ended()), (3, 1, 2, 3));
}

/// The next frame the `Hold` runtime keeps.
async fn next_held(log: &Arc<Mutex<EdgeLog>>) -> Responder {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = log.lock().unwrap().held.pop() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited.await.expect("the frame reaches the runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_edges_receive_and_serve_times() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let (server, log) = start_edge(id, loopback(), 2, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log.clone(), Behaviour::Hold);
    // Raw device: the payload's second half leaves 80 ms after the first, and the
    // runtime answers 60 ms after it has the frame.
    let (_e, conn) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (_cs, _cr) = raw_session(&conn, "dev-1").await;
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let header = raw_header(1, 1_000, 5_001_000, 4);
    wire::write_message(&mut s, &header).await.unwrap();
    s.write_all(b"ab").await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    s.write_all(b"cd").await.unwrap();
    s.finish().unwrap();
    let responder = next_held(&log).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    responder.answer(Bytes::from_static(b"ok")).unwrap();
    let answer: AnswerHeader = tokio::time::timeout(WAIT, wire::read_message(&mut r, 1024))
        .await
        .unwrap()
        .unwrap();
    let AnswerHeader::Result {
        payload_len: 2,
        timing,
    } = answer
    else {
        panic!("{answer:?}");
    };
    assert!(
        (70_000..2_000_000).contains(&timing.receive_us),
        "{timing:?}"
    );
    assert!((55_000..2_000_000).contains(&timing.serve_us), "{timing:?}");
    // The device API hands the timing on with the result.
    let client = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    let answering = tokio::spawn({
        let log = log.clone();
        async move {
            let responder = next_held(&log).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            responder.answer(Bytes::from_static(b"fine")).unwrap();
        }
    });
    let report = client
        .send_frame(OutgoingFrame::new(
            Bytes::from_static(b"x"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    answering.await.unwrap();
    assert_eq!(
        report.outcome,
        FrameOutcome::Answered(Bytes::from_static(b"fine"))
    );
    let timing = report.edge.expect("a result carries the edge's timing");
    let serve = Duration::from_micros(u64::from(timing.serve_us));
    assert!(
        serve >= Duration::from_millis(45) && serve <= report.elapsed,
        "{timing:?} within {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_past_its_deadline_at_the_edge_is_answered_dropped() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let (server, log) = start_edge(id, loopback(), 2, test_limits());
    let addr = server.local_addr();
    let _edge = serve(server, log.clone(), Behaviour::Hold);
    // Raw device: a 100 ms budget, and the runtime never answers.
    let (_e, conn) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
    let (_cs, _cr) = raw_session(&conn, "dev-1").await;
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let header = raw_header(1, 1_000, 101_000, 2);
    wire::write_message(&mut s, &header).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    s.finish().unwrap();
    let started = Instant::now();
    let answer: AnswerHeader = tokio::time::timeout(WAIT, wire::read_message(&mut r, 1024))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, AnswerHeader::Dropped(DropReason::DeadlineExpired));
    assert!(started.elapsed() < Duration::from_secs(2));
    // A frame whose deadline is before its send time is dropped on arrival.
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let header = raw_header(2, 5_000, 4_000, 0);
    wire::write_message(&mut s, &header).await.unwrap();
    s.finish().unwrap();
    let answer: AnswerHeader = tokio::time::timeout(WAIT, wire::read_message(&mut r, 1024))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, AnswerHeader::Dropped(DropReason::DeadlineExpired));
    // The device API turns a held frame into DeadlineMissed (or the edge's Dropped).
    let client = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    let report = client
        .send_frame(OutgoingFrame::new(
            Bytes::from_static(b"x"),
            Duration::from_millis(100),
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            report.outcome,
            FrameOutcome::DeadlineMissed | FrameOutcome::Dropped(DropReason::DeadlineExpired)
        ),
        "{:?}",
        report.outcome
    );
    assert!(
        // Never much past the 100 ms deadline (generous for loaded CI machines).
        report.elapsed < Duration::from_secs(2),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_device_disconnect_mid_frame_ends_its_session_and_spares_others() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let mut config = ServerConfig::new(loopback(), id, tokens(2));
    config.limits = test_limits();
    let mut server = Server::bind(config, registry()).unwrap();
    let addr = server.local_addr();
    // The doomed device runs on its own runtime, which is torn down mid-frame: its
    // tasks and socket vanish without a CONNECTION_CLOSE, as when a process dies.
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let doomed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (endpoint, conn) = raw_connect(addr, fp, wire::ALPN).await.unwrap();
            let (cs, cr) = raw_session(&conn, "dev-1").await;
            let (mut s, r) = conn.open_bi().await.unwrap();
            let header = raw_header(1, 0, 60_000_000, 10_000);
            wire::write_message(&mut s, &header).await.unwrap();
            s.write_all(&[7u8; 5_000]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            sent_tx.send(()).unwrap();
            // Leak the handles so nothing is closed politely.
            std::mem::forget((endpoint, conn, cs, cr, s, r));
        });
        rt.shutdown_background();
    });
    let mut session = tokio::time::timeout(WAIT, server.accept())
        .await
        .unwrap()
        .unwrap();
    sent_rx.recv_timeout(WAIT).unwrap();
    doomed.join().unwrap();
    // The half-sent frame never reaches the runtime; the session ends by idle timeout.
    let next = tokio::time::timeout(WAIT, session.next_frame())
        .await
        .expect("session ends within the bound");
    assert!(next.is_none(), "a half-sent frame reached the runtime");
    assert_eq!(session.counters().accepted, 0);
    // Others are served as usual.
    let _edge = serve(server, Arc::default(), Behaviour::Echo);
    let good = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    one_good_frame(&good, b"alive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_dying_mid_frame_is_seen_at_once_and_the_device_reconnects_after_restart() {
    let id = ServerIdentity::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let fp = id.fingerprint();
    let (server, log) = start_edge(id.clone(), loopback(), 1, test_limits());
    let addr = server.local_addr();
    let edge = serve(server, log.clone(), Behaviour::Hold);
    let client = Arc::new(
        Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
            .await
            .unwrap(),
    );
    let c = client.clone();
    let in_flight = tokio::spawn(async move {
        c.send_frame(OutgoingFrame::new(
            Bytes::from_static(b"pending"),
            Duration::from_secs(30),
        ))
        .await
        .unwrap()
    });
    let deadline = Instant::now() + WAIT;
    while log.lock().unwrap().held.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The edge goes down with the frame in flight.
    edge.abort();
    let _ = edge.await;
    let lost_at = Instant::now();
    let report = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, FrameOutcome::ConnectionLost);
    wait_for_state(&client, |s| !s.is_connected()).await;
    assert!(
        // Seen through the edge's close, not the 2 s idle timeout.
        lost_at.elapsed() < Duration::from_secs(2),
        "loss seen after {:?}",
        lost_at.elapsed()
    );
    let report = client
        .send_frame(OutgoingFrame::new(
            Bytes::from_static(b"x"),
            Duration::from_secs(1),
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            report.outcome,
            FrameOutcome::NotConnected | FrameOutcome::ConnectionLost
        ),
        "{:?}",
        report.outcome
    );

    // The edge restarts on the same address with the same certificate.
    // The old socket closes once its connections have drained; retry the bind briefly.
    let mut server = None;
    for _ in 0..50 {
        let mut config = ServerConfig::new(addr, id.clone(), tokens(1));
        config.limits = test_limits();
        match Server::bind(config, registry()) {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let server = server.expect("edge rebinds its address within 5 s");
    let _edge = serve(server, Arc::default(), Behaviour::Echo);
    let state = wait_for_state(&client, |s| s.is_connected()).await;
    assert!(matches!(state, ConnectionState::Connected { .. }));
    one_good_frame(&client, b"back again").await;
    let c = client.counters();
    assert_eq!(c.connection_lost, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_edge_admits_a_device_with_a_ca_signed_certificate_and_refuses_one_without() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let device_key = rcgen::KeyPair::generate().unwrap();
    let device_cert = rcgen::CertificateParams::new(vec!["dev-0".to_string()])
        .unwrap()
        .signed_by(&device_key, &issuer)
        .unwrap();
    let dir =
        std::env::temp_dir().join(format!("splitstream-transport-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_path = dir.join("device-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let mut config = ServerConfig::new(loopback(), id, tokens(1));
    config.limits = test_limits();
    config.client_auth = splitstream_transport::ClientAuth::RequireCertificate { ca_file: ca_path };
    let server = Server::bind(config, registry()).unwrap();
    let addr = server.local_addr();
    let _edge = serve(server, Arc::default(), Behaviour::Echo);

    let mut cfg = client_config(addr, ServerTrust::Pinned(fp), "dev-0");
    cfg.client_identity = Some(splitstream_transport::ClientIdentity::from_der(
        vec![device_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(device_key.serialize_der()).unwrap(),
    ));
    let client = Client::connect(cfg).await.unwrap();
    one_good_frame(&client, b"mutual").await;

    let err = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Tls(_) | ConnectError::Connection(_) | ConnectError::ClosedByEdge(_)
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_at_its_connection_limit_refuses_more_devices_with_a_clear_error() {
    let id = ServerIdentity::self_signed(&["localhost"]).unwrap();
    let fp = id.fingerprint();
    let mut config = ServerConfig::new(loopback(), id, tokens(2));
    config.limits = test_limits();
    config.max_connections = 1;
    let server = Server::bind(config, registry()).unwrap();
    let addr = server.local_addr();
    let _edge = serve(server, Arc::default(), Behaviour::Echo);
    let first = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-0"))
        .await
        .unwrap();
    let err = Client::connect(client_config(addr, ServerTrust::Pinned(fp), "dev-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Refused), "{err}");
    one_good_frame(&first, b"still served").await;
}
