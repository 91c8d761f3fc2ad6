//! The edge: a QUIC endpoint that authenticates devices and hands their frames to the
//! runtime. This is the async shell; the rules live in [`crate::session`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::acceptor::Acceptor;
use crate::auth::TokenStore;
use crate::config::{Limits, ServerConfig};
use crate::session::{
    accept_hello, Admission, EdgeCounters, EdgeSession, FrameEnd, HandshakePolicy,
};
use crate::tls::{self, Fingerprint, TlsConfigError};
use crate::wire::{
    self, code, AnswerHeader, Capabilities, DropReason, EdgeTiming, FrameHeader, ReadMessageError,
    SessionLimits, Status, StreamConfig, ToDevice, ToEdge,
};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Certificate, key or CA file problem.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The TLS configuration cannot carry QUIC (needs TLS 1.3 and AES-128-GCM).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on UDP {addr}: {source} (is another edge running there?)")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

fn varint(code: u32) -> VarInt {
    VarInt::from_u32(code)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared by all connection tasks of one server.
struct Shared {
    tokens: TokenStore,
    acceptor: Arc<dyn Acceptor>,
    limits: Limits,
    min_version: u16,
    max_version: u16,
    max_connections: usize,
    connections: AtomicUsize,
    next_session: AtomicU64,
}

struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The edge's QUIC endpoint. Accepts devices, runs their handshakes, and yields a
/// [`Session`] for each device admitted.
pub struct Server {
    endpoint: quinn::Endpoint,
    sessions: mpsc::Receiver<Session>,
    fingerprint: Fingerprint,
    local_addr: SocketAddr,
}

impl Server {
    /// Binds the UDP socket and starts accepting connections. Must be called inside a
    /// tokio runtime. `acceptor` decides which models, splits and codecs are served.
    pub fn bind(config: ServerConfig, acceptor: impl Acceptor) -> Result<Self, BindError> {
        let crypto = tls::server_crypto(&config.identity, &config.client_auth)?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| BindError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server_config.transport_config(Arc::new(transport_config(&config.limits)?));
        let io_err = |source| BindError::Io {
            addr: config.bind,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.bind).map_err(io_err)?;
        enlarge_buffers(&socket, config.udp_buffer_bytes);
        let runtime = quinn::default_runtime().ok_or_else(|| {
            io_err(std::io::Error::other(
                "Server::bind must run inside a tokio runtime",
            ))
        })?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(io_err)?;
        let local_addr = endpoint.local_addr().map_err(|source| BindError::Io {
            addr: config.bind,
            source,
        })?;
        let shared = Arc::new(Shared {
            tokens: config.tokens,
            acceptor: Arc::new(acceptor),
            limits: config.limits,
            min_version: config.min_version,
            max_version: config.max_version,
            max_connections: config.max_connections,
            connections: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
        });
        // Sessions wait here until the runtime accepts them; a slow runtime blocks
        // only the handshake tasks, never the endpoint.
        let (tx, sessions) = mpsc::channel(64);
        tokio::spawn(accept_loop(endpoint.clone(), shared, tx));
        Ok(Self {
            endpoint,
            sessions,
            fingerprint: config.identity.fingerprint(),
            local_addr,
        })
    }

    /// The address the edge listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// SHA-256 fingerprint of the edge's certificate (what devices pin).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The next admitted device session; `None` once the server is closed.
    pub async fn accept(&mut self) -> Option<Session> {
        self.sessions.recv().await
    }

    /// Connections open now (handshaking or established).
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// Closes every connection with `SHUTDOWN` and waits (at most `grace`) for the
    /// closes to be delivered.
    pub async fn shutdown(self, grace: Duration) {
        self.endpoint
            .close(varint(code::SHUTDOWN), b"edge shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.endpoint
            .close(varint(code::SHUTDOWN), b"edge shutting down");
    }
}

/// Asks for larger UDP socket buffers: many devices sending at once overflow the usual
/// ~208 KiB default, and every dropped datagram costs a QUIC retransmission. The kernel
/// caps the request at `net.core.rmem_max`/`wmem_max`; failure only costs throughput.
fn enlarge_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    if bytes == 0 {
        return;
    }
    match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(state) => {
            if let Err(e) = state.set_recv_buffer_size(socket.into(), bytes) {
                tracing::debug!("UDP receive buffer not enlarged: {e}");
            }
            if let Err(e) = state.set_send_buffer_size(socket.into(), bytes) {
                tracing::debug!("UDP send buffer not enlarged: {e}");
            }
        }
        Err(e) => tracing::debug!("UDP socket state: {e}"),
    }
}

