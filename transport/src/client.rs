//! The device: connects to the edge, sends frames, follows status, reconfigures, and
//! reconnects. This is the async shell; the rules live in [`crate::session`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{oneshot, watch, Notify};

use crate::config::ClientConfig;
use crate::session::{Backoff, DeviceSession, FrameCounters, OutcomeKind};
use crate::tls::{self, Fingerprint, TlsConfigError, VerifyFailure};
use crate::wire::{
    self, code, AnswerHeader, CodecSpec, DropReason, EdgeTiming, FrameHeader, Hello, RejectReason,
    SessionLimits, Status, StreamConfig, ToDevice, ToEdge, ALPN,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn varint(code: u32) -> VarInt {
    VarInt::from_u32(code)
}

/// Why connecting to the edge failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No UDP socket.
    #[error("cannot open a UDP socket on {addr}: {source}")]
    Bind {
        /// Local address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate, key or CA file problem on the device.
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// The edge's certificate is not the pinned one.
    #[error("edge certificate fingerprint is {actual}, but the device pins {expected}: wrong edge, or the edge's certificate changed (check the fingerprint it printed at start)")]
    FingerprintMismatch {
        /// Pinned.
        expected: Fingerprint,
        /// Presented.
        actual: Fingerprint,
    },
    /// The edge's certificate does not verify against the CA.
    #[error("edge certificate not trusted: {0} (check the CA file and the server name)")]
    CertificateUntrusted(String),
    /// The peer does not speak `splitstream/1`.
    #[error("the peer at this address does not speak splitstream/1 (TLS ALPN mismatch): is it a splitstream edge of a compatible version?")]
    AlpnMismatch,
    /// The edge refused the connection before TLS (it is at its connection limit).
    #[error("the edge refused the connection (at its connection limit): retry later or use another edge")]
    Refused,
    /// Another TLS failure.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// No answer within the connect timeout.
    #[error("no answer from the edge at {addr} within {timeout:?}: is it running and reachable?")]
    Timeout {
        /// Edge address.
        addr: SocketAddr,
        /// Timeout.
        timeout: Duration,
    },
    /// The edge refused the session.
    #[error("edge rejected the session: {0}")]
    Rejected(RejectReason),
    /// The edge closed the connection during the handshake.
    #[error("edge closed the connection: {0}")]
    ClosedByEdge(String),
    /// The connection failed during the handshake.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The edge answered the `Hello` with something else than `Welcome`/`Reject`.
    #[error("edge broke the protocol during the handshake: {0}")]
    Protocol(String),
}

/// Why a frame could not be sent at all (the caller's mistake, not the link's).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendFrameError {
    /// The payload is larger than the session allows.
    #[error("payload of {len} bytes exceeds the session limit of {max} bytes: use a smaller codec setting")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        max: u32,
    },
}

/// Why a `Reconfigure` did not take effect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReconfigureError {
    /// There is no connection now.
    #[error("not connected to the edge")]
    NotConnected,
    /// The edge refused the new split or codec; the old one stays.
    #[error("edge refused the reconfiguration: {0}")]
    Rejected(RejectReason),
    /// The connection ended before the answer.
    #[error("connection lost before the edge answered")]
    ConnectionLost,
    /// The edge did not answer in time.
    #[error("edge did not answer the reconfiguration in time")]
    Timeout,
}

/// The connection as the device runtime sees it; watch it to switch to local compute
/// the moment it leaves `Connected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting (attempt 0 is the first connect).
    Connecting {
        /// Attempt number since the last loss.
        attempt: u32,
    },
    /// Connected; frames go to the edge.
    Connected {
        /// Session id from the edge.
        session_id: u64,
    },
    /// Not connected; `retry_in` says when the next attempt is (None: no more).
    Disconnected {
        /// Why.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Option<Duration>,
    },
    /// The edge refused the session on reconnect; no more attempts.
    Rejected(RejectReason),
    /// The client was closed.
    Closed,
}

