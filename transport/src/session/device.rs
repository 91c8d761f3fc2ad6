//! One session as the device sees it: sequence numbers, the in-flight bound, latest
//! frame wins, and the one outcome every frame ends with.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::wire::{FrameHeader, SessionLimits};

/// How a frame ended, without its result bytes (those stay in the shell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// A result arrived.
    Answered,
    /// The edge answered `Dropped`.
    Dropped,
    /// A newer frame took its place (latest frame wins); compute locally if needed.
    Overtaken,
    /// The deadline passed before an answer.
    DeadlineMissed,
    /// The connection failed while the frame was in flight.
    ConnectionLost,
    /// There was no connection when it was sent.
    NotConnected,
}

/// Per-outcome frame counts of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounters {
    /// Frames put on the wire.
    pub sent: u64,
    /// Frames answered with a result.
    pub answered: u64,
    /// Frames answered `Dropped`.
    pub dropped: u64,
    /// Frames overtaken by newer ones.
    pub overtaken: u64,
    /// Frames that missed their deadline.
    pub deadline_missed: u64,
    /// Frames lost with the connection.
    pub connection_lost: u64,
    /// Frames offered while disconnected.
    pub not_connected: u64,
}

impl FrameCounters {
    /// Counts one frame that ended with `kind`.
    pub fn count(&mut self, kind: OutcomeKind) {
        let c = match kind {
            OutcomeKind::Answered => &mut self.answered,
            OutcomeKind::Dropped => &mut self.dropped,
            OutcomeKind::Overtaken => &mut self.overtaken,
            OutcomeKind::DeadlineMissed => &mut self.deadline_missed,
            OutcomeKind::ConnectionLost => &mut self.connection_lost,
            OutcomeKind::NotConnected => &mut self.not_connected,
        };
        *c += 1;
    }

    /// Frames that have ended, whatever the outcome.
    pub fn ended(&self) -> u64 {
        self.answered
            + self.dropped
            + self.overtaken
            + self.deadline_missed
            + self.connection_lost
            + self.not_connected
    }
}

/// A frame the device may now put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStart {
    /// The header to send.
    pub header: FrameHeader,
    /// QUIC stream priority: newer frames higher, so they are sent first.
    pub priority: i32,
    /// An older frame this one overtook: reset its stream now.
    pub overtaken: Option<u64>,
}

/// The device's side of a session.
#[derive(Debug)]
pub struct DeviceSession {
    origin: Instant,
    max_in_flight: usize,
    epoch: u32,
    next_seq: u64,
    in_flight: VecDeque<u64>,
    /// Frames ended by the session itself (overtaken, connection lost) whose shells have
    /// not reported yet; their report is overridden by this outcome.
    ended_early: HashMap<u64, OutcomeKind>,
    counters: FrameCounters,
}

impl DeviceSession {
    /// A session with the edge's limits; `origin` is the zero of the wire timestamps.
    pub fn new(limits: &SessionLimits, epoch: u32, origin: Instant) -> Self {
        Self {
            origin,
            max_in_flight: limits.max_in_flight.max(1) as usize,
            epoch,
            next_seq: 1,
            in_flight: VecDeque::new(),
            ended_early: HashMap::new(),
            counters: FrameCounters::default(),
        }
    }

    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// Frames in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Counters so far.
    pub fn counters(&self) -> FrameCounters {
        self.counters
    }

