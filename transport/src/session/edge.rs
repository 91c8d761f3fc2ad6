//! One device's session as the edge sees it.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::acceptor::Acceptor;
use crate::auth::TokenStore;
use crate::config::Limits;
use crate::session::StatusCadence;
use crate::wire::{
    Capabilities, CodecSpec, DropReason, FrameHeader, Hello, RejectReason, SessionLimits,
    StreamConfig, Welcome,
};

/// How many configuration epochs the edge remembers: frames encoded just before a
/// `Reconfigure` took effect may still arrive, and must decode with the old codec.
const EPOCHS_KEPT: usize = 4;

/// What the edge checks a `Hello` against.
pub struct HandshakePolicy<'a> {
    /// Device tokens.
    pub tokens: &'a TokenStore,
    /// The runtime's model/split/codec decision.
    pub acceptor: &'a dyn Acceptor,
    /// Edge limits.
    pub limits: &'a Limits,
    /// Oldest accepted version.
    pub min_version: u16,
    /// Newest accepted version.
    pub max_version: u16,
}

/// Validates a `Hello`: version first (so a device with an old or new protocol learns
/// that rather than a confusing token error), then the token in constant time, then
/// the runtime's [`Acceptor`]. On success returns the session and the `Welcome`.
pub fn accept_hello(
    hello: &Hello,
    policy: &HandshakePolicy<'_>,
    session_id: u64,
    now: Instant,
) -> Result<(EdgeSession, Welcome), RejectReason> {
    if hello.version > policy.max_version {
        return Err(RejectReason::VersionTooNew {
            device: hello.version,
            edge_max: policy.max_version,
        });
    }
    if hello.version < policy.min_version {
        return Err(RejectReason::VersionTooOld {
            device: hello.version,
            edge_min: policy.min_version,
        });
    }
    if !policy.tokens.verify(&hello.device_id, &hello.token.0) {
        return Err(RejectReason::BadToken);
    }
    policy
        .acceptor
        .check(&hello.device_id, &hello.config, &hello.capabilities)?;
    let limits = policy
        .limits
        .session_limits(hello.capabilities.max_in_flight);
    let session = EdgeSession {
        session_id,
        device_id: hello.device_id.clone(),
        capabilities: hello.capabilities.clone(),
        limits,
        current: (0, Arc::new(hello.config.clone())),
        epochs: VecDeque::from([(0, Arc::new(hello.config.clone()))]),
        next_epoch: 1,
        in_flight: BTreeSet::new(),
        status: StatusCadence::new(
            policy.limits.status_interval,
            policy.limits.status_min_gap,
            now,
        ),
        counters: EdgeCounters::default(),
    };
    let welcome = Welcome {
        version: hello.version,
        session_id,
        epoch: 0,
        limits,
    };
    Ok((session, welcome))
}

/// The edge's decision about an arrived frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Hand it to the runtime; answer before `deadline` (edge clock).
    Accept {
        /// The frame's deadline on the edge's clock.
        deadline: Instant,
        /// The configuration the payload was encoded with.
        config: Arc<StreamConfig>,
    },
    /// Answer at once with `Dropped(reason)`.
    Drop(DropReason),
}

/// How an accepted frame ended at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEnd {
    /// A result was sent.
    Answered,
    /// The runtime answered `Dropped`.
    Dropped,
    /// The deadline passed before the runtime answered; `Dropped` was sent.
    Expired,
    /// The device reset the frame (overtaken or past its deadline).
    CancelledByDevice,
    /// The stream or connection failed.
    Failed,
}

/// Counters of one session, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeCounters {
    /// Frames handed to the runtime.
    pub accepted: u64,
    /// Frames answered with a result.
    pub answered: u64,
    /// Frames answered `Dropped` (by the runtime or on arrival).
    pub dropped: u64,
    /// Of those, frames already past their deadline on arrival or before an answer.
    pub expired: u64,
    /// Frames the device reset.
    pub cancelled_by_device: u64,
    /// Frames whose stream failed.
    pub failed: u64,
}