pub(crate) fn transport_config(limits: &Limits) -> Result<quinn::TransportConfig, BindError> {
    let mut t = quinn::TransportConfig::default();
    // One control stream plus the frames in flight; a device cannot open more.
    t.max_concurrent_bidi_streams(varint(limits.max_in_flight.saturating_add(1)));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(varint(limits.connection_receive_window));
    t.stream_receive_window(varint(limits.stream_receive_window));
    t.datagram_receive_buffer_size(None);
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(limits.idle_timeout)
            .map_err(|e| BindError::Quic(format!("idle timeout: {e}")))?,
    ));
    t.keep_alive_interval(Some(limits.keep_alive_interval));
    t.congestion_controller_factory(limits.congestion.factory());
    Ok(t)
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, tx: mpsc::Sender<Session>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= shared.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(peer = %incoming.remote_address(), "connection limit reached, refusing");
            incoming.refuse();
            continue;
        }
        let slot = ConnectionSlot(shared.clone());
        tokio::spawn(handle_connection(
            incoming,
            shared.clone(),
            tx.clone(),
            slot,
        ));
    }
}

/// Who is on the other end of a session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Session id (unique in this edge process).
    pub session_id: u64,
    /// Device id from the `Hello`, authenticated by its token.
    pub device_id: Arc<str>,
    /// Device capabilities.
    pub capabilities: Capabilities,
    /// Limits the session runs under.
    pub limits: SessionLimits,
    /// The device's address.
    pub remote: SocketAddr,
}

struct SessionShared {
    state: Mutex<EdgeSession>,
    status: Mutex<Status>,
    status_changed: Notify,
}

/// Pushes `Status` to one device; cheap to clone and send to other tasks.
#[derive(Clone)]
pub struct StatusHandle(Arc<SessionShared>);

impl StatusHandle {
    /// Sets the status the device is told: soon (after the minimum gap), then at every
    /// status interval.
    pub fn push(&self, status: Status) {
        *lock(&self.0.status) = status;
        lock(&self.0.state).status_pushed();
        self.0.status_changed.notify_one();
    }
}

/// One admitted device. Dropping it closes the connection.
pub struct Session {
    info: SessionInfo,
    frames: mpsc::Receiver<IncomingFrame>,
    shared: Arc<SessionShared>,
    conn: quinn::Connection,
    config: watch::Receiver<(u32, Arc<StreamConfig>)>,
}

impl Session {
    /// Who the device is and what the session allows.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The next frame; `None` when the connection has ended.
    pub async fn next_frame(&mut self) -> Option<IncomingFrame> {
        self.frames.recv().await
    }

    /// A handle to push status from another task.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.shared.clone())
    }

    /// Sets the status sent to this device (see [`StatusHandle::push`]).
    pub fn push_status(&self, status: Status) {
        self.status_handle().push(status);
    }

    /// The current stream configuration and its epoch; changes when the device sends an
    /// accepted `Reconfigure`. (Each frame also carries the configuration it used.)
    pub fn config(&self) -> watch::Receiver<(u32, Arc<StreamConfig>)> {
        self.config.clone()
    }

    /// Frame counters of this session.
    pub fn counters(&self) -> EdgeCounters {
        lock(&self.shared.state).counters()
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    /// Ends the session now.
    pub fn close(&self) {
        self.conn
            .close(varint(code::DONE), b"session closed by edge");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the runtime learns about a frame.
#[derive(Clone, Debug)]
pub struct FrameMeta {
    /// Session the frame came on.
    pub session_id: u64,
    /// Device that sent it.
    pub device_id: Arc<str>,
    /// The header as sent (device-clock times).
    pub header: FrameHeader,
    /// The configuration the payload was encoded with.
    pub config: Arc<StreamConfig>,
    /// Deadline on the edge's clock.
    pub deadline: Instant,
    /// When the frame's stream opened at the edge.
    pub arrived: Instant,
}

/// A frame for the runtime: metadata, payload, and the responder to answer with.
#[derive(Debug)]
pub struct IncomingFrame {
    /// Metadata.
    pub meta: FrameMeta,
    /// The codec payload.
    pub payload: Bytes,
    /// Answers the frame (exactly once; dropping it answers `Dropped(Abandoned)`).
    pub responder: Responder,
}

enum Answer {
    Result(Bytes),
    Dropped(DropReason),
}

/// Why an answer did not reach the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    /// The frame ended before the answer: the device reset it (overtaken or past its
    /// deadline), the edge answered `Dropped` at the deadline, or the connection ended.
    #[error("frame already ended (device reset it, deadline passed or connection closed)")]
    FrameGone,
    /// The result exceeds the session's result limit; the device got
    /// `Dropped(ResultTooLarge)` instead.
    #[error("result of {len} bytes exceeds the session limit of {max} bytes")]
    TooLarge {
        /// Result length.
        len: usize,
        /// Limit.
        max: u32,
    },
}

/// Answers one frame. Synchronous and cheap: the frame's stream task writes the answer.
#[derive(Debug)]
pub struct Responder {
    tx: Option<oneshot::Sender<Answer>>,
    cancelled: Arc<AtomicBool>,
    max_result: u32,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Result(b) => write!(f, "Result({} bytes)", b.len()),
            Answer::Dropped(r) => write!(f, "Dropped({r})"),
        }
    }
}

