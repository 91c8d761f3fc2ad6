//! The deterministic core of the link emulator: one direction of a link as a plain
//! state machine. A packet goes in with the current time and comes back as a verdict
//! (dropped, or due at a time); the shell asks which packets are due now. No clock, no
//! sockets, no threads: the same seed and the same arrivals give the same verdicts,
//! so the tests drive it with a fake clock.
//!
//! The model, in the order a packet meets it (as netem orders loss before the queue):
//! 1. random loss with probability `loss`;
//! 2. the bottleneck: a FIFO drained at `rate_bps`; a packet that would take the queue
//!    past `queue_bytes` is dropped (tail drop, as a router's buffer);
//! 3. propagation: `delay` plus a uniform jitter in `[-jitter, +jitter]`;
//! 4. order: packets leave in the order they came (jitter alone reorders nothing, as on
//!    a real path), except that with probability `reorder` a packet is held back a
//!    further `reorder_gap`, so the ones after it overtake it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

/// How one direction of the link is impaired.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub(crate) struct Impairment {
    /// Probability that a packet is lost, 0..=1.
    pub(crate) loss: f64,
    /// One-way propagation delay.
    pub(crate) delay: Duration,
    /// Uniform jitter around `delay` (a packet's delay never goes below zero).
    pub(crate) jitter: Duration,
    /// Probability that a packet is held back by `reorder_gap` and overtaken, 0..=1.
    pub(crate) reorder: f64,
    /// How long a reordered packet is held back.
    pub(crate) reorder_gap: Duration,
    /// Bottleneck rate in bits per second; `None` is unlimited.
    pub(crate) rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops.
    pub(crate) queue_bytes: usize,
}

impl Default for Impairment {
    /// A perfect link: no loss, no delay, no rate limit.
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(1),
            rate_bps: None,
            // 256 KiB: about 170 full-size packets, 200 ms at 10 Mbit/s; a home
            // router's order of magnitude, and more than a 100 ms path's bandwidth-delay
            // product at 10 Mbit/s, so TCP is not starved by the buffer alone.
            queue_bytes: 256 << 10,
        }
    }
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropCause {
    /// Random loss.
    Loss,
    /// The bottleneck queue was full.
    QueueFull,
}

/// What became of an offered packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It will be due at this time (on the caller's clock).
    Due(Duration),
    /// It was dropped.
    Dropped(DropCause),
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct PipeStats {
    /// Packets offered (sent into the link).
    pub(crate) packets: u64,
    /// Bytes offered: what the sender put on the wire, dropped packets included.
    pub(crate) bytes: u64,
    /// Packets lost at random.
    pub(crate) lost: u64,
    /// Packets dropped at the full queue.
    pub(crate) queue_drops: u64,
    /// Packets delivered (taken by [`Pipe::pop_due`]).
    pub(crate) delivered: u64,
}

/// SplitMix64: a tiny, well-mixed generator (Steele, Lea, Flood 2014); no dependency
/// and no global state, so a pipe's draws depend on its seed and its packets only.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Scheduled<P> {
    due: Duration,
    /// Arrival order: breaks ties so equal due times leave first-in first-out.
    order: u64,
    packet: P,
}

impl<P> PartialEq for Scheduled<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl<P> Eq for Scheduled<P> {}
impl<P> PartialOrd for Scheduled<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Scheduled<P> {
    /// Reversed: the max-heap's top is the earliest due.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// One direction of the link.
pub(crate) struct Pipe<P> {
    cfg: Impairment,
    rng: SplitMix64,
    /// When the bottleneck finishes sending what it has queued.
    busy_until: Duration,
    /// Due time of the last in-order packet: later in-order packets never leave before it.
    last_in_order: Duration,
    next_order: u64,
    queue: BinaryHeap<Scheduled<P>>,
    stats: PipeStats,
}

impl<P> Pipe<P> {
    /// A pipe with this impairment whose random draws follow `seed`.
    pub(crate) fn new(cfg: Impairment, seed: u64) -> Self {
        Self {
            cfg,
            rng: SplitMix64(seed),
            busy_until: Duration::ZERO,
            last_in_order: Duration::ZERO,
            next_order: 0,
            queue: BinaryHeap::new(),
            stats: PipeStats::default(),
        }
    }