impl ConnectionState {
    /// Whether frames can go to the edge now.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

/// A frame to send.
#[derive(Clone, Debug)]
pub struct OutgoingFrame {
    /// Codec payload.
    pub payload: Bytes,
    /// When the input was captured.
    pub captured_at: Instant,
    /// When a result stops being useful.
    pub deadline: Instant,
}

impl OutgoingFrame {
    /// A frame captured now with a latency budget.
    pub fn new(payload: Bytes, budget: Duration) -> Self {
        let now = Instant::now();
        Self {
            payload,
            captured_at: now,
            deadline: now + budget,
        }
    }
}

/// How a frame ended. Every frame ends in exactly one of these; all but `Answered`
/// mean the device should compute locally (or skip the frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// The edge's result.
    Answered(Bytes),
    /// The edge answered without a result.
    Dropped(DropReason),
    /// A newer frame took this one's place (latest frame wins).
    Overtaken,
    /// The deadline passed first.
    DeadlineMissed,
    /// The connection failed while the frame was in flight.
    ConnectionLost,
    /// There was no connection.
    NotConnected,
}

impl FrameOutcome {
    /// The outcome's kind.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Answered(_) => OutcomeKind::Answered,
            Self::Dropped(_) => OutcomeKind::Dropped,
            Self::Overtaken => OutcomeKind::Overtaken,
            Self::DeadlineMissed => OutcomeKind::DeadlineMissed,
            Self::ConnectionLost => OutcomeKind::ConnectionLost,
            Self::NotConnected => OutcomeKind::NotConnected,
        }
    }
}

/// A frame's outcome with its sequence number and round-trip time.
#[derive(Clone, Debug)]
pub struct FrameReport {
    /// Sequence number (`None` when never sent).
    pub seq: Option<u64>,
    /// How it ended.
    pub outcome: FrameOutcome,
    /// From `send_frame` to the outcome.
    pub elapsed: Duration,
    /// The edge's account of its time on the frame, when it answered with a result.
    pub edge: Option<EdgeTiming>,
}

struct Link {
    conn: quinn::Connection,
    session: Mutex<DeviceSession>,
    limits: SessionLimits,
    session_id: u64,
    control_send: tokio::sync::Mutex<quinn::SendStream>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Result<u32, RejectReason>>>>,
    cancels: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

struct Inner {
    config: Mutex<ClientConfig>,
    endpoint: quinn::Endpoint,
    origin: Instant,
    state: watch::Sender<ConnectionState>,
    status: watch::Sender<Option<Status>>,
    link: Mutex<Option<Arc<Link>>>,
    counters: Mutex<FrameCounters>,
    closing: AtomicBool,
    wake: Notify,
    next_request: AtomicU32,
}

/// The device's connection to the edge. Dropping it closes the connection.
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?})", *self.inner.state.borrow())
    }
}

impl Client {
    /// Connects, authenticates and opens a session. Must be called inside a tokio
    /// runtime. After this first success the client reconnects by itself (per
    /// [`ClientConfig::reconnect`]) whenever the connection is lost.
    pub async fn connect(config: ClientConfig) -> Result<Self, ConnectError> {
        let endpoint =
            quinn::Endpoint::client(config.bind).map_err(|source| ConnectError::Bind {
                addr: config.bind,
                source,
            })?;
        let (state, _) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let (status, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            config: Mutex::new(config),
            endpoint,
            origin: Instant::now(),
            state,
            status,
            link: Mutex::new(None),
            counters: Mutex::new(FrameCounters::default()),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
            next_request: AtomicU32::new(1),
        });
        let (link, recv) = establish(&inner).await?;
        install(&inner, link, recv);
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Watch the connection state (changes the moment the connection is lost).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Watch the edge's latest status (`None` until the first one, and after a loss).
    pub fn status(&self) -> watch::Receiver<Option<Status>> {
        self.inner.status.subscribe()
    }

    /// Frame counters since the client was created.
    pub fn counters(&self) -> FrameCounters {
        *lock(&self.inner.counters)
    }

    /// Limits of the current session.
    pub fn limits(&self) -> Option<SessionLimits> {
        lock(&self.inner.link).as_ref().map(|l| l.limits)
    }

    /// Round-trip time estimate of the current connection.
    pub fn rtt(&self) -> Option<Duration> {
        lock(&self.inner.link).as_ref().map(|l| l.conn.rtt())
    }

    /// The stream configuration in effect (updated by [`reconfigure`](Self::reconfigure)).
    pub fn stream_config(&self) -> StreamConfig {
        lock(&self.inner.config).stream.clone()
    }

