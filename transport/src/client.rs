//! The device: connects to the edge, sends frames, follows status, reconfigures, and
//! reconnects. This is the async shell; the rules live in [`crate::session`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{oneshot, watch, Notify};

use crate::config::ClientConfig;
use crate::fleet::{AttemptEnd, EdgeIndex, FleetConfig, FleetCore, FleetCounters, SwitchReason};
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
    /// Sequence number on the edge's session that answered (or was tried last); `None`
    /// when never sent.
    pub seq: Option<u64>,
    /// How it ended.
    pub outcome: FrameOutcome,
    /// From `send_frame` to the outcome.
    pub elapsed: Duration,
    /// The edge's account of its time on the frame, when it answered with a result.
    pub edge: Option<EdgeTiming>,
    /// The edge that answered (or was tried last); `None` when no edge was tried.
    pub edge_addr: Option<SocketAddr>,
    /// When the frame failed on one or more edges of a fleet first and was re-sent:
    /// which ones and why (e.g. `127.0.0.1:4433: connection lost`).
    pub failover: Option<String>,
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

/// The connection to one edge, with its own reconnect loop.
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
    /// The QUIC/TLS client configuration, built once and reused for every reconnect:
    /// its rustls session store keeps the edge's tickets, so a reconnect resumes (and
    /// sends its `Hello` as 0-RTT early data).
    quic: Mutex<Option<(quinn::ClientConfig, tls::FailureSlot)>>,
    /// Reconnects whose 0-RTT early data the edge accepted.
    zero_rtt_accepted: AtomicU64,
}

/// The device's connection to its edge, or to a fleet of edges. Dropping it closes the
/// connections.
///
/// With a fleet ([`Client::connect_fleet`]) the client holds a session to every edge
/// (each reconnecting with its own backoff), sends each frame to the edge the
/// [`FleetCore`] picks, re-sends it to the next edge when its edge fails it, and
/// reports through the same API as for one edge: [`state`](Self::state) is connected
/// while any edge is, [`status`](Self::status) and [`rtt`](Self::rtt) are the active
/// edge's.
pub struct Client {
    members: Vec<Arc<Inner>>,
    fleet: Option<Arc<Fleet>>,
}

/// The fleet's shared state: the deterministic core and the aggregated watches.
struct Fleet {
    addrs: Vec<SocketAddr>,
    core: Mutex<FleetCore>,
    member_states: Vec<watch::Receiver<ConnectionState>>,
    member_status: Vec<watch::Receiver<Option<Status>>>,
    state: watch::Sender<ConnectionState>,
    status: watch::Sender<Option<Status>>,
    /// Frames no edge could take (counted here, since no member saw them).
    not_connected: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?})", *self.state().borrow())
    }
}

/// Whether an error at the first connect means the edge will never take this device
/// (so it is not reprobed).
fn fatal(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::Rejected(_)
            | ConnectError::FingerprintMismatch { .. }
            | ConnectError::CertificateUntrusted(_)
            | ConnectError::AlpnMismatch
            | ConnectError::Config(_)
            | ConnectError::Bind { .. }
            | ConnectError::Protocol(_)
    )
}

impl Inner {
    fn new(config: ClientConfig) -> Result<Self, ConnectError> {
        let endpoint =
            quinn::Endpoint::client(config.bind).map_err(|source| ConnectError::Bind {
                addr: config.bind,
                source,
            })?;
        let (state, _) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let (status, _) = watch::channel(None);
        Ok(Self {
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
            quic: Mutex::new(None),
            zero_rtt_accepted: AtomicU64::new(0),
        })
    }

    fn addr(&self) -> SocketAddr {
        lock(&self.config).server_addr
    }