    /// Changes the impairment for packets offered from now on; packets already
    /// scheduled keep their times.
    pub(crate) fn set_impairment(&mut self, cfg: Impairment) {
        self.cfg = cfg;
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> PipeStats {
        self.stats
    }

    /// Offers a packet of `len` bytes at time `now` (the caller's clock, never going
    /// back). Returns its fate; a packet that is not dropped is kept until due.
    pub(crate) fn offer(&mut self, now: Duration, len: usize, packet: P) -> Fate {
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        // Every packet draws the same three numbers, whatever the settings, so one
        // packet's verdict does not shift the draws of those after it.
        let loss_draw = self.rng.unit();
        let jitter_draw = self.rng.unit();
        let reorder_draw = self.rng.unit();
        if loss_draw < self.cfg.loss {
            self.stats.lost += 1;
            return Fate::Dropped(DropCause::Loss);
        }
        let leaves = match self.cfg.rate_bps.filter(|r| *r > 0) {
            None => now,
            Some(rate) => {
                let start = self.busy_until.max(now);
                let backlog = bytes_at_rate(start - now, rate);
                if backlog + len as u64 > self.cfg.queue_bytes as u64 {
                    self.stats.queue_drops += 1;
                    return Fate::Dropped(DropCause::QueueFull);
                }
                self.busy_until = start + transmit_time(len, rate);
                self.busy_until
            }
        };
        let jitter = self.cfg.jitter.as_secs_f64() * (2.0 * jitter_draw - 1.0);
        let delay = (self.cfg.delay.as_secs_f64() + jitter).max(0.0);
        let mut due = leaves + Duration::from_secs_f64(delay);
        if reorder_draw < self.cfg.reorder {
            due += self.cfg.reorder_gap;
        } else {
            due = due.max(self.last_in_order);
            self.last_in_order = due;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Scheduled { due, order, packet });
        Fate::Due(due)
    }

    /// When the earliest packet is due, if any is held.
    pub(crate) fn next_due(&self) -> Option<Duration> {
        self.queue.peek().map(|s| s.due)
    }

    /// The earliest packet due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Duration) -> Option<P> {
        if self.next_due()? > now {
            return None;
        }
        let s = self.queue.pop()?;
        self.stats.delivered += 1;
        Some(s.packet)
    }

    /// Packets held (scheduled, not yet taken).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.queue.len()
    }
}

/// Time to put `len` bytes on a wire of `rate` bits per second (`rate` > 0).
fn transmit_time(len: usize, rate: u64) -> Duration {
    Duration::from_nanos((len as u64 * 8).saturating_mul(1_000_000_000) / rate)
}