    /// Sends a frame and waits for its outcome. Never waits past the frame's deadline;
    /// returns at once with `NotConnected` when there is no connection.
    pub async fn send_frame(&self, frame: OutgoingFrame) -> Result<FrameReport, SendFrameError> {
        let started = Instant::now();
        let link = lock(&self.inner.link).clone();
        let Some(link) = link else {
            lock(&self.inner.counters).count(OutcomeKind::NotConnected);
            return Ok(FrameReport {
                seq: None,
                outcome: FrameOutcome::NotConnected,
                elapsed: started.elapsed(),
                edge: None,
            });
        };
        let len = frame.payload.len();
        let max = link.limits.max_frame_payload;
        let Some(len32) = u32::try_from(len).ok().filter(|l| *l <= max) else {
            return Err(SendFrameError::PayloadTooLarge { len, max });
        };
        let start =
            lock(&link.session).begin_frame(frame.captured_at, frame.deadline, len32, started);
        lock(&self.inner.counters).sent += 1;
        let seq = start.header.seq;
        let (cancel_tx, cancel_rx) = oneshot::channel();
        {
            let mut cancels = lock(&link.cancels);
            if let Some(old) = start.overtaken.and_then(|s| cancels.remove(&s)) {
                let _ = old.send(());
            }
            cancels.insert(seq, cancel_tx);
        }
        let max_result = lock(&self.inner.config)
            .max_result_payload
            .min(link.limits.max_result_payload);
        let max_control = link.limits.max_control_message;
        let (reported, edge) = exchange(
            &link,
            start.header,
            start.priority,
            frame.payload,
            cancel_rx,
            frame.deadline,
            max_result,
            max_control,
        )
        .await;
        lock(&link.cancels).remove(&seq);
        let kind = lock(&link.session).end_frame(seq, reported.kind());
        lock(&self.inner.counters).count(kind);
        let outcome = if kind == reported.kind() {
            reported
        } else {
            match kind {
                OutcomeKind::Overtaken => FrameOutcome::Overtaken,
                OutcomeKind::ConnectionLost => FrameOutcome::ConnectionLost,
                OutcomeKind::DeadlineMissed => FrameOutcome::DeadlineMissed,
                _ => reported,
            }
        };
        let edge = edge.filter(|_| matches!(outcome, FrameOutcome::Answered(_)));
        Ok(FrameReport {
            seq: Some(seq),
            outcome,
            elapsed: started.elapsed(),
            edge,
        })
    }

    /// Changes split and codec without reconnecting. On success, frames sent from now
    /// on carry the new configuration epoch (and a later reconnect uses it too).
    pub async fn reconfigure(
        &self,
        split: String,
        codec: CodecSpec,
    ) -> Result<u32, ReconfigureError> {
        let link = lock(&self.inner.link)
            .clone()
            .ok_or(ReconfigureError::NotConnected)?;
        let request_id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(request_id, tx);
        let msg = ToEdge::Reconfigure {
            request_id,
            split: split.clone(),
            codec: codec.clone(),
        };
        if wire::write_message(&mut *link.control_send.lock().await, &msg)
            .await
            .is_err()
        {
            lock(&link.pending).remove(&request_id);
            return Err(ReconfigureError::ConnectionLost);
        }
        let timeout = lock(&self.inner.config).connect_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(epoch))) => {
                lock(&link.session).set_epoch(epoch);
                let mut cfg = lock(&self.inner.config);
                cfg.stream.split = split;
                cfg.stream.codec = codec;
                Ok(epoch)
            }
            Ok(Ok(Err(reason))) => Err(ReconfigureError::Rejected(reason)),
            Ok(Err(_)) => Err(ReconfigureError::ConnectionLost),
            Err(_) => {
                lock(&link.pending).remove(&request_id);
                Err(ReconfigureError::Timeout)
            }
        }
    }

    /// Drops the current connection (if any) and reconnects now, skipping the backoff.
    pub fn reconnect(&self) {
        if let Some(link) = lock(&self.inner.link).clone() {
            link.conn
                .close(varint(code::CLIENT_CLOSED), b"device reconnecting");
        }
        self.inner.wake.notify_one();
    }

    /// Closes the session and stops reconnecting.
    pub async fn close(self) {
        shut(&self.inner);
        let _ =
            tokio::time::timeout(Duration::from_millis(500), self.inner.endpoint.wait_idle()).await;
    }
}

