//! Several edges for one device: which edge gets the next frame, when to fail over,
//! and when to come back.
//!
//! This module is the deterministic core, in the style of [`crate::session`]: a
//! [`FleetCore`] is fed events (an edge connected, was lost, refused a frame, stalled,
//! sent a `Status`) and the time, and answers [`FleetCore::pick`]; it owns no socket,
//! task or clock, so every rule is tested with a fake clock. The async shell is
//! [`crate::Client`], which holds one connection per edge (each with its own reconnect
//! loop and backoff: that is the periodic reprobe of a dead edge), feeds this core and
//! re-sends a frame to the next edge when its edge fails it.
//!
//! It lives in `transport` rather than in the device runtime (`head`) because it
//! reasons only about links (connections, the edges' `Status`, round-trip times, drop
//! reasons) and never about models, and because the routing must sit under
//! [`crate::Client::send_frame`] so that every caller of the client (the fixed modes,
//! the auto policy, the benches) gets fail-over with no change; `head` only learns
//! which edge answered ([`crate::FrameReport::edge`]).
//!
//! The rules:
//! - **Cost** of an edge: its measured round trip + its reported queue delay + its load
//!   times [`FleetTuning::load_weight`] + a penalty when it advises local compute or is
//!   past its power budget + [`FleetTuning::rank_bias`] per place in the list (the
//!   order given is a preference among equals).
//! - **Usable**: connected, not [`Health::Suspect`] (a frame stalled there and no
//!   `Status` arrived since), not cooling down after refusing a frame, not draining, and
//!   not refused for good (the edge rejected the session).
//! - **Fail-over**: when the active edge is not usable (or a frame was already tried
//!   there), the cheapest usable edge takes over at once.
//! - **Coming back**: a cheaper edge takes over only when it is cheaper by
//!   [`FleetTuning::switch_margin`], has been connected for [`FleetTuning::settle`] and
//!   the active one has served for [`FleetTuning::min_dwell`]: hysteresis, so two
//!   similar edges do not take turns.
//! - **Every frame ends once**: frames get a fleet-wide id; [`FleetCore::resolve`]
//!   accepts the first answer for an id and refuses any later one, so a frame re-sent
//!   to another edge can never be answered twice.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{Advice, Status};

/// An edge's index in the fleet (its place in the list the device was given).
pub type EdgeIndex = usize;

/// How the fleet weighs and switches edges. The defaults are for edges on a LAN or a
/// metro link, where round trips are a few ms.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetTuning {
    /// Cost added per place in the list. Default 5 ms: among edges within a few ms of
    /// each other the one listed first wins, so traffic returns to it when it is back;
    /// a real difference in delay (a busy edge, a far one) still outweighs the order.
    pub rank_bias: Duration,
    /// What a fully busy edge (`load` 1.0) costs on top of its queue delay. Default
    /// 20 ms: load predicts queueing the next moment, which `queue_delay` only shows
    /// once it has happened.
    pub load_weight: Duration,
    /// Cost of an edge that advises local compute or is over its power budget.
    /// Default 50 ms: it is used only when the others are much worse.
    pub busy_penalty: Duration,
    /// How much cheaper another edge must be to take over from a working one. Default
    /// 2 ms: measurement noise on a LAN stays below it.
    pub switch_margin: Duration,
    /// Least time on one edge before a voluntary switch. Default 1 s.
    pub min_dwell: Duration,
    /// How long a (re)connected edge must stay up before traffic moves to it
    /// voluntarily. Default 500 ms: an edge that crashes while starting is not chosen.
    pub settle: Duration,
    /// How long an edge that refused a frame (overloaded, shutting down) is passed over.
    /// Default 1 s, two status intervals.
    pub refuse_cooldown: Duration,
    /// Shortest time a frame waits for an answer before it is re-sent elsewhere (when
    /// another edge is usable). Default 200 ms.
    pub stall_floor: Duration,
    /// A frame waits at most this many times the edge's slowest recent answer before it
    /// is re-sent elsewhere. Default 4.
    pub stall_factor: u32,
}