/// Bytes a wire of `rate` bits per second sends in `d`.
fn bytes_at_rate(d: Duration, rate: u64) -> u64 {
    (d.as_nanos() * rate as u128 / 8 / 1_000_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain<P>(pipe: &mut Pipe<P>, now: Duration) -> Vec<P> {
        std::iter::from_fn(|| pipe.pop_due(now)).collect()
    }

    #[test]
    fn a_perfect_link_delivers_everything_at_once_in_order() {
        let mut pipe = Pipe::new(Impairment::default(), 1);
        for i in 0..10 {
            assert_eq!(pipe.offer(MS, 1500, i), Fate::Due(MS));
        }
        assert_eq!(drain(&mut pipe, MS), (0..10).collect::<Vec<_>>());
        assert_eq!(pipe.stats().delivered, 10);
        assert_eq!(pipe.stats().bytes, 15_000);
    }

    #[test]
    fn delay_holds_a_packet_until_it_is_due() {
        let cfg = Impairment {
            delay: 10 * MS,
            ..Impairment::default()
        };
        let mut pipe = Pipe::new(cfg, 1);
        assert_eq!(pipe.offer(5 * MS, 100, "a"), Fate::Due(15 * MS));
        assert_eq!(pipe.next_due(), Some(15 * MS));
        assert_eq!(pipe.pop_due(15 * MS - Duration::from_nanos(1)), None);
        assert_eq!(pipe.pop_due(15 * MS), Some("a"));
        assert_eq!(pipe.held(), 0);
    }

    #[test]
    fn the_rate_limit_serializes_back_to_back_packets() {
        // 1250 bytes at 10 Mbit/s take exactly 1 ms on the wire.
        let cfg = Impairment {
            rate_bps: Some(10_000_000),
            delay: 20 * MS,
            ..Impairment::default()
        };
        let mut pipe = Pipe::new(cfg, 1);
        let fates: Vec<_> = (0..3)
            .map(|i| pipe.offer(Duration::ZERO, 1250, i))
            .collect();
        assert_eq!(
            fates,
            vec![Fate::Due(21 * MS), Fate::Due(22 * MS), Fate::Due(23 * MS)]
        );
        // After the queue has drained, a packet waits only for itself.
        assert_eq!(pipe.offer(100 * MS, 1250, 3), Fate::Due(121 * MS));
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        let cfg = Impairment {
            rate_bps: Some(8_000_000), // 1 byte per microsecond
            queue_bytes: 3000,
            ..Impairment::default()
        };
        let mut pipe = Pipe::new(cfg, 1);
        assert!(matches!(pipe.offer(Duration::ZERO, 1500, 0), Fate::Due(_)));
        assert!(matches!(pipe.offer(Duration::ZERO, 1500, 1), Fate::Due(_)));
        assert_eq!(
            pipe.offer(Duration::ZERO, 1500, 2),
            Fate::Dropped(DropCause::QueueFull)
        );
        // 1.5 ms later one packet has left: room again.
        assert!(matches!(
            pipe.offer(1500 * Duration::from_micros(1), 1500, 3),
            Fate::Due(_)
        ));
        assert_eq!(pipe.stats().queue_drops, 1);
        assert_eq!(pipe.stats().packets, 4);
    }

    #[test]
    fn loss_drops_about_the_asked_fraction() {
        for (loss, lo, hi) in [
            (0.0, 0, 0),
            (0.01, 800, 1200),
            (0.05, 4600, 5400),
            (1.0, 100_000, 100_000),
        ] {
            let cfg = Impairment {
                loss,
                ..Impairment::default()
            };
            let mut pipe = Pipe::new(cfg, 7);
            for i in 0..100_000u32 {
                pipe.offer(Duration::ZERO, 100, i);
            }
            let lost = pipe.stats().lost;
            assert!(
                (lo..=hi).contains(&lost),
                "loss {loss}: {lost} of 100000 lost"
            );
            assert_eq!(pipe.held() as u64 + lost, 100_000);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_verdicts_and_another_seed_does_not() {
        let cfg = Impairment {
            loss: 0.05,
            jitter: 3 * MS,
            delay: 10 * MS,
            reorder: 0.02,
            rate_bps: Some(10_000_000),
            ..Impairment::default()
        };
        let run = |seed| {
            let mut pipe = Pipe::new(cfg, seed);
            (0..2000u64)
                .map(|i| pipe.offer(Duration::from_micros(i * 700), 1200, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn jitter_spreads_delays_but_keeps_order() {
        let cfg = Impairment {
            delay: 20 * MS,
            jitter: 5 * MS,
            ..Impairment::default()
        };
        // Packets 20 ms apart: order never binds, so the delays show the jitter itself.
        let mut pipe = Pipe::new(cfg, 3);
        let mut delays = Vec::new();
        for i in 0..1000u32 {
            let now = 20 * MS * i;
            let Fate::Due(due) = pipe.offer(now, 100, i) else {
                panic!("no loss configured")
            };
            delays.push(due - now);
        }
        assert!(delays.iter().all(|d| (15 * MS..=25 * MS).contains(d)));
        assert!(delays.iter().any(|d| *d < 16 * MS), "jitter never went low");
        assert!(
            delays.iter().any(|d| *d > 24 * MS),
            "jitter never went high"
        );
        // Packets 200 us apart: jitter alone would reorder them; the link does not.
        let mut pipe = Pipe::new(cfg, 3);
        for i in 0..1000u64 {
            let now = Duration::from_micros(i * 200);
            let Fate::Due(due) = pipe.offer(now, 100, i) else {
                panic!("no loss configured")
            };
            assert!(due >= now + 15 * MS, "packet {i} too early");
        }
        assert_eq!(
            drain(&mut pipe, Duration::from_secs(1)),
            (0..1000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn reordered_packets_are_overtaken() {
        let cfg = Impairment {
            delay: 10 * MS,
            reorder: 0.1,
            reorder_gap: 2 * MS,
            ..Impairment::default()
        };
        let mut pipe = Pipe::new(cfg, 5);
        for i in 0..1000u64 {
            pipe.offer(Duration::from_micros(i * 500), 100, i);
        }
        let out = drain(&mut pipe, Duration::from_secs(1));
        assert_eq!(out.len(), 1000);
        let overtaken = out.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(
            (50..=150).contains(&overtaken),
            "{overtaken} inversions for 10% reordering"
        );
    }

    #[test]
    fn a_new_impairment_applies_to_later_packets_only() {
        let mut pipe = Pipe::new(Impairment::default(), 1);
        assert_eq!(
            pipe.offer(Duration::ZERO, 100, 0),
            Fate::Due(Duration::ZERO)
        );
        pipe.set_impairment(Impairment {
            delay: 50 * MS,
            ..Impairment::default()
        });
        assert_eq!(pipe.offer(Duration::ZERO, 100, 1), Fate::Due(50 * MS));
        assert_eq!(pipe.pop_due(Duration::ZERO), Some(0));
        assert_eq!(pipe.pop_due(Duration::ZERO), None);
    }
}