    /// Sends a frame on this edge's session. With `stall`, an attempt still unanswered
    /// after it is abandoned (its stream reset, so no answer can follow) and reported as
    /// stalled (`true`); the outcome then says `DeadlineMissed`.
    async fn send_once(
        &self,
        frame: &OutgoingFrame,
        stall: Option<Duration>,
    ) -> Result<(FrameReport, bool), SendFrameError> {
        let started = Instant::now();
        let addr = self.addr();
        let link = lock(&self.link).clone();
        let Some(link) = link else {
            lock(&self.counters).count(OutcomeKind::NotConnected);
            return Ok((
                FrameReport {
                    seq: None,
                    outcome: FrameOutcome::NotConnected,
                    elapsed: started.elapsed(),
                    edge: None,
                    edge_addr: Some(addr),
                    failover: None,
                },
                false,
            ));
        };
        let len = frame.payload.len();
        let max = link.limits.max_frame_payload;
        let Some(len32) = u32::try_from(len).ok().filter(|l| *l <= max) else {
            return Err(SendFrameError::PayloadTooLarge { len, max });
        };
        let start =
            lock(&link.session).begin_frame(frame.captured_at, frame.deadline, len32, started);
        lock(&self.counters).sent += 1;
        let seq = start.header.seq;
        let (cancel_tx, cancel_rx) = oneshot::channel();
        {
            let mut cancels = lock(&link.cancels);
            if let Some(old) = start.overtaken.and_then(|s| cancels.remove(&s)) {
                let _ = old.send(());
            }
            cancels.insert(seq, cancel_tx);
        }
        let max_result = lock(&self.config)
            .max_result_payload
            .min(link.limits.max_result_payload);
        let max_control = link.limits.max_control_message;
        let give_up = stall
            .and_then(|s| started.checked_add(s))
            .filter(|t| *t < frame.deadline);
        let (reported, edge) = exchange(
            &link,
            start.header,
            start.priority,
            frame.payload.clone(),
            cancel_rx,
            give_up.unwrap_or(frame.deadline),
            max_result,
            max_control,
        )
        .await;
        let stalled = give_up.is_some() && reported == FrameOutcome::DeadlineMissed;
        lock(&link.cancels).remove(&seq);
        let kind = lock(&link.session).end_frame(seq, reported.kind());
        lock(&self.counters).count(kind);
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
        let stalled = stalled && outcome == FrameOutcome::DeadlineMissed;
        let edge = edge.filter(|_| matches!(outcome, FrameOutcome::Answered(_)));
        Ok((
            FrameReport {
                seq: Some(seq),
                outcome,
                elapsed: started.elapsed(),
                edge,
                edge_addr: Some(addr),
                failover: None,
            },
            stalled,
        ))
    }

    async fn reconfigure(&self, split: String, codec: CodecSpec) -> Result<u32, ReconfigureError> {
        let link = lock(&self.link)
            .clone()
            .ok_or(ReconfigureError::NotConnected)?;
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
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
        let timeout = lock(&self.config).connect_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(epoch))) => {
                lock(&link.session).set_epoch(epoch);
                let mut cfg = lock(&self.config);
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

    fn reconnect(&self) {
        if let Some(link) = lock(&self.link).clone() {
            link.conn
                .close(varint(code::CLIENT_CLOSED), b"device reconnecting");
        }
        self.wake.notify_one();
    }
}

impl Client {
    /// Connects, authenticates and opens a session. Must be called inside a tokio
    /// runtime. After this first success the client reconnects by itself (per
    /// [`ClientConfig::reconnect`]) whenever the connection is lost.
    pub async fn connect(config: ClientConfig) -> Result<Self, ConnectError> {
        let inner = Arc::new(Inner::new(config)?);
        let (link, recv) = establish(&inner).await?;
        install(&inner, link, recv);
        tokio::spawn(supervise(Arc::downgrade(&inner), None));
        Ok(Self {
            members: vec![inner],
            fleet: None,
        })
    }