impl Default for FleetTuning {
    fn default() -> Self {
        Self {
            rank_bias: Duration::from_millis(5),
            load_weight: Duration::from_millis(20),
            busy_penalty: Duration::from_millis(50),
            switch_margin: Duration::from_millis(2),
            min_dwell: Duration::from_secs(1),
            settle: Duration::from_millis(500),
            refuse_cooldown: Duration::from_secs(1),
            stall_floor: Duration::from_millis(200),
            stall_factor: 4,
        }
    }
}

/// The edges of a fleet and how to choose among them.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetConfig {
    /// The edges, most preferred first. Duplicates are ignored.
    pub edges: Vec<SocketAddr>,
    /// Weights and timers.
    pub tuning: FleetTuning,
}

impl FleetConfig {
    /// A fleet of `edges` with default tuning; duplicate addresses (e.g. a DNS name and
    /// an address for the same edge) are dropped, keeping the first.
    pub fn new(edges: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut seen = HashSet::new();
        Self {
            edges: edges.into_iter().filter(|a| seen.insert(*a)).collect(),
            tuning: FleetTuning::default(),
        }
    }
}

/// An edge's health as the fleet sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Connected and usable.
    Up,
    /// Not connected (its reconnect loop is probing it).
    Down,
    /// Connected, but a frame stalled there and no `Status` has come since.
    Suspect,
    /// Connected, but it refused a frame recently.
    Cooling,
    /// Connected, but it announced it is draining.
    Draining,
    /// It rejected the session (token, model, version): never used again.
    Gone,
}

/// How one attempt to send a frame to an edge ended, as far as the fleet cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The edge answered with a result.
    Answered,
    /// A final answer without a result that another edge would give too (undecodable
    /// payload, result too large, stale configuration, deadline passed).
    Final,
    /// The edge refused the frame (overloaded, shutting down, abandoned it): try another.
    Refused,
    /// No answer within the stall timeout; the attempt was abandoned (stream reset, so
    /// no answer can follow).
    Stalled,
    /// The connection failed, or there was none.
    Lost,
}

impl AttemptEnd {
    /// Whether the frame may be re-sent to another edge after this.
    pub fn retry_elsewhere(self) -> bool {
        matches!(self, Self::Refused | Self::Stalled | Self::Lost)
    }
}

/// Why the active edge changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchReason {
    /// The active edge stopped being usable (or failed the frame being sent).
    Failover,
    /// A cheaper edge is available (e.g. a preferred one came back).
    Better,
}

/// The edge for the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The edge.
    pub edge: EdgeIndex,
    /// When this pick changed the active edge: from which one, and why.
    pub switched: Option<(EdgeIndex, SwitchReason)>,
    /// Whether another usable edge remains if this one fails (worth abandoning a
    /// stalled attempt for).
    pub alternative: bool,
}

/// A frame's id across the fleet (unlike sequence numbers, which are per session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FleetFrame(pub u64);

#[derive(Clone, Debug, Default)]
struct EdgeView {
    up_since: Option<Instant>,
    gone: bool,
    suspect: bool,
    cooling_until: Option<Instant>,
    status: Option<Status>,
    rtt: Option<Duration>,
    /// Slowest recent answer, decaying: the basis of the stall timeout.
    slowest: Option<Duration>,
}

/// Counts of the fleet's decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCounters {
    /// Switches because the active edge failed.
    pub failovers: u64,
    /// Switches to a cheaper edge.
    pub comebacks: u64,
    /// Attempts re-sent to another edge after a failed one.
    pub resent: u64,
    /// Answers refused because their frame was already resolved.
    pub duplicates: u64,
}

/// The fleet's deterministic core (see the module docs).
#[derive(Debug)]
pub struct FleetCore {
    tuning: FleetTuning,
    edges: Vec<EdgeView>,
    active: Option<EdgeIndex>,
    active_since: Option<Instant>,
    next_frame: u64,
    open: HashSet<u64>,
    counters: FleetCounters,
}