fn shut(inner: &Inner) {
    inner.closing.store(true, Ordering::Release);
    if let Some(link) = lock(&inner.link).take() {
        link.conn
            .close(varint(code::CLIENT_CLOSED), b"device closed");
    }
    inner.state.send_replace(ConnectionState::Closed);
    inner.wake.notify_one();
}

impl Drop for Client {
    fn drop(&mut self) {
        shut(&self.inner);
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    link: &Link,
    header: FrameHeader,
    priority: i32,
    payload: Bytes,
    cancel: oneshot::Receiver<()>,
    deadline: Instant,
    max_result: u32,
    max_control: u32,
) -> (FrameOutcome, Option<EdgeTiming>) {
    let deadline = tokio::time::Instant::from_std(deadline);
    // Resolves only when the frame is overtaken; a dropped sender means "never", so the
    // future can be polled across both phases below without completing twice.
    let cancel = async move {
        if cancel.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(cancel);
    let opened = tokio::select! {
        r = link.conn.open_bi() => r,
        _ = &mut cancel => return (FrameOutcome::Overtaken, None),
        _ = tokio::time::sleep_until(deadline) => return (FrameOutcome::DeadlineMissed, None),
    };
    let Ok((mut send, mut recv)) = opened else {
        return (FrameOutcome::ConnectionLost, None);
    };
    let _ = send.set_priority(priority);
    enum Stopped {
        Overtaken,
        Deadline,
    }
    let io = frame_io(
        &mut send,
        &mut recv,
        header,
        payload,
        max_result,
        max_control,
    );
    let result = tokio::select! {
        r = io => Ok(r),
        _ = &mut cancel => Err(Stopped::Overtaken),
        _ = tokio::time::sleep_until(deadline) => Err(Stopped::Deadline),
    };
    let outcome = match result {
        Ok(Ok(answered)) => return answered,
        Ok(Err(why)) => {
            if link.conn.close_reason().is_some() {
                FrameOutcome::ConnectionLost
            } else {
                FrameOutcome::Dropped(DropReason::Other(why))
            }
        }
        Err(stop) => {
            let c = match stop {
                Stopped::Overtaken => code::OVERTAKEN,
                Stopped::Deadline => code::DEADLINE,
            };
            let _ = send.reset(varint(c));
            let _ = recv.stop(varint(c));
            match stop {
                Stopped::Overtaken => FrameOutcome::Overtaken,
                Stopped::Deadline => FrameOutcome::DeadlineMissed,
            }
        }
    };
    (outcome, None)
}

async fn frame_io(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    header: FrameHeader,
    payload: Bytes,
    max_result: u32,
    max_control: u32,
) -> Result<(FrameOutcome, Option<EdgeTiming>), String> {
    let mut head = wire::encode(&header);
    if payload.len() <= 16 << 10 {
        head.extend_from_slice(&payload);
        send.write_all(&head)
            .await
            .map_err(|e| format!("sending frame: {e}"))?;
    } else {
        send.write_all(&head)
            .await
            .map_err(|e| format!("sending frame: {e}"))?;
        send.write_all(&payload)
            .await
            .map_err(|e| format!("sending frame: {e}"))?;
    }
    send.finish().map_err(|e| format!("sending frame: {e}"))?;
    let answer: AnswerHeader = wire::read_message(recv, max_control)
        .await
        .map_err(|e| format!("edge answer: {e}"))?;
    match answer {
        AnswerHeader::Result {
            payload_len,
            timing,
        } if payload_len <= max_result => {
            let bytes = wire::read_payload(recv, payload_len)
                .await
                .map_err(|e| format!("edge result: {e}"))?;
            Ok((FrameOutcome::Answered(bytes), Some(timing)))
        }
        AnswerHeader::Result { payload_len, .. } => {
            let _ = recv.stop(varint(code::TOO_LARGE));
            Err(format!(
                "edge result of {payload_len} bytes exceeds the {max_result}-byte limit"
            ))
        }
        AnswerHeader::Dropped(reason) => Ok((FrameOutcome::Dropped(reason), None)),
    }
}

fn quic_client_config(
    cfg: &ClientConfig,
) -> Result<(quinn::ClientConfig, tls::FailureSlot), ConnectError> {
    let (crypto, slot) =
        tls::client_crypto_with_slot(&cfg.trust, cfg.client_identity.as_ref(), ALPN)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    // The edge never opens streams towards the device.
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|e| ConnectError::Connection(format!("idle timeout: {e}")))?,
    ));
    t.keep_alive_interval(Some(cfg.keep_alive_interval));
    client.transport_config(Arc::new(t));
    Ok((client, slot))
}