    /// Connects to a fleet of edges: `config` for everything but the address, which
    /// comes from `fleet.edges` (most preferred first). Connects to all of them at once
    /// and succeeds when at least one admits the device; an edge that is down is
    /// reprobed with backoff (per [`ClientConfig::reconnect`]), one that rejects the
    /// device or fails its certificate check is left out. Fails with the first edge's
    /// error when none connects.
    pub async fn connect_fleet(
        config: ClientConfig,
        fleet: FleetConfig,
    ) -> Result<Self, ConnectError> {
        let addrs = if fleet.edges.is_empty() {
            vec![config.server_addr]
        } else {
            FleetConfig::new(fleet.edges.iter().copied()).edges
        };
        let mut members = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            let mut cfg = config.clone();
            cfg.server_addr = *addr;
            // A name may resolve to both families: the default wildcard bind follows
            // each edge's (an explicit bind address is kept as given).
            if cfg.bind.ip().is_unspecified() && cfg.bind.is_ipv4() != addr.is_ipv4() {
                cfg.bind = if addr.is_ipv6() {
                    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, cfg.bind.port()))
                } else {
                    SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, cfg.bind.port()))
                };
            }
            members.push(Arc::new(Inner::new(cfg)?));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, m) in members.iter().enumerate() {
            let m = m.clone();
            tasks.spawn(async move { (i, establish(&m).await) });
        }
        let mut results: Vec<Option<Established>> = (0..members.len()).map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, r)) = done {
                results[i] = Some(r);
            }
        }
        let mut first_error = None;
        let mut any = false;
        for (m, r) in members.iter().zip(results) {
            let addr = m.addr();
            match r {
                Some(Ok((link, recv))) => {
                    any = true;
                    install(m, link, recv);
                    tokio::spawn(supervise(Arc::downgrade(m), None));
                }
                Some(Err(e)) if fatal(&e) => {
                    tracing::warn!(edge = %addr, "edge left out of the fleet: {e}");
                    m.state.send_replace(match &e {
                        ConnectError::Rejected(r) => ConnectionState::Rejected(r.clone()),
                        other => ConnectionState::Disconnected {
                            reason: other.to_string(),
                            retry_in: None,
                        },
                    });
                    first_error.get_or_insert(e);
                }
                Some(Err(e)) => {
                    tracing::info!(edge = %addr, "edge not reachable yet, reprobing: {e}");
                    let reason = e.to_string();
                    first_error.get_or_insert(e);
                    tokio::spawn(supervise(Arc::downgrade(m), Some(reason)));
                }
                None => {
                    let reason = "the connect task failed".to_owned();
                    tokio::spawn(supervise(Arc::downgrade(m), Some(reason)));
                }
            }
        }
        if !any {
            for m in &members {
                shut(m);
            }
            return Err(first_error.unwrap_or_else(|| {
                ConnectError::Connection("no edge in the fleet connected".into())
            }));
        }
        let now = Instant::now();
        let mut core = FleetCore::new(members.len(), fleet.tuning);
        for (i, m) in members.iter().enumerate() {
            match &*m.state.borrow() {
                ConnectionState::Connected { .. } => core.connected(i, now),
                ConnectionState::Rejected(_) => core.rejected(i),
                ConnectionState::Disconnected { retry_in: None, .. } => core.rejected(i),
                _ => {}
            }
        }
        let shared = Arc::new(Fleet {
            addrs,
            core: Mutex::new(core),
            member_states: members.iter().map(|m| m.state.subscribe()).collect(),
            member_status: members.iter().map(|m| m.status.subscribe()).collect(),
            state: watch::channel(ConnectionState::Connecting { attempt: 0 }).0,
            status: watch::channel(None).0,
            not_connected: AtomicU64::new(0),
        });
        shared.refresh();
        for (i, m) in members.iter().enumerate() {
            tokio::spawn(watch_member(
                Arc::downgrade(&shared),
                i,
                m.state.subscribe(),
                m.status.subscribe(),
            ));
        }
        Ok(Self {
            members,
            fleet: Some(shared),
        })
    }

    /// Watch the connection state (changes the moment the connection is lost; with a
    /// fleet, connected while any edge is).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        match &self.fleet {
            Some(f) => f.state.subscribe(),
            None => self.members[0].state.subscribe(),
        }
    }

    /// Watch the edge's latest status (`None` until the first one, and after a loss;
    /// with a fleet, the active edge's).
    pub fn status(&self) -> watch::Receiver<Option<Status>> {
        match &self.fleet {
            Some(f) => f.status.subscribe(),
            None => self.members[0].status.subscribe(),
        }
    }

    /// Frame counters since the client was created (with a fleet, summed over the
    /// edges: a frame re-sent to a second edge counts once on each).
    pub fn counters(&self) -> FrameCounters {
        let mut sum = FrameCounters::default();
        for m in &self.members {
            let c = *lock(&m.counters);
            sum.sent += c.sent;
            sum.answered += c.answered;
            sum.dropped += c.dropped;
            sum.overtaken += c.overtaken;
            sum.deadline_missed += c.deadline_missed;
            sum.connection_lost += c.connection_lost;
            sum.not_connected += c.not_connected;
        }
        if let Some(f) = &self.fleet {
            sum.not_connected += f.not_connected.load(Ordering::Relaxed);
        }
        sum
    }

    /// The fleet's decision counts (`None` for a single edge).
    pub fn fleet_counters(&self) -> Option<FleetCounters> {
        self.fleet.as_ref().map(|f| lock(&f.core).counters())
    }

    /// The edges' addresses, in the order given.
    pub fn edges(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.addr()).collect()
    }

    /// The edge new frames go to now.
    pub fn active_edge(&self) -> Option<SocketAddr> {
        self.active().map(|m| m.addr())
    }

    /// Reconnects (to any edge) whose 0-RTT early data the edge accepted: each one
    /// resumed a TLS session from a ticket of an earlier connection.
    pub fn zero_rtt_accepted(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.zero_rtt_accepted.load(Ordering::Relaxed))
            .sum()
    }

    /// The member frames go to now: the fleet's active edge if connected, else the
    /// first connected one.
    fn active(&self) -> Option<&Arc<Inner>> {
        let connected = |m: &&Arc<Inner>| lock(&m.link).is_some();
        let chosen = self
            .fleet
            .as_ref()
            .and_then(|f| lock(&f.core).active())
            .and_then(|i| self.members.get(i))
            .filter(connected);
        chosen.or_else(|| self.members.iter().find(connected))
    }

    /// Limits of the current session (the active edge's).
    pub fn limits(&self) -> Option<SessionLimits> {
        self.active()
            .and_then(|m| lock(&m.link).as_ref().map(|l| l.limits))
    }

    /// Round-trip time estimate of the current connection (the active edge's).
    pub fn rtt(&self) -> Option<Duration> {
        self.active()
            .and_then(|m| lock(&m.link).as_ref().map(|l| l.conn.rtt()))
    }

    /// The stream configuration in effect (updated by [`reconfigure`](Self::reconfigure)).
    pub fn stream_config(&self) -> StreamConfig {
        lock(&self.members[0].config).stream.clone()
    }

    /// Sends a frame and waits for its outcome. Never waits past the frame's deadline;
    /// returns at once with `NotConnected` when there is no connection.
    ///
    /// With a fleet, a frame its edge fails (connection lost, refused, or unanswered
    /// past the edge's stall timeout while another edge is usable) is re-sent to the
    /// next edge while its deadline allows; the report names the edge that answered
    /// and the fail-overs on the way. It still ends exactly once.
    pub async fn send_frame(&self, frame: OutgoingFrame) -> Result<FrameReport, SendFrameError> {
        let Some(fleet) = &self.fleet else {
            return Ok(self.members[0].send_once(&frame, None).await?.0);
        };
        let started = Instant::now();
        let id = lock(&fleet.core).begin_frame();
        let mut tried = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut last: Option<FrameReport> = None;
        loop {
            let now = Instant::now();
            if now >= frame.deadline && last.is_some() {
                break;
            }
            let pick = {
                let mut core = lock(&fleet.core);
                for (i, m) in self.members.iter().enumerate() {
                    if let Some(l) = lock(&m.link).as_ref() {
                        core.rtt(i, l.conn.rtt());
                    }
                }
                core.pick(now, &tried)
            };
            let Some(pick) = pick else { break };
            if let Some((from, why)) = pick.switched {
                let (from, to) = (fleet.addrs[from], fleet.addrs[pick.edge]);
                match why {
                    SwitchReason::Failover => {
                        tracing::warn!("failing over from edge {from} to {to}")
                    }
                    SwitchReason::Better => {
                        tracing::info!("moving to edge {to} (better than {from})")
                    }
                }
                fleet.publish_status(pick.edge);
            }
            let member = &self.members[pick.edge];
            let stall = pick
                .alternative
                .then(|| lock(&fleet.core).stall_timeout(pick.edge));
            let (mut report, stalled) = member.send_once(&frame, stall).await?;
            let end = attempt_end(&report.outcome, stalled);
            lock(&fleet.core).attempt_ended(pick.edge, end, report.elapsed, Instant::now());
            if !end.retry_elsewhere() {
                if !lock(&fleet.core).resolve(id) {
                    // Cannot happen with sequential attempts; guards the invariant.
                    tracing::error!("frame answered twice; the second answer is dropped");
                    report.outcome = FrameOutcome::Dropped(DropReason::DuplicateSeq);
                }
                report.elapsed = started.elapsed();
                report.failover = (!notes.is_empty()).then(|| notes.join("; "));
                return Ok(report);
            }
            let why = if stalled {
                format!("no answer within {:?}", stall.unwrap_or_default())
            } else {
                describe(&report.outcome)
            };
            notes.push(format!("{}: {why}", fleet.addrs[pick.edge]));
            tried.push(pick.edge);
            last = Some(report);
        }
        lock(&fleet.core).resolve(id);
        let mut report = last.unwrap_or_else(|| {
            fleet.not_connected.fetch_add(1, Ordering::Relaxed);
            FrameReport {
                seq: None,
                outcome: FrameOutcome::NotConnected,
                elapsed: Duration::ZERO,
                edge: None,
                edge_addr: None,
                failover: None,
            }
        });
        report.elapsed = started.elapsed();
        report.failover = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(report)
    }

    /// Changes split and codec without reconnecting. On success, frames sent from now
    /// on carry the new configuration epoch (and a later reconnect uses it too). With a
    /// fleet every connected edge is reconfigured and the others reconnect with the new
    /// configuration; the result is the active edge's, and an edge that refuses is
    /// reconnected (and so rejected and left out, if it cannot serve the new mode).
    pub async fn reconfigure(
        &self,
        split: String,
        codec: CodecSpec,
    ) -> Result<u32, ReconfigureError> {
        if self.fleet.is_none() {
            return self.members[0].reconfigure(split, codec).await;
        }
        let active = self.active().cloned();
        let mut result = Err(ReconfigureError::NotConnected);
        for m in &self.members {
            if lock(&m.link).is_none() {
                let mut cfg = lock(&m.config);
                cfg.stream.split = split.clone();
                cfg.stream.codec = codec.clone();
                continue;
            }
            let r = m.reconfigure(split.clone(), codec.clone()).await;
            if r.is_err() {
                {
                    let mut cfg = lock(&m.config);
                    cfg.stream.split = split.clone();
                    cfg.stream.codec = codec.clone();
                }
                m.reconnect();
            }
            if active.as_ref().is_some_and(|a| Arc::ptr_eq(a, m)) {
                result = r;
            }
        }
        result
    }

    /// Drops the current connection (if any; with a fleet, every edge's) and reconnects
    /// now, skipping the backoff.
    pub fn reconnect(&self) {
        for m in &self.members {
            m.reconnect();
        }
    }

    /// Closes the session and stops reconnecting.
    pub async fn close(self) {
        for m in &self.members {
            shut(m);
        }
        for m in &self.members {
            let _ = tokio::time::timeout(Duration::from_millis(500), m.endpoint.wait_idle()).await;
        }
    }
}