impl FleetCore {
    /// A fleet of `edges` edges, none connected yet.
    pub fn new(edges: usize, tuning: FleetTuning) -> Self {
        Self {
            tuning,
            edges: vec![EdgeView::default(); edges],
            active: None,
            active_since: None,
            next_frame: 0,
            open: HashSet::new(),
            counters: FleetCounters::default(),
        }
    }

    /// Number of edges.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether the fleet has no edges.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The edge new frames go to, if one was chosen.
    pub fn active(&self) -> Option<EdgeIndex> {
        self.active
    }

    /// Decision counts so far.
    pub fn counters(&self) -> FleetCounters {
        self.counters
    }

    /// The edge's health now.
    pub fn health(&self, e: EdgeIndex, now: Instant) -> Health {
        let Some(v) = self.edges.get(e) else {
            return Health::Gone;
        };
        if v.gone {
            Health::Gone
        } else if v.up_since.is_none() {
            Health::Down
        } else if v.suspect {
            Health::Suspect
        } else if v.status.is_some_and(|s| s.advice == Advice::Draining) {
            Health::Draining
        } else if v.cooling_until.is_some_and(|t| now < t) {
            Health::Cooling
        } else {
            Health::Up
        }
    }

    fn usable(&self, e: EdgeIndex, now: Instant) -> bool {
        self.health(e, now) == Health::Up
    }

    /// The edge's cost now (see the module docs); `None` when it is not usable.
    pub fn cost(&self, e: EdgeIndex, now: Instant) -> Option<Duration> {
        if !self.usable(e, now) {
            return None;
        }
        let v = &self.edges[e];
        let t = &self.tuning;
        let mut cost = v.rtt.unwrap_or_default();
        cost += t
            .rank_bias
            .saturating_mul(u32::try_from(e).unwrap_or(u32::MAX));
        if let Some(s) = v.status {
            cost += Duration::from_micros(s.queue_delay_us.min(60_000_000));
            // A NaN or out-of-range load from a broken edge counts as fully busy.
            let load = if s.load.is_finite() {
                s.load.clamp(0.0, 1.0)
            } else {
                1.0
            };
            cost += t.load_weight.mul_f32(load);
            if s.advice == Advice::PreferLocal
                || s.power_headroom.is_nan()
                || s.power_headroom < 0.0
            {
                cost += t.busy_penalty;
            }
        }
        Some(cost)
    }

    /// The edge connected (a session is open) at `now`.
    pub fn connected(&mut self, e: EdgeIndex, now: Instant) {
        if let Some(v) = self.edges.get_mut(e) {
            v.up_since = Some(now);
            v.suspect = false;
            v.cooling_until = None;
            v.status = None;
        }
    }

    /// The edge's connection is gone (its reconnect loop takes over).
    pub fn disconnected(&mut self, e: EdgeIndex) {
        if let Some(v) = self.edges.get_mut(e) {
            v.up_since = None;
            v.status = None;
        }
    }

    /// The edge rejected the session: it is never used again.
    pub fn rejected(&mut self, e: EdgeIndex) {
        if let Some(v) = self.edges.get_mut(e) {
            v.gone = true;
            v.up_since = None;
        }
    }

    /// A `Status` arrived from the edge: it is alive (a suspicion ends) and reports
    /// its load.
    pub fn status(&mut self, e: EdgeIndex, status: Status) {
        if let Some(v) = self.edges.get_mut(e) {
            v.status = Some(status);
            v.suspect = false;
        }
    }

    /// The connection's current round-trip estimate.
    pub fn rtt(&mut self, e: EdgeIndex, rtt: Duration) {
        if let Some(v) = self.edges.get_mut(e) {
            v.rtt = Some(rtt);
        }
    }