fn map_connection_error(e: &quinn::ConnectionError, slot: &tls::FailureSlot) -> ConnectError {
    if let Some(failure) = lock(slot).take() {
        return match failure {
            VerifyFailure::FingerprintMismatch { expected, actual } => {
                ConnectError::FingerprintMismatch { expected, actual }
            }
            VerifyFailure::Untrusted(why) => ConnectError::CertificateUntrusted(why),
        };
    }
    // TLS alert 120 (no_application_protocol), sent by the peer as a QUIC crypto error.
    let no_alpn = quinn::TransportErrorCode::crypto(120);
    match e {
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code == no_alpn => {
            ConnectError::AlpnMismatch
        }
        quinn::ConnectionError::TransportError(t) if t.code == no_alpn => {
            ConnectError::AlpnMismatch
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            ConnectError::Refused
        }
        quinn::ConnectionError::ConnectionClosed(c) => ConnectError::Tls(c.to_string()),
        quinn::ConnectionError::TransportError(t) => ConnectError::Tls(t.to_string()),
        quinn::ConnectionError::ApplicationClosed(a) => ConnectError::ClosedByEdge(format!(
            "{} ({})",
            code::name(a.error_code.into_inner()),
            String::from_utf8_lossy(&a.reason)
        )),
        other => ConnectError::Connection(other.to_string()),
    }
}

async fn establish(inner: &Inner) -> Result<(Arc<Link>, quinn::RecvStream), ConnectError> {
    let cfg = lock(&inner.config).clone();
    let (client_config, slot) = quic_client_config(&cfg)?;
    let connecting = inner
        .endpoint
        .connect_with(client_config, cfg.server_addr, &cfg.server_name)
        .map_err(|e| ConnectError::Connection(e.to_string()))?;
    let handshake = async {
        let conn = connecting
            .await
            .map_err(|e| map_connection_error(&e, &slot))?;
        let lost = |conn: &quinn::Connection, what: String| match conn.close_reason() {
            Some(e) => map_connection_error(&e, &slot),
            None => ConnectError::Protocol(what),
        };
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| map_connection_error(&e, &slot))?;
        let hello = ToEdge::Hello(Hello {
            version: cfg.protocol_version,
            device_id: cfg.device_id.clone(),
            token: cfg.token.clone(),
            config: cfg.stream.clone(),
            capabilities: cfg.capabilities.clone(),
        });
        wire::write_message(&mut send, &hello)
            .await
            .map_err(|e| lost(&conn, format!("sending Hello: {e}")))?;
        let reply = wire::read_message::<ToDevice, _>(&mut recv, cfg.max_control_message)
            .await
            .map_err(|e| lost(&conn, format!("reading Welcome: {e}")))?;
        match reply {
            ToDevice::Welcome(w) => Ok((conn, send, recv, w)),
            ToDevice::Reject(reason) => {
                conn.close(varint(code::REJECTED), b"rejected");
                Err(ConnectError::Rejected(reason))
            }
            other => {
                conn.close(varint(code::MALFORMED), b"expected Welcome or Reject");
                Err(ConnectError::Protocol(format!(
                    "expected Welcome or Reject, got {other:?}"
                )))
            }
        }
    };
    let (conn, send, recv, welcome) = tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: cfg.server_addr,
            timeout: cfg.connect_timeout,
        })??;
    let link = Link {
        session: Mutex::new(DeviceSession::new(
            &welcome.limits,
            welcome.epoch,
            inner.origin,
        )),
        limits: welcome.limits,
        session_id: welcome.session_id,
        control_send: tokio::sync::Mutex::new(send),
        pending: Mutex::new(HashMap::new()),
        cancels: Mutex::new(HashMap::new()),
        conn,
    };
    Ok((Arc::new(link), recv))
}