/// What an attempt's outcome means for the fleet.
fn attempt_end(outcome: &FrameOutcome, stalled: bool) -> AttemptEnd {
    match outcome {
        _ if stalled => AttemptEnd::Stalled,
        FrameOutcome::Answered(_) => AttemptEnd::Answered,
        FrameOutcome::ConnectionLost | FrameOutcome::NotConnected => AttemptEnd::Lost,
        // Another edge would take it: the refusal is this edge's state, not the frame's.
        FrameOutcome::Dropped(
            DropReason::Overloaded
            | DropReason::ShuttingDown
            | DropReason::Abandoned
            | DropReason::Other(_),
        ) => AttemptEnd::Refused,
        FrameOutcome::Dropped(_) | FrameOutcome::Overtaken | FrameOutcome::DeadlineMissed => {
            AttemptEnd::Final
        }
    }
}

fn describe(outcome: &FrameOutcome) -> String {
    match outcome {
        FrameOutcome::Dropped(reason) => format!("dropped ({reason})"),
        FrameOutcome::ConnectionLost => "connection lost".into(),
        FrameOutcome::NotConnected => "not connected".into(),
        other => format!("{:?}", other.kind()).to_lowercase(),
    }
}

impl Fleet {
    /// Recomputes the aggregated state and status from the members'.
    fn refresh(&self) {
        let states: Vec<ConnectionState> = self
            .member_states
            .iter()
            .map(|r| r.borrow().clone())
            .collect();
        let active = lock(&self.core).active();
        let connected = active
            .filter(|&i| states.get(i).is_some_and(ConnectionState::is_connected))
            .or_else(|| states.iter().position(ConnectionState::is_connected));
        let state = match connected {
            Some(i) => states[i].clone(),
            None if states.iter().all(|s| *s == ConnectionState::Closed) => ConnectionState::Closed,
            None => states
                .iter()
                .find(|s| {
                    matches!(
                        s,
                        ConnectionState::Connecting { .. }
                            | ConnectionState::Disconnected {
                                retry_in: Some(_),
                                ..
                            }
                    )
                })
                .or_else(|| states.first())
                .cloned()
                .unwrap_or(ConnectionState::Closed),
        };
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if let Some(i) = connected {
            self.publish_status(i);
        } else {
            self.status.send_replace(None);
        }
    }