    /// The configuration epoch new frames carry.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// A `Reconfigure` was accepted: frames from now on carry `epoch`.
    pub fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }

    /// Starts a frame. At the in-flight bound the oldest frame is overtaken (latest
    /// frame wins): a stale result is worth less than a fresh one, and the device can
    /// still compute the old one locally if it must.
    pub fn begin_frame(
        &mut self,
        captured_at: Instant,
        deadline: Instant,
        payload_len: u32,
        now: Instant,
    ) -> FrameStart {
        let overtaken = if self.in_flight.len() >= self.max_in_flight {
            let old = self.in_flight.pop_front();
            if let Some(old) = old {
                self.ended_early.insert(old, OutcomeKind::Overtaken);
                self.counters.count(OutcomeKind::Overtaken);
            }
            old
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push_back(seq);
        self.counters.sent += 1;
        FrameStart {
            header: FrameHeader {
                seq,
                epoch: self.epoch,
                capture_us: self.micros(captured_at),
                sent_us: self.micros(now),
                deadline_us: self.micros(deadline),
                payload_len,
            },
            // Wraps after 2^31 frames (24 days at 1000 frames/s); at the wrap one
            // window of in-flight frames is briefly ordered wrong, nothing worse.
            priority: (seq & 0x7fff_ffff) as i32,
            overtaken,
        }
    }

    /// A frame's shell reports how it ended; returns the outcome that stands (the
    /// session's own verdict wins for frames it already ended, e.g. overtaken).
    pub fn end_frame(&mut self, seq: u64, reported: OutcomeKind) -> OutcomeKind {
        if let Some(kind) = self.ended_early.remove(&seq) {
            return kind;
        }
        if let Some(pos) = self.in_flight.iter().position(|s| *s == seq) {
            self.in_flight.remove(pos);
            self.counters.count(reported);
        }
        reported
    }

    /// The connection failed: every frame in flight ends as `ConnectionLost`.
    pub fn connection_lost(&mut self) -> Vec<u64> {
        let lost: Vec<u64> = self.in_flight.drain(..).collect();
        for seq in &lost {
            self.ended_early.insert(*seq, OutcomeKind::ConnectionLost);
            self.counters.count(OutcomeKind::ConnectionLost);
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn limits(max_in_flight: u32) -> SessionLimits {
        SessionLimits {
            max_in_flight,
            max_frame_payload: 1 << 20,
            max_result_payload: 1 << 20,
            max_control_message: 1 << 16,
            status_interval_ms: 500,
        }
    }

    #[test]
    fn sequence_numbers_and_priorities_increase_and_times_are_relative() {
        let t0 = Instant::now();
        let mut s = DeviceSession::new(&limits(4), 0, t0);
        let a = s.begin_frame(t0, t0 + 30 * MS, 10, t0 + MS);
        let b = s.begin_frame(t0 + MS, t0 + 31 * MS, 10, t0 + 2 * MS);
        assert_eq!((a.header.seq, b.header.seq), (1, 2));
        assert!(b.priority > a.priority);
        assert_eq!(a.header.capture_us, 0);
        assert_eq!(a.header.sent_us, 1_000);
        assert_eq!(a.header.deadline_us, 30_000);
    }

    #[test]
    fn at_the_bound_the_oldest_frame_is_overtaken_and_counted_once() {
        let t0 = Instant::now();
        let mut s = DeviceSession::new(&limits(2), 0, t0);
        let d = t0 + 30 * MS;
        assert_eq!(s.begin_frame(t0, d, 1, t0).overtaken, None);
        assert_eq!(s.begin_frame(t0, d, 1, t0).overtaken, None);
        let third = s.begin_frame(t0, d, 1, t0);
        assert_eq!(third.overtaken, Some(1));
        assert_eq!(s.in_flight(), 2);
        // The overtaken frame's answer raced in: the session's verdict stands.
        assert_eq!(
            s.end_frame(1, OutcomeKind::Answered),
            OutcomeKind::Overtaken
        );
        assert_eq!(s.end_frame(2, OutcomeKind::Answered), OutcomeKind::Answered);
        let c = s.counters();
        assert_eq!((c.sent, c.overtaken, c.answered), (3, 1, 1));
    }

    #[test]
    fn connection_loss_ends_every_frame_in_flight() {
        let t0 = Instant::now();
        let mut s = DeviceSession::new(&limits(8), 0, t0);
        for _ in 0..3 {
            s.begin_frame(t0, t0 + 30 * MS, 1, t0);
        }
        assert_eq!(s.end_frame(2, OutcomeKind::Dropped), OutcomeKind::Dropped);
        assert_eq!(s.connection_lost(), vec![1, 3]);
        assert_eq!(
            s.end_frame(3, OutcomeKind::DeadlineMissed),
            OutcomeKind::ConnectionLost
        );
        let c = s.counters();
        assert_eq!(c.ended(), 3);
        assert_eq!(c.connection_lost, 2);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn new_frames_carry_the_reconfigured_epoch() {
        let t0 = Instant::now();
        let mut s = DeviceSession::new(&limits(8), 0, t0);
        assert_eq!(s.begin_frame(t0, t0, 1, t0).header.epoch, 0);
        s.set_epoch(3);
        assert_eq!(s.begin_frame(t0, t0, 1, t0).header.epoch, 3);
    }
}