impl Responder {
    /// Whether the answer is no longer wanted (device reset the frame, deadline passed,
    /// connection gone): a batcher can skip the work.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Sends the result.
    pub fn answer(mut self, result: Bytes) -> Result<(), AnswerError> {
        if result.len() > self.max_result as usize {
            let len = result.len();
            self.send(Answer::Dropped(DropReason::ResultTooLarge))?;
            return Err(AnswerError::TooLarge {
                len,
                max: self.max_result,
            });
        }
        self.send(Answer::Result(result))
    }

    /// Answers `Dropped(reason)`.
    pub fn drop_frame(mut self, reason: DropReason) -> Result<(), AnswerError> {
        self.send(Answer::Dropped(reason))
    }

    fn send(&mut self, answer: Answer) -> Result<(), AnswerError> {
        match self.tx.take() {
            Some(tx) => tx.send(answer).map_err(|_| AnswerError::FrameGone),
            None => Err(AnswerError::FrameGone),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.send(Answer::Dropped(DropReason::Abandoned));
    }
}

enum HelloOutcome {
    Hello(quinn::SendStream, quinn::RecvStream, Box<wire::Hello>),
    Close(u32, String),
    Gone,
}

async fn read_hello(conn: &quinn::Connection, max: u32) -> HelloOutcome {
    let (send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(_) => return HelloOutcome::Gone,
    };
    match wire::read_message::<ToEdge, _>(&mut recv, max).await {
        Ok(ToEdge::Hello(h)) => HelloOutcome::Hello(send, recv, Box::new(h)),
        Ok(_) => HelloOutcome::Close(
            code::MALFORMED,
            "first control message must be Hello".into(),
        ),
        Err(e) => HelloOutcome::Close(e.code(), e.to_string()),
    }
}

async fn handle_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    sessions: mpsc::Sender<Session>,
    _slot: ConnectionSlot,
) {
    let limits = &shared.limits;
    let peer = incoming.remote_address();
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, "QUIC accept failed: {e}");
            return;
        }
    };
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let hello =
        tokio::time::timeout_at(deadline, read_hello(&conn, limits.max_control_message)).await;
    let (mut send, recv, hello) = match hello {
        Ok(HelloOutcome::Hello(s, r, h)) => (s, r, h),
        Ok(HelloOutcome::Close(c, why)) => {
            tracing::info!(%peer, "closing: {why}");
            conn.close(varint(c), why.as_bytes());
            return;
        }
        Ok(HelloOutcome::Gone) => return,
        Err(_) => {
            tracing::info!(%peer, "no Hello within the handshake timeout, closing");
            conn.close(
                varint(code::HANDSHAKE_TIMEOUT),
                b"no Hello within the handshake timeout",
            );
            return;
        }
    };
    let policy = HandshakePolicy {
        tokens: &shared.tokens,
        acceptor: shared.acceptor.as_ref(),
        limits,
        min_version: shared.min_version,
        max_version: shared.max_version,
    };
    let session_id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (state, welcome) = match accept_hello(&hello, &policy, session_id, Instant::now()) {
        Ok(ok) => ok,
        Err(reason) => {
            tracing::info!(%peer, device = %hello.device_id, "rejecting: {reason}");
            let _ = wire::write_message(&mut send, &ToDevice::Reject(reason.clone())).await;
            let _ = send.finish();
            // Let the device read the reason and close; then close ourselves.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(varint(code::REJECTED), reason.to_string().as_bytes());
            return;
        }
    };
    if wire::write_message(&mut send, &ToDevice::Welcome(welcome))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(%peer, device = %hello.device_id, session_id, "session established");
    let limits_s = state.limits();
    let current = state.current();
    let shared_s = Arc::new(SessionShared {
        state: Mutex::new(state),
        status: Mutex::new(Status::default()),
        status_changed: Notify::new(),
    });
    let (frame_tx, frames) = mpsc::channel(limits_s.max_in_flight.max(1) as usize);
    let (config_tx, config) = watch::channel(current);
    let info = SessionInfo {
        session_id,
        device_id: Arc::from(hello.device_id.as_str()),
        capabilities: hello.capabilities.clone(),
        limits: limits_s,
        remote: peer,
    };
    let session = Session {
        info: info.clone(),
        frames,
        shared: shared_s.clone(),
        conn: conn.clone(),
        config,
    };
    if sessions.send(session).await.is_err() {
        conn.close(varint(code::SHUTDOWN), b"edge shutting down");
        return;
    }
    drive_session(
        conn, send, recv, shared, shared_s, info, frame_tx, config_tx,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn drive_session(
    conn: quinn::Connection,
    mut control_send: quinn::SendStream,
    mut control_recv: quinn::RecvStream,
    shared: Arc<Shared>,
    session: Arc<SessionShared>,
    info: SessionInfo,
    frame_tx: mpsc::Sender<IncomingFrame>,
    config_tx: watch::Sender<(u32, Arc<StreamConfig>)>,
) {
    let max_control = shared.limits.max_control_message;
    // Reading is not cancel-safe mid-message, so it gets its own task.
    let (control_tx, mut control_rx) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        loop {
            let msg = wire::read_message::<ToEdge, _>(&mut control_recv, max_control).await;
            let stop = msg.is_err();
            if control_tx.send(msg).await.is_err() || stop {
                break;
            }
        }
    });
    loop {
        let next_status = tokio::time::Instant::from_std(lock(&session.state).next_status_due());
        tokio::select! {
            _ = conn.closed() => break,
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(frame_task(send, recv, shared.clone(), session.clone(), info.clone(), frame_tx.clone()));
                }
                Err(_) => break,
            },
            msg = control_rx.recv() => match msg {
                Some(Ok(ToEdge::Reconfigure { request_id, split, codec })) => {
                    let result = lock(&session.state).on_reconfigure(&split, &codec, shared.acceptor.as_ref());
                    if result.is_ok() {
                        let _ = config_tx.send(lock(&session.state).current());
                    }
                    let reply = ToDevice::ReconfigureResult { request_id, result };
                    if wire::write_message(&mut control_send, &reply).await.is_err() {
                        break;
                    }
                }
                Some(Ok(ToEdge::Hello(_))) => {
                    conn.close(varint(code::MALFORMED), b"Hello sent twice");
                    break;
                }
                Some(Err(ReadMessageError::End)) | None => {
                    conn.close(varint(code::DONE), b"device closed its control stream");
                    break;
                }
                Some(Err(e)) => {
                    tracing::info!(device = %info.device_id, "control stream: {e}; closing connection");
                    conn.close(varint(e.code()), e.to_string().as_bytes());
                    break;
                }
            },
            _ = tokio::time::sleep_until(next_status) => {
                if lock(&session.state).poll_status(Instant::now()) {
                    let status = *lock(&session.status);
                    if wire::write_message(&mut control_send, &ToDevice::Status(status)).await.is_err() {
                        break;
                    }
                }
            }
            _ = session.status_changed.notified() => {}
        }
    }
    reader.abort();
    tracing::info!(device = %info.device_id, session_id = info.session_id, "session ended");
}