    /// How long an attempt on this edge may go unanswered before it is abandoned for
    /// another edge: `stall_factor` times its slowest recent answer, at least
    /// `stall_floor`.
    pub fn stall_timeout(&self, e: EdgeIndex) -> Duration {
        let slowest = self
            .edges
            .get(e)
            .and_then(|v| v.slowest)
            .unwrap_or_default();
        slowest
            .saturating_mul(self.tuning.stall_factor)
            .max(self.tuning.stall_floor)
    }

    /// An attempt on the edge ended after `elapsed`.
    pub fn attempt_ended(
        &mut self,
        e: EdgeIndex,
        end: AttemptEnd,
        elapsed: Duration,
        now: Instant,
    ) {
        let cooldown = self.tuning.refuse_cooldown;
        let Some(v) = self.edges.get_mut(e) else {
            return;
        };
        match end {
            AttemptEnd::Answered | AttemptEnd::Final => {
                // Decays by 1/8 per answer, so one slow outlier does not hold the
                // timeout up for long, but jumps at once to a slower answer.
                let decayed = v.slowest.map_or(elapsed, |s| s - s / 8);
                v.slowest = Some(decayed.max(elapsed));
            }
            AttemptEnd::Refused => v.cooling_until = Some(now + cooldown),
            AttemptEnd::Stalled => v.suspect = true,
            // The connection watcher reports the loss too; acting on it here moves the
            // very next frame without waiting for that.
            AttemptEnd::Lost => {
                v.up_since = None;
                v.status = None;
            }
        }
    }

    /// A new frame: its fleet-wide id.
    pub fn begin_frame(&mut self) -> FleetFrame {
        let id = self.next_frame;
        self.next_frame += 1;
        self.open.insert(id);
        FleetFrame(id)
    }

    /// The frame's outcome is in. `true` for its first outcome; `false` (and counted as a
    /// duplicate) for any later one, which the caller must discard.
    pub fn resolve(&mut self, frame: FleetFrame) -> bool {
        if self.open.remove(&frame.0) {
            true
        } else {
            self.counters.duplicates += 1;
            false
        }
    }

    /// Frames begun and not yet resolved.
    pub fn unresolved(&self) -> usize {
        self.open.len()
    }