    /// The aggregated status is the active edge's.
    fn publish_status(&self, i: EdgeIndex) {
        if let Some(r) = self.member_status.get(i) {
            let s = *r.borrow();
            self.status.send_replace(s);
        }
    }
}

/// Feeds one member's state and status changes to the fleet's core.
async fn watch_member(
    fleet: Weak<Fleet>,
    i: EdgeIndex,
    mut state: watch::Receiver<ConnectionState>,
    mut status: watch::Receiver<Option<Status>>,
) {
    loop {
        tokio::select! {
            r = state.changed() => {
                if r.is_err() { return }
                let s = state.borrow_and_update().clone();
                let Some(f) = fleet.upgrade() else { return };
                {
                    let mut core = lock(&f.core);
                    match &s {
                        ConnectionState::Connected { .. } => core.connected(i, Instant::now()),
                        ConnectionState::Rejected(_) => core.rejected(i),
                        _ => core.disconnected(i),
                    }
                }
                tracing::debug!(edge = %f.addrs[i], "edge state: {s:?}");
                f.refresh();
            }
            r = status.changed() => {
                if r.is_err() { return }
                let s = *status.borrow_and_update();
                let Some(f) = fleet.upgrade() else { return };
                if let Some(s) = s {
                    lock(&f.core).status(i, s);
                }
                if lock(&f.core).active() == Some(i) {
                    f.status.send_replace(s);
                }
            }
        }
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
        for m in &self.members {
            shut(m);
        }
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
    let (mut crypto, slot) =
        tls::client_crypto_with_slot(&cfg.trust, cfg.client_identity.as_ref(), ALPN)?;
    // Reconnects resume from the edge's session ticket and send the Hello as 0-RTT
    // early data (safe to replay; see `establish` and docs/transport.md).
    crypto.enable_early_data = true;
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
    t.congestion_controller_factory(cfg.congestion.factory());
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
    let (client_config, slot) = {
        let mut cached = lock(&inner.quic);
        match cached.as_ref() {
            Some(c) => c.clone(),
            None => {
                let built = quic_client_config(&cfg)?;
                *cached = Some(built.clone());
                built
            }
        }
    };
    // A verifier failure of an earlier attempt must not be blamed on this one.
    lock(&slot).take();
    let connecting = inner
        .endpoint
        .connect_with(client_config, cfg.server_addr, &cfg.server_name)
        .map_err(|e| ConnectError::Connection(e.to_string()))?;
    let handshake = async {
        // With a ticket from an earlier connection to this edge, the Hello goes out
        // as 0-RTT early data with the TLS ClientHello. It is safe to replay (see
        // docs/transport.md, "0-RTT"): the edge reads it only once the handshake has
        // completed, and frames never ride in 0-RTT (they need the Welcome's limits).
        let (conn, hello) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let early = hello_exchange(&conn, &cfg, &slot);
                // The edge answers only after the handshake, so waiting for the
                // verdict on the early data costs nothing.
                let (early, accepted) = tokio::join!(early, accepted);
                if accepted {
                    inner.zero_rtt_accepted.fetch_add(1, Ordering::Relaxed);
                    (conn, early)
                } else {
                    // Rejected (the edge restarted, or its ticket store forgot us): the
                    // early streams are void; say Hello again over 1-RTT.
                    tracing::debug!("edge rejected 0-RTT; sending the Hello again");
                    let again = hello_exchange(&conn, &cfg, &slot).await;
                    (conn, again)
                }
            }
            Err(connecting) => {
                tracing::debug!(edge = %cfg.server_addr, "no session ticket for 0-RTT; full handshake");
                let conn = connecting
                    .await
                    .map_err(|e| map_connection_error(&e, &slot))?;
                let hello = hello_exchange(&conn, &cfg, &slot).await;
                (conn, hello)
            }
        };
        let (send, recv, welcome) = hello?;
        Ok::<_, ConnectError>((conn, send, recv, welcome))
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

/// A first connect's result: the session's link and its control stream's receiving half.
type Established = Result<(Arc<Link>, quinn::RecvStream), ConnectError>;

/// Opens the control stream, sends the `Hello` and reads the `Welcome`.
async fn hello_exchange(
    conn: &quinn::Connection,
    cfg: &ClientConfig,
    slot: &tls::FailureSlot,
) -> Result<(quinn::SendStream, quinn::RecvStream, wire::Welcome), ConnectError> {
    let lost = |what: String| match conn.close_reason() {
        Some(e) => map_connection_error(&e, slot),
        None => ConnectError::Protocol(what),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| map_connection_error(&e, slot))?;
    let hello = ToEdge::Hello(Hello {
        version: cfg.protocol_version,
        device_id: cfg.device_id.clone(),
        token: cfg.token.clone(),
        config: cfg.stream.clone(),
        capabilities: cfg.capabilities.clone(),
    });
    wire::write_message(&mut send, &hello)
        .await
        .map_err(|e| lost(format!("sending Hello: {e}")))?;
    let reply = wire::read_message::<ToDevice, _>(&mut recv, cfg.max_control_message)
        .await
        .map_err(|e| lost(format!("reading Welcome: {e}")))?;
    match reply {
        ToDevice::Welcome(w) => Ok((send, recv, w)),
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

/// Waits until the current connection is lost; tells the runtime at once and ends the
/// frames in flight. The reason, or `None` when the client is gone or closing (or
/// there is no connection to watch).
async fn lost(weak: &Weak<Inner>) -> Option<String> {
    let link = weak.upgrade().and_then(|i| lock(&i.link).clone())?;
    let err = link.conn.closed().await;
    let inner = weak.upgrade()?;
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
        return None;
    }
    let reason = match &err {
        quinn::ConnectionError::ApplicationClosed(a) => format!(
            "closed: {} ({})",
            code::name(a.error_code.into_inner()),
            String::from_utf8_lossy(&a.reason)
        ),
        other => other.to_string(),
    };
    let addr = lock(&inner.config).server_addr;
    tracing::info!(edge = %addr, "connection to the edge lost: {reason}");
    Some(reason)
}

/// Watches the current connection; on loss, tells the runtime at once, ends the frames
/// in flight, and reconnects with backoff and jitter.
///
/// `unreachable`: the first connect failed for this reason; start reconnecting at once
/// (a fleet's edge that was down when the device started).
async fn supervise(weak: Weak<Inner>, mut unreachable: Option<String>) {
    loop {
        let mut reason = match unreachable.take() {
            Some(reason) => reason,
            None => match lost(&weak).await {
                Some(reason) => reason,
                None => return,
            },
        };
        let Some(inner) = weak.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ModelId, ModelRegistry, Server, ServerConfig, ServerIdentity, ServerTrust, TokenStore,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconnect_to_the_same_edge_resumes_with_0rtt() {
        let model = ModelId::from_weights_bytes("vit", b"weights");
        let mut registry = ModelRegistry::new();
        registry.insert("vit", model.weights_sha256, ["blocks.3"], ["f16"]);
        let mut tokens = TokenStore::new();
        tokens.insert("dev-0", "0123456789abcdef-token");
        let identity = ServerIdentity::self_signed(&["localhost"]).unwrap();
        let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity, tokens);
        let mut server = Server::bind(cfg, registry).unwrap();
        let addr = server.local_addr();
        let fp = server.fingerprint();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(s) = server.accept().await {
                held.push(s);
            }
        });
        let stream = StreamConfig {
            model,
            split: "blocks.3".into(),
            codec: CodecSpec::new("f16", vec![]),
        };
        let client = Client::connect(ClientConfig::new(
            addr,
            ServerTrust::Pinned(fp),
            "dev-0",
            "0123456789abcdef-token",
            stream,
        ))
        .await
        .unwrap();
        assert_eq!(
            client.zero_rtt_accepted(),
            0,
            "a first connect has no ticket"
        );
        // Let the session tickets arrive (sent after the handshake).
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.reconnect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.zero_rtt_accepted() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(client.zero_rtt_accepted(), 1);
        let mut state = client.state();
        let connected =
            tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.is_connected()))
                .await
                .is_ok();
        assert!(connected, "connected again: {:?}", *client.state().borrow());
        client.close().await;
    }
}