async fn frame_task(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    session: Arc<SessionShared>,
    info: SessionInfo,
    frames: mpsc::Sender<IncomingFrame>,
) {
    let arrived = Instant::now();
    let limits = &shared.limits;
    let read = tokio::time::timeout(limits.frame_read_timeout, async {
        let header: FrameHeader = wire::read_message(&mut recv, limits.max_control_message).await?;
        if !lock(&session.state).payload_allowed(&header) {
            return Err(ReadMessageError::TooLarge {
                len: header.payload_len,
                max: info.limits.max_frame_payload,
            });
        }
        let payload = wire::read_payload(&mut recv, header.payload_len).await?;
        Ok((header, payload))
    })
    .await;
    let received = Instant::now();
    let (header, payload) = match read {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            // A bad frame ends its own stream only; the session goes on.
            tracing::debug!(device = %info.device_id, "frame stream: {e}");
            let _ = recv.stop(varint(e.code()));
            let _ = send.reset(varint(e.code()));
            return;
        }
        Err(_) => {
            tracing::debug!(device = %info.device_id, "frame stream too slow, resetting");
            let _ = recv.stop(varint(code::STREAM_TIMEOUT));
            let _ = send.reset(varint(code::STREAM_TIMEOUT));
            return;
        }
    };
    let clock = FrameClock { arrived, received };
    let _ = send.set_priority((header.seq & 0x7fff_ffff) as i32);
    let admission = lock(&session.state).on_frame(&header, arrived, Instant::now());
    let (deadline, config) = match admission {
        Admission::Accept { deadline, config } => (deadline, config),
        Admission::Drop(reason) => {
            let _ = write_answer(&mut send, Answer::Dropped(reason), &clock, limits).await;
            return;
        }
    };
    let (tx, rx) = oneshot::channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    let frame = IncomingFrame {
        meta: FrameMeta {
            session_id: info.session_id,
            device_id: info.device_id.clone(),
            header,
            config,
            deadline,
            arrived,
        },
        payload,
        responder: Responder {
            tx: Some(tx),
            cancelled: cancelled.clone(),
            max_result: info.limits.max_result_payload,
        },
    };
    let seq = header.seq;
    // The channel holds max_in_flight frames and QUIC admits no more streams than that,
    // so this only fails when the runtime dropped the session.
    if let Err(e) = frames.try_send(frame) {
        drop(e);
        let _ = write_answer(
            &mut send,
            Answer::Dropped(DropReason::ShuttingDown),
            &clock,
            limits,
        )
        .await;
        lock(&session.state).on_frame_end(seq, FrameEnd::Dropped);
        return;
    }
    enum Waited {
        Answer(Answer),
        Expired,
        Cancelled,
    }
    let stopped = send.stopped();
    let waited = tokio::select! {
        a = rx => Waited::Answer(a.unwrap_or(Answer::Dropped(DropReason::Abandoned))),
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Waited::Expired,
        _ = stopped => Waited::Cancelled,
    };
    let end = match waited {
        Waited::Answer(answer) => {
            let end = match answer {
                Answer::Result(_) => FrameEnd::Answered,
                Answer::Dropped(_) => FrameEnd::Dropped,
            };
            match write_answer(&mut send, answer, &clock, limits).await {
                Ok(()) => end,
                Err(()) => FrameEnd::Failed,
            }
        }
        Waited::Expired => {
            cancelled.store(true, Ordering::Release);
            let _ = write_answer(
                &mut send,
                Answer::Dropped(DropReason::DeadlineExpired),
                &clock,
                limits,
            )
            .await;
            FrameEnd::Expired
        }
        Waited::Cancelled => {
            cancelled.store(true, Ordering::Release);
            let _ = send.reset(varint(code::OVERTAKEN));
            FrameEnd::CancelledByDevice
        }
    };
    lock(&session.state).on_frame_end(seq, end);
}