    /// The edge for the next attempt of a frame already tried (and failed) on `tried`,
    /// or `None` when no usable edge is left (the frame runs locally).
    pub fn pick(&mut self, now: Instant, tried: &[EdgeIndex]) -> Option<Pick> {
        let candidates: Vec<(EdgeIndex, Duration)> = (0..self.edges.len())
            .filter(|e| !tried.contains(e))
            .filter_map(|e| self.cost(e, now).map(|c| (e, c)))
            .collect();
        // Cheapest first; equal costs keep the list order.
        let &(best, best_cost) = candidates.iter().min_by_key(|(e, c)| (*c, *e))?;
        if !tried.is_empty() {
            self.counters.resent += 1;
        }
        let alternative = candidates.len() > 1;
        let keep = |edge| Pick {
            edge,
            switched: None,
            alternative,
        };
        let current = self
            .active
            .and_then(|a| candidates.iter().find(|(e, _)| *e == a).copied());
        let choice = match (self.active, current) {
            (None, _) => {
                self.active = Some(best);
                self.active_since = Some(now);
                return Some(keep(best));
            }
            (Some(a), Some((_, cost))) => {
                let v = &self.edges[best];
                let settled = v
                    .up_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.tuning.settle);
                let dwelt = self
                    .active_since
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.tuning.min_dwell);
                if best != a && best_cost + self.tuning.switch_margin < cost && settled && dwelt {
                    self.counters.comebacks += 1;
                    Pick {
                        edge: best,
                        switched: Some((a, SwitchReason::Better)),
                        alternative,
                    }
                } else {
                    return Some(keep(a));
                }
            }
            (Some(a), None) => {
                self.counters.failovers += 1;
                Pick {
                    edge: best,
                    switched: Some((a, SwitchReason::Failover)),
                    alternative,
                }
            }
        };
        self.active = Some(choice.edge);
        self.active_since = Some(now);
        Some(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn status(load: f32, queue_ms: u64) -> Status {
        Status {
            load,
            queue_delay_us: queue_ms * 1000,
            power_headroom: 0.5,
            advice: Advice::Normal,
        }
    }

    /// Three edges, all connected at `t0` and reporting idle, 1 ms away.
    fn three(t0: Instant) -> FleetCore {
        let mut f = FleetCore::new(3, FleetTuning::default());
        for e in 0..3 {
            f.connected(e, t0);
            f.rtt(e, MS);
            f.status(e, status(0.0, 0));
        }
        f
    }

    #[test]
    fn among_equal_edges_the_first_listed_is_chosen_and_kept() {
        let t0 = Instant::now();
        let mut f = three(t0);
        let p = f.pick(t0, &[]).unwrap();
        assert_eq!((p.edge, p.switched, p.alternative), (0, None, true));
        assert_eq!(f.pick(t0 + 10 * MS, &[]).unwrap().edge, 0);
    }

    #[test]
    fn a_loaded_edge_loses_to_an_idle_one_and_queue_delay_counts() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.status(0, status(0.9, 0));
        f.status(1, status(0.1, 30));
        // Edge 0: 1 + 18 ms, edge 1: 1 + 5 + 2 + 30 ms, edge 2: 1 + 10 ms.
        assert_eq!(f.pick(t0, &[]).unwrap().edge, 2);
        // A broken edge that reports a NaN load counts as fully busy, not idle.
        f.status(2, status(f32::NAN, 0));
        assert_eq!(f.cost(2, t0), Some(MS + 10 * MS + 20 * MS));
    }

    #[test]
    fn a_lost_edge_fails_over_at_once_to_the_next_cheapest() {
        let t0 = Instant::now();
        let mut f = three(t0);
        assert_eq!(f.pick(t0, &[]).unwrap().edge, 0);
        f.attempt_ended(0, AttemptEnd::Lost, 5 * MS, t0 + MS);
        assert_eq!(f.health(0, t0 + MS), Health::Down);
        let p = f.pick(t0 + MS, &[0]).unwrap();
        assert_eq!(p.edge, 1);
        assert_eq!(p.switched, Some((0, SwitchReason::Failover)));
        assert_eq!(f.counters().failovers, 1);
        assert_eq!(f.counters().resent, 1);
        // No min-dwell for a fail-over, and the next frames stay on edge 1.
        assert_eq!(f.pick(t0 + 2 * MS, &[]).unwrap().switched, None);
        assert_eq!(f.active(), Some(1));
    }

    #[test]
    fn a_returned_preferred_edge_takes_traffic_back_only_once_settled_and_after_dwell() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.pick(t0, &[]);
        f.disconnected(0);
        assert_eq!(f.pick(t0 + MS, &[]).unwrap().edge, 1);
        // Edge 0 reconnects at 2 s: not before it has been up 500 ms.
        let back = t0 + 2000 * MS;
        f.connected(0, back);
        f.rtt(0, MS);
        assert_eq!(f.pick(back + 100 * MS, &[]).unwrap().edge, 1);
        let p = f.pick(back + 600 * MS, &[]).unwrap();
        assert_eq!(p.edge, 0);
        assert_eq!(p.switched, Some((1, SwitchReason::Better)));
        assert_eq!(f.counters().comebacks, 1);
    }

    #[test]
    fn min_dwell_and_margin_stop_flapping_between_similar_edges() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.pick(t0, &[]);
        // Edge 1 becomes cheaper than edge 0 by less than the margin: stay.
        f.status(0, status(0.35, 0)); // 1 + 7 ms
        f.status(1, status(0.0, 0)); // 1 + 5 ms
        assert_eq!(f.pick(t0 + 5000 * MS, &[]).unwrap().edge, 0);
        // Now by more than the margin: switch, since edge 0 has served long enough.
        f.status(0, status(0.5, 0)); // 1 + 10 ms
        assert_eq!(f.pick(t0 + 5001 * MS, &[]).unwrap().edge, 1);
        // Edge 0 recovers at once, but the switch back waits for the dwell.
        f.status(0, status(0.0, 0));
        f.status(1, status(0.5, 0));
        assert_eq!(f.pick(t0 + 5500 * MS, &[]).unwrap().edge, 1);
        assert_eq!(f.pick(t0 + 6002 * MS, &[]).unwrap().edge, 0);
    }

    #[test]
    fn a_stalled_edge_is_suspect_until_its_next_status() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.pick(t0, &[]);
        f.attempt_ended(0, AttemptEnd::Stalled, 200 * MS, t0 + 200 * MS);
        assert_eq!(f.health(0, t0 + 200 * MS), Health::Suspect);
        assert_eq!(f.pick(t0 + 200 * MS, &[0]).unwrap().edge, 1);
        // Status proves it alive; it is preferred again once the dwell allows.
        f.status(0, status(0.0, 0));
        assert_eq!(f.health(0, t0 + 300 * MS), Health::Up);
        assert_eq!(f.pick(t0 + 300 * MS, &[]).unwrap().edge, 1);
        assert_eq!(f.pick(t0 + 1300 * MS, &[]).unwrap().edge, 0);
    }

    #[test]
    fn a_refusing_edge_cools_down_and_a_draining_one_is_avoided() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.pick(t0, &[]);
        f.attempt_ended(0, AttemptEnd::Refused, MS, t0);
        assert_eq!(f.health(0, t0 + 999 * MS), Health::Cooling);
        assert_eq!(f.health(0, t0 + 1000 * MS), Health::Up);
        f.status(
            1,
            Status {
                advice: Advice::Draining,
                ..status(0.0, 0)
            },
        );
        assert_eq!(f.pick(t0 + MS, &[0]).unwrap().edge, 2);
    }

    #[test]
    fn a_rejecting_edge_is_gone_even_when_it_connects_later() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.rejected(0);
        f.connected(0, t0);
        assert_eq!(f.health(0, t0), Health::Gone);
        assert_eq!(f.pick(t0, &[]).unwrap().edge, 1);
    }

    #[test]
    fn with_every_edge_tried_or_down_the_frame_runs_locally() {
        let t0 = Instant::now();
        let mut f = three(t0);
        f.disconnected(2);
        assert!(f.pick(t0, &[0, 1]).is_none());
        let p = f.pick(t0, &[0]).unwrap();
        assert_eq!((p.edge, p.alternative), (1, false));
        let mut empty = FleetCore::new(2, FleetTuning::default());
        assert!(empty.pick(t0, &[]).is_none());
    }

    #[test]
    fn every_frame_resolves_once_and_later_answers_are_duplicates() {
        let mut f = FleetCore::new(2, FleetTuning::default());
        let a = f.begin_frame();
        let b = f.begin_frame();
        assert_ne!(a, b);
        assert_eq!(f.unresolved(), 2);
        assert!(f.resolve(a));
        assert!(!f.resolve(a), "a second answer for the same frame");
        assert!(f.resolve(b));
        assert_eq!(f.unresolved(), 0);
        assert_eq!(f.counters().duplicates, 1);
    }

    #[test]
    fn the_stall_timeout_follows_the_slowest_recent_answer_with_a_floor() {
        let t0 = Instant::now();
        let mut f = three(t0);
        assert_eq!(f.stall_timeout(0), 200 * MS);
        f.attempt_ended(0, AttemptEnd::Answered, 100 * MS, t0);
        assert_eq!(f.stall_timeout(0), 400 * MS);
        // Fast answers let it decay back towards the floor.
        for _ in 0..20 {
            f.attempt_ended(0, AttemptEnd::Answered, 5 * MS, t0);
        }
        assert_eq!(f.stall_timeout(0), 200 * MS);
    }

    #[test]
    fn duplicate_addresses_in_the_list_are_dropped_keeping_the_order() {
        let a: SocketAddr = "10.0.0.1:4433".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4433".parse().unwrap();
        assert_eq!(FleetConfig::new([b, a, b]).edges, vec![b, a]);
    }
}