fn install(inner: &Arc<Inner>, link: Arc<Link>, recv: quinn::RecvStream) {
    *lock(&inner.link) = Some(link.clone());
    inner.state.send_replace(ConnectionState::Connected {
        session_id: link.session_id,
    });
    tokio::spawn(read_control(Arc::downgrade(inner), link, recv));
}

async fn read_control(inner: Weak<Inner>, link: Arc<Link>, mut recv: quinn::RecvStream) {
    loop {
        let msg =
            wire::read_message::<ToDevice, _>(&mut recv, link.limits.max_control_message).await;
        let Some(inner) = inner.upgrade() else { return };
        match msg {
            Ok(ToDevice::Status(status)) => {
                inner.status.send_replace(Some(status));
            }
            Ok(ToDevice::ReconfigureResult { request_id, result }) => {
                if let Some(tx) = lock(&link.pending).remove(&request_id) {
                    let _ = tx.send(result);
                }
            }
            Ok(other) => {
                tracing::warn!("edge sent {other:?} mid-session; closing");
                link.conn
                    .close(varint(code::MALFORMED), b"unexpected control message");
                return;
            }
            Err(e) => {
                if link.conn.close_reason().is_none() {
                    link.conn.close(varint(e.code()), e.to_string().as_bytes());
                }
                return;
            }
        }
    }
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // Jitter only; if the system RNG fails, a fixed value still works.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// Watches the current connection; on loss, tells the runtime at once, ends the frames
/// in flight, and reconnects with backoff and jitter.
async fn supervise(weak: Weak<Inner>) {
    loop {
        let Some(link) = weak.upgrade().and_then(|i| lock(&i.link).clone()) else {
            return;
        };
        let err = link.conn.closed().await;
        let Some(inner) = weak.upgrade() else { return };
        // Only the link we watched; `reconnect()` may already have replaced nothing else.
        {
            let mut current = lock(&inner.link);
            if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)) {
                *current = None;
            }
        }
        for seq in lock(&link.session).connection_lost() {
            if let Some(tx) = lock(&link.cancels).remove(&seq) {
                let _ = tx.send(());
            }
        }
        lock(&link.pending).clear();
        inner.status.send_replace(None);
        if inner.closing.load(Ordering::Acquire) {
            inner.state.send_replace(ConnectionState::Closed);
            return;
        }
        let mut reason = match &err {
            quinn::ConnectionError::ApplicationClosed(a) => format!(
                "closed: {} ({})",
                code::name(a.error_code.into_inner()),
                String::from_utf8_lossy(&a.reason)
            ),
            other => other.to_string(),
        };
        tracing::info!("connection to the edge lost: {reason}");
        let policy = lock(&inner.config).reconnect.clone();
        if !policy.enabled {
            inner.state.send_replace(ConnectionState::Disconnected {
                reason,
                retry_in: None,
            });
            return;
        }
        let mut backoff = Backoff::new(policy.initial_delay, policy.max_delay);
        drop(inner);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if policy.max_attempts.is_some_and(|m| backoff.attempts() >= m) {
                inner.state.send_replace(ConnectionState::Disconnected {
                    reason: format!("{reason}; gave up after {} attempts", backoff.attempts()),
                    retry_in: None,
                });
                return;
            }
            let delay = backoff.next_delay(random_u64());
            inner.state.send_replace(ConnectionState::Disconnected {
                reason: reason.clone(),
                retry_in: Some(delay),
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inner.wake.notified() => {}
            }
            if inner.closing.load(Ordering::Acquire) {
                return;
            }
            inner.state.send_replace(ConnectionState::Connecting {
                attempt: backoff.attempts(),
            });
            match establish(&inner).await {
                Ok((link, recv)) => {
                    if inner.closing.load(Ordering::Acquire) {
                        link.conn
                            .close(varint(code::CLIENT_CLOSED), b"device closed");
                        return;
                    }
                    install(&inner, link, recv);
                    break;
                }
                Err(ConnectError::Rejected(r)) => {
                    inner.state.send_replace(ConnectionState::Rejected(r));
                    return;
                }
                Err(e) => {
                    tracing::debug!("reconnect attempt failed: {e}");
                    reason = format!("reconnect failed: {e}");
                }
            }
        }
    }
}