/// When a frame's stream opened and when its payload had arrived, for its
/// [`EdgeTiming`].
struct FrameClock {
    arrived: Instant,
    received: Instant,
}

impl FrameClock {
    /// The timing of an answer written now.
    fn timing(&self) -> EdgeTiming {
        EdgeTiming {
            receive_us: EdgeTiming::micros(self.received.saturating_duration_since(self.arrived)),
            serve_us: EdgeTiming::micros(self.received.elapsed()),
        }
    }
}

async fn write_answer(
    send: &mut quinn::SendStream,
    answer: Answer,
    clock: &FrameClock,
    limits: &Limits,
) -> Result<(), ()> {
    let write = async {
        match answer {
            Answer::Result(bytes) => {
                let len = u32::try_from(bytes.len()).map_err(|_| ())?;
                let mut buf = wire::encode(&AnswerHeader::Result {
                    payload_len: len,
                    timing: clock.timing(),
                });
                // One write for small results; large ones go separately to avoid a copy.
                if bytes.len() <= 16 << 10 {
                    buf.extend_from_slice(&bytes);
                    send.write_all(&buf).await.map_err(|_| ())?;
                } else {
                    send.write_all(&buf).await.map_err(|_| ())?;
                    send.write_all(&bytes).await.map_err(|_| ())?;
                }
            }
            Answer::Dropped(reason) => {
                send.write_all(&wire::encode(&AnswerHeader::Dropped(reason)))
                    .await
                    .map_err(|_| ())?;
            }
        }
        send.finish().map_err(|_| ())
    };
    tokio::time::timeout(limits.frame_read_timeout, write)
        .await
        .map_err(|_| ())?
}