/// One device's session on the edge.
#[derive(Debug)]
pub struct EdgeSession {
    session_id: u64,
    device_id: String,
    capabilities: Capabilities,
    limits: SessionLimits,
    current: (u32, Arc<StreamConfig>),
    epochs: VecDeque<(u32, Arc<StreamConfig>)>,
    next_epoch: u32,
    in_flight: BTreeSet<u64>,
    status: StatusCadence,
    counters: EdgeCounters,
}

impl EdgeSession {
    /// The session id.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The device's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The session's limits.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// The current stream configuration and its epoch.
    pub fn current(&self) -> (u32, Arc<StreamConfig>) {
        self.current.clone()
    }

    /// Counters so far.
    pub fn counters(&self) -> EdgeCounters {
        self.counters
    }

    /// Frames accepted and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a frame header's declared payload is within the session limit (checked
    /// before the payload is read, so nothing is allocated for an oversized one).
    pub fn payload_allowed(&self, header: &FrameHeader) -> bool {
        header.payload_len <= self.limits.max_frame_payload
    }

    /// Decides about a frame whose header arrived at `arrived` and whose payload is now
    /// complete (`now`). The deadline moves to the edge's clock as `arrived + (deadline
    /// - sent)`: no clock sync needed, and the one-way delay errs in the device's favour.
    pub fn on_frame(&mut self, header: &FrameHeader, arrived: Instant, now: Instant) -> Admission {
        let verdict = self.admit(header, arrived, now);
        match &verdict {
            Admission::Accept { .. } => {
                self.in_flight.insert(header.seq);
                self.counters.accepted += 1;
            }
            Admission::Drop(reason) => {
                self.counters.dropped += 1;
                if *reason == DropReason::DeadlineExpired {
                    self.counters.expired += 1;
                }
            }
        }
        verdict
    }

    fn admit(&self, header: &FrameHeader, arrived: Instant, now: Instant) -> Admission {
        if self.in_flight.contains(&header.seq) {
            return Admission::Drop(DropReason::DuplicateSeq);
        }
        let Some((_, config)) = self.epochs.iter().find(|(e, _)| *e == header.epoch) else {
            return Admission::Drop(DropReason::StaleConfig);
        };
        let budget = Duration::from_micros(header.deadline_us.saturating_sub(header.sent_us));
        let deadline = arrived + budget;
        if now >= deadline {
            return Admission::Drop(DropReason::DeadlineExpired);
        }
        // QUIC's stream limit already bounds this; the check keeps the invariant even
        // if the limits are ever configured apart.
        if self.in_flight.len() >= self.limits.max_in_flight as usize {
            return Admission::Drop(DropReason::Overloaded);
        }
        Admission::Accept {
            deadline,
            config: config.clone(),
        }
    }

    /// An accepted frame ended.
    pub fn on_frame_end(&mut self, seq: u64, end: FrameEnd) {
        if !self.in_flight.remove(&seq) {
            return;
        }
        let c = &mut self.counters;
        match end {
            FrameEnd::Answered => c.answered += 1,
            FrameEnd::Dropped => c.dropped += 1,
            FrameEnd::Expired => {
                c.dropped += 1;
                c.expired += 1;
            }
            FrameEnd::CancelledByDevice => c.cancelled_by_device += 1,
            FrameEnd::Failed => c.failed += 1,
        }
    }

    /// A `Reconfigure` request: asks the acceptor, and on success starts a new epoch
    /// (frames of the last few epochs still decode).
    pub fn on_reconfigure(
        &mut self,
        split: &str,
        codec: &CodecSpec,
        acceptor: &dyn Acceptor,
    ) -> Result<u32, RejectReason> {
        let (_, current) = self.current();
        let config = StreamConfig {
            model: current.model.clone(),
            split: split.to_string(),
            codec: codec.clone(),
        };
        acceptor.check(&self.device_id, &config, &self.capabilities)?;
        let epoch = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1);
        let config = Arc::new(config);
        self.current = (epoch, config.clone());
        self.epochs.push_back((epoch, config));
        while self.epochs.len() > EPOCHS_KEPT {
            self.epochs.pop_front();
        }
        Ok(epoch)
    }

    /// The runtime pushed a new status.
    pub fn status_pushed(&mut self) {
        self.status.pushed();
    }

    /// Whether to send a status now (counts it as sent when true).
    pub fn poll_status(&mut self, now: Instant) -> bool {
        self.status.poll(now)
    }

    /// When the next status is due.
    pub fn next_status_due(&self) -> Instant {
        self.status.next_due()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acceptor::ModelRegistry;
    use crate::wire::{ModelId, Secret, PROTOCOL_VERSION};

    const MS: Duration = Duration::from_millis(1);

    struct Fixture {
        tokens: TokenStore,
        registry: ModelRegistry,
        limits: Limits,
        model: ModelId,
    }

    fn fixture() -> Fixture {
        let mut tokens = TokenStore::new();
        tokens.insert("cam-1", "token-token-token-1");
        let model = ModelId::from_weights_bytes("vit_tiny", b"weights");
        let mut registry = ModelRegistry::new();
        registry.insert(
            "vit_tiny",
            model.weights_sha256,
            ["blocks.3", "blocks.6"],
            ["u8", "f16"],
        );
        Fixture {
            tokens,
            registry,
            limits: Limits {
                max_in_flight: 2,
                ..Limits::default()
            },
            model,
        }
    }

    fn hello(f: &Fixture) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            device_id: "cam-1".into(),
            token: Secret("token-token-token-1".into()),
            config: StreamConfig {
                model: f.model.clone(),
                split: "blocks.3".into(),
                codec: CodecSpec::new("u8", vec![]),
            },
            capabilities: Capabilities::default(),
        }
    }

    fn accept(
        f: &Fixture,
        h: &Hello,
        now: Instant,
    ) -> Result<(EdgeSession, Welcome), RejectReason> {
        let policy = HandshakePolicy {
            tokens: &f.tokens,
            acceptor: &f.registry,
            limits: &f.limits,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        };
        accept_hello(h, &policy, 7, now)
    }

    fn header(seq: u64, epoch: u32, budget_ms: u64) -> FrameHeader {
        FrameHeader {
            seq,
            epoch,
            capture_us: 1_000,
            sent_us: 2_000,
            deadline_us: 2_000 + budget_ms * 1000,
            payload_len: 10,
        }
    }

    #[test]
    fn good_hello_is_welcomed_with_the_edge_limits() {
        let f = fixture();
        let (s, w) = accept(&f, &hello(&f), Instant::now()).unwrap();
        assert_eq!(w.session_id, 7);
        assert_eq!(w.limits.max_in_flight, 2);
        assert_eq!(s.device_id(), "cam-1");
    }

    #[test]
    fn device_asking_fewer_frames_in_flight_gets_fewer() {
        let f = fixture();
        let mut h = hello(&f);
        h.capabilities.max_in_flight = 1;
        let (_, w) = accept(&f, &h, Instant::now()).unwrap();
        assert_eq!(w.limits.max_in_flight, 1);
    }

    #[test]
    fn hello_is_rejected_for_version_then_token_then_model() {
        let f = fixture();
        let now = Instant::now();
        let mut h = hello(&f);
        h.version = 9;
        h.token = Secret("wrong-wrong-wrong-wrong".into());
        assert_eq!(
            accept(&f, &h, now).unwrap_err(),
            RejectReason::VersionTooNew {
                device: 9,
                edge_max: PROTOCOL_VERSION
            }
        );
        h.version = 0;
        assert_eq!(
            accept(&f, &h, now).unwrap_err(),
            RejectReason::VersionTooOld {
                device: 0,
                edge_min: PROTOCOL_VERSION
            }
        );
        h.version = PROTOCOL_VERSION;
        h.config.model.arch = "nope".into();
        assert_eq!(accept(&f, &h, now).unwrap_err(), RejectReason::BadToken);
        h.token = hello(&f).token;
        assert!(matches!(
            accept(&f, &h, now).unwrap_err(),
            RejectReason::UnknownModel { .. }
        ));
        h.device_id = "cam-2".into();
        assert_eq!(accept(&f, &h, now).unwrap_err(), RejectReason::BadToken);
    }

    #[test]
    fn frame_deadline_is_measured_from_arrival_on_the_edge_clock() {
        let f = fixture();
        let t0 = Instant::now();
        let (mut s, _) = accept(&f, &hello(&f), t0).unwrap();
        match s.on_frame(&header(1, 0, 30), t0, t0 + 5 * MS) {
            Admission::Accept { deadline, config } => {
                assert_eq!(deadline, t0 + 30 * MS);
                assert_eq!(config.split, "blocks.3");
            }
            other => panic!("{other:?}"),
        }
        // Payload took longer than the budget to arrive: dropped, counted as expired.
        assert_eq!(
            s.on_frame(&header(2, 0, 30), t0, t0 + 30 * MS),
            Admission::Drop(DropReason::DeadlineExpired)
        );
        // A deadline before the send time is already past.
        let mut h = header(3, 0, 0);
        h.deadline_us = 1;
        assert_eq!(
            s.on_frame(&h, t0, t0),
            Admission::Drop(DropReason::DeadlineExpired)
        );
        assert_eq!(s.counters().expired, 2);
    }

    #[test]
    fn duplicates_stale_epochs_and_excess_frames_are_dropped() {
        let f = fixture();
        let t0 = Instant::now();
        let (mut s, _) = accept(&f, &hello(&f), t0).unwrap();
        assert!(matches!(
            s.on_frame(&header(1, 0, 30), t0, t0),
            Admission::Accept { .. }
        ));
        assert_eq!(
            s.on_frame(&header(1, 0, 30), t0, t0),
            Admission::Drop(DropReason::DuplicateSeq)
        );
        assert_eq!(
            s.on_frame(&header(2, 5, 30), t0, t0),
            Admission::Drop(DropReason::StaleConfig)
        );
        assert!(matches!(
            s.on_frame(&header(3, 0, 30), t0, t0),
            Admission::Accept { .. }
        ));
        assert_eq!(
            s.on_frame(&header(4, 0, 30), t0, t0),
            Admission::Drop(DropReason::Overloaded)
        );
        s.on_frame_end(1, FrameEnd::Answered);
        assert!(matches!(
            s.on_frame(&header(4, 0, 30), t0, t0),
            Admission::Accept { .. }
        ));
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.counters().answered, 1);
    }

    #[test]
    fn reconfigure_starts_a_new_epoch_and_old_frames_still_decode() {
        let f = fixture();
        let t0 = Instant::now();
        let (mut s, _) = accept(&f, &hello(&f), t0).unwrap();
        let e1 = s
            .on_reconfigure("blocks.6", &CodecSpec::new("f16", vec![]), &f.registry)
            .unwrap();
        assert_eq!(e1, 1);
        assert_eq!(s.current().1.split, "blocks.6");
        match s.on_frame(&header(1, 0, 30), t0, t0) {
            Admission::Accept { config, .. } => assert_eq!(config.split, "blocks.3"),
            other => panic!("{other:?}"),
        }
        let err = s
            .on_reconfigure("blocks.99", &CodecSpec::new("f16", vec![]), &f.registry)
            .unwrap_err();
        assert!(matches!(err, RejectReason::UnsupportedSplit { .. }));
        assert_eq!(s.current().0, 1, "a refused reconfigure changes nothing");
        for _ in 0..EPOCHS_KEPT {
            s.on_reconfigure("blocks.3", &CodecSpec::new("u8", vec![]), &f.registry)
                .unwrap();
        }
        assert_eq!(
            s.on_frame(&header(2, 0, 30), t0, t0),
            Admission::Drop(DropReason::StaleConfig)
        );
    }
}
