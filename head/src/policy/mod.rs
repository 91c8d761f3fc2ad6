//! Where each frame runs: locally, split at one of the model's points, or offloaded.
//!
//! A deterministic core in the manner of `quinn-proto`: no clock, no I/O. The device
//! loop tells it what happened ([`Policy::observe_frame`], [`Policy::observe_link`],
//! [`Policy::observe_status`], [`Policy::observe_power`]) and asks before each frame
//! ([`Policy::decide`]). Tests drive it with traces and assert the decisions.
//!
//! For every candidate mode it predicts a frame's latency and the device's energy:
//!
//! - device compute: the measured time of the head at that split point (the whole
//!   model when local; the JPEG encoding when offloading), a moving average of warm
//!   frames (the first frame after a frame in another mode runs cold and is left out);
//! - upload: bytes / uplink bandwidth, the bandwidth learnt from the round trip less
//!   the edge's own account of its time ([`EdgeAccount`]) and the RTT (or from a
//!   timed upload, or, without either, less a prior for the edge);
//! - round trip (the transport's smoothed RTT), the edge's reported queue delay, and
//!   the edge's compute (its account, or the local time of the tail over
//!   `edge_speedup` before the first answer);
//! - energy: [`PowerModel`] watts times those times.
//!
//! The objective follows the battery ([`BatteryLevel`]): plenty (or on mains): least
//! latency; low: least energy among the modes that meet the user's latency target;
//! critical: least energy within the hard latency bound. A new best mode replaces the
//! current one only past a hysteresis margin and a minimum dwell, and after a fresh
//! measurement when its estimate is old; advice from the edge to run locally and a
//! lost connection act at once. Every `probe_every` frames a two-frame probe runs in
//! the mode measured least recently (a far worse mode waits longer). Each decision
//! carries a [`Reason`] for the frame's JSON line.
//!
//! A device may also carry a non-neural fallback ([`Plan::Classic`]: the head's
//! features into a kNN, linear SVM or random forest, `--fallback FILE`). It is far
//! cheaper than the network and less accurate, so no objective weighs it against the
//! others: it runs exactly when the battery is critical and the edge cannot answer
//! (disconnected, advising local or draining, or every remote mode failing), at once
//! and without dwell, with the reason `battery_critical:classic:<why the edge cannot>`.

#[cfg(test)]
mod classic_tests;
mod config;
mod estimate;
mod runner;

pub use config::{BatteryThresholds, ParsePowerModelError, PolicyConfig, PowerModel};
pub use estimate::Ewma;
pub use runner::{
    auto_plans, devices_for, devices_with_fallback, NewRunnerError, PolicyRunner, PolicyTally,
};

use std::fmt;
use std::time::Duration;

use splitstream_transport::{Advice, Status};

use crate::device::CodecChoice;
use crate::stats::Mode;
use estimate::{dur, secs, LinkEstimate, ModeEstimate, MIN_BYTES_FOR_BANDWIDTH};

/// One way to run a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Plan {
    /// The whole model on the device.
    Local,
    /// The head to `point` on the device, the tail on the edge.
    Split {
        /// Split point (head stages on the device).
        point: usize,
        /// Bottleneck codec.
        codec: CodecChoice,
    },
    /// The frame as JPEG; the whole model on the edge.
    Offload,
    /// The head to the classifier's feature point, then a non-neural classifier, all on
    /// the device (the fallback for a critical battery with no edge).
    Classic,
}

impl Plan {
    /// Whether the frame goes to the edge.
    pub fn is_remote(&self) -> bool {
        matches!(self, Plan::Split { .. } | Plan::Offload)
    }

    /// The stats mode.
    pub fn mode(&self) -> Mode {
        match self {
            Plan::Local => Mode::Local,
            Plan::Split { .. } => Mode::Split,
            Plan::Offload => Mode::Offload,
            Plan::Classic => Mode::Classic,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Local => f.write_str("local"),
            Plan::Split { point, codec } => write!(f, "split@{point}/{}", codec.name()),
            Plan::Offload => f.write_str("offload"),
            Plan::Classic => f.write_str("classic"),
        }
    }
}

/// The battery as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatteryObservation {
    /// Charge, percent of capacity.
    pub capacity_pct: f64,
    /// On a charger (or full on mains): energy is then not scarce.
    pub charging: bool,
}

/// How scarce energy is, which sets the objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BatteryLevel {
    /// Plenty, charging, or no battery: least latency.
    Plenty,
    /// Low: least energy among modes meeting the latency target.
    Low,
    /// Critical: least energy within the latency bound.
    Critical,
}

impl BatteryLevel {
    /// Name in reasons and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plenty => "battery_plenty",
            Self::Low => "battery_low",
            Self::Critical => "battery_critical",
        }
    }

    fn of(pct: f64, t: &BatteryThresholds) -> Self {
        if pct < t.critical_pct {
            Self::Critical
        } else if pct < t.low_pct {
            Self::Low
        } else {
            Self::Plenty
        }
    }

    /// The level after reading `battery` while at `self`: down at once, up only past
    /// the margin.
    fn next(self, battery: Option<BatteryObservation>, t: &BatteryThresholds) -> Self {
        let Some(b) = battery.filter(|b| b.capacity_pct.is_finite()) else {
            return Self::Plenty;
        };
        if b.charging {
            return Self::Plenty;
        }
        let plain = Self::of(b.capacity_pct, t);
        let with_margin = Self::of(b.capacity_pct - t.margin_pct, t);
        if plain > self {
            plain
        } else if with_margin < self {
            with_margin
        } else {
            self
        }
    }
}

/// Why a frame runs where it does; its [`fmt::Display`] is the machine-readable string
/// in the frame's JSON line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The policy is fixed to one mode (`--policy local|split|offload`).
    Fixed,
    /// The mode has not been measured yet; this frame measures it.
    Warmup,
    /// A periodic frame in the least recently measured mode.
    Probe,
    /// The edge advised running locally (load or power cap).
    AdviceLocal,
    /// The edge is draining.
    AdviceDraining,
    /// No connection to the edge.
    Disconnected,
    /// A frame in the current remote mode fell back to local recently.
    Fallback,
    /// Another mode looks better, but the current one has not been held long enough.
    Dwell,
    /// Another mode looks better, but by less than the hysteresis margin.
    Hysteresis,
    /// The objective's choice at this battery level.
    Objective(BatteryLevel),
    /// No mode meets the latency target (low battery) or bound (critical): fastest.
    OverLatency(BatteryLevel),
    /// The battery is critical and the edge cannot answer: the non-neural fallback.
    Classic(EdgeDown),
}

/// Why the edge cannot answer, as [`Reason::Classic`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeDown {
    /// No connection.
    Disconnected,
    /// The edge advised running locally.
    AdviceLocal,
    /// The edge is draining.
    AdviceDraining,
    /// Every remote mode fell back recently (or there is none).
    Failing,
}

impl EdgeDown {
    /// Name in reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::AdviceLocal => "advice_local",
            Self::AdviceDraining => "advice_draining",
            Self::Failing => "edge_failing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Fixed => f.write_str("fixed"),
            Reason::Warmup => f.write_str("warmup"),
            Reason::Probe => f.write_str("probe"),
            Reason::AdviceLocal => f.write_str("advice:local"),
            Reason::AdviceDraining => f.write_str("advice:draining"),
            Reason::Disconnected => f.write_str("disconnected"),
            Reason::Fallback => f.write_str("fallback"),
            Reason::Dwell => f.write_str("dwell"),
            Reason::Hysteresis => f.write_str("hysteresis"),
            Reason::Objective(BatteryLevel::Plenty) => f.write_str("battery_plenty:latency"),
            Reason::Objective(level) => write!(f, "{}:energy", level.as_str()),
            Reason::OverLatency(BatteryLevel::Critical) => {
                f.write_str("battery_critical:over_bound")
            }
            Reason::OverLatency(level) => write!(f, "{}:over_target", level.as_str()),
            Reason::Classic(why) => write!(f, "battery_critical:classic:{}", why.as_str()),
        }
    }
}

/// Predicted cost of one frame in one mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Capture to result.
    pub latency: Duration,
    /// Device energy, joules.
    pub energy_j: f64,
}

/// The policy's answer for one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Index of the chosen candidate (as given to [`Policy::new`]).
    pub candidate: usize,
    /// The chosen plan.
    pub plan: Plan,
    /// Why.
    pub reason: Reason,
    /// What the policy expects of it (None before it was measured).
    pub predicted: Option<Prediction>,
}

/// How a frame went, as the device loop tells the policy afterwards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameObservation {
    /// The candidate the frame was decided for.
    pub candidate: usize,
    /// Device compute before sending (the whole model when local).
    pub head: Duration,
    /// What happened after.
    pub outcome: ObservedOutcome,
}

/// The remote part of a frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ObservedOutcome {
    /// Ran locally as planned.
    Local,
    /// The edge answered.
    Answered {
        /// Bytes sent.
        bytes: u64,
        /// Time the payload took to leave (a pacer's delay, the send's completion),
        /// when the shell can tell.
        upload: Option<Duration>,
        /// From sending to the answer.
        round_trip: Duration,
        /// The edge's own account of the frame, when it gives one.
        edge: Option<EdgeAccount>,
    },
    /// Planned remote, but the edge did not answer and the frame ran locally.
    FellBack,
}

/// The edge's own account of a frame (the timing in its answer): with it, the device
/// tells the link's share of a round trip from the edge's without a prior.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdgeAccount {
    /// From the payload's first packet to its last, as the edge received them.
    pub receive: Duration,
    /// From the last packet to the answer: queueing, decoding and the tail.
    pub serve: Duration,
}

/// Errors building a policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NewPolicyError {
    /// No candidate modes.
    #[error("the policy needs at least one mode to choose from")]
    NoCandidates,
    /// `local` is not among the candidates.
    #[error("the policy needs `local` among its modes (it is the fallback when the edge advises against offloading)")]
    NoLocal,
}

/// The per-frame mode chooser (see the module docs).
#[derive(Clone, Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    plans: Vec<Plan>,
    est: Vec<ModeEstimate>,
    link: LinkEstimate,
    local: usize,
    fixed: bool,
    frame: u64,
    current: usize,
    switched_at: Option<u64>,
    connected: bool,
    advice: Advice,
    queue_s: f64,
    level: BatteryLevel,
    power: PowerModel,
    last_was_local: bool,
    /// The candidate of the last frame observed (a frame in another mode runs cold).
    last_candidate: Option<usize>,
    /// A probe's second frame, due next.
    probe_next: Option<usize>,
}

impl Policy {
    /// A policy choosing among `plans` (which must include [`Plan::Local`]).
    pub fn new(plans: Vec<Plan>, cfg: PolicyConfig) -> Result<Self, NewPolicyError> {
        if plans.is_empty() {
            return Err(NewPolicyError::NoCandidates);
        }
        let local = plans
            .iter()
            .position(|p| *p == Plan::Local)
            .ok_or(NewPolicyError::NoLocal)?;
        Ok(Self {
            power: cfg.power,
            est: vec![ModeEstimate::default(); plans.len()],
            plans,
            cfg,
            link: LinkEstimate::default(),
            local,
            fixed: false,
            frame: 0,
            current: local,
            switched_at: None,
            connected: true,
            advice: Advice::Normal,
            queue_s: 0.0,
            level: BatteryLevel::Plenty,
            last_was_local: false,
            last_candidate: None,
            probe_next: None,
        })
    }

    /// A policy that always answers `plan` (reason `fixed`): the `--policy
    /// local|split|offload` of the device, measured by the same code.
    pub fn fixed(plan: Plan, cfg: PolicyConfig) -> Self {
        let mut plans = vec![plan];
        if plan != Plan::Local {
            plans.push(Plan::Local);
        }
        let mut p = Self::new(plans, cfg).unwrap_or_else(|_| unreachable!("local is present"));
        p.fixed = true;
        p.current = 0;
        p
    }

    /// The candidate plans, in the order given.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    /// The current battery level (objective).
    pub fn level(&self) -> BatteryLevel {
        self.level
    }

    /// The power model in use (refined by [`observe_power`](Self::observe_power)).
    pub fn power_model(&self) -> PowerModel {
        self.power
    }

    /// The uplink bandwidth estimate, bits per second.
    pub fn bandwidth_bps(&self) -> Option<f64> {
        self.link.s_per_bit.get().map(|s| 1.0 / s)
    }

    /// The connection state and the transport's smoothed round trip.
    pub fn observe_link(&mut self, connected: bool, rtt: Option<Duration>) {
        self.connected = connected;
        if let Some(r) = rtt {
            self.link.rtt_s = Some(secs(r));
        }
    }

    /// The edge's latest status (None: none yet, or the connection was lost).
    pub fn observe_status(&mut self, status: Option<&Status>) {
        match status {
            Some(s) => {
                self.advice = s.advice;
                self.queue_s = s.queue_delay_us as f64 * 1e-6;
            }
            None => {
                self.advice = Advice::Normal;
                self.queue_s = 0.0;
            }
        }
    }

    /// A power reading: whole-device watts, when the source reports them, refine the
    /// compute power after a local frame (the device was computing); the battery sets
    /// the objective (None: no battery, mains power).
    pub fn observe_power(&mut self, watts: Option<f64>, battery: Option<BatteryObservation>) {
        if let Some(w) = watts.filter(|w| w.is_finite() && *w > 0.0) {
            if self.last_was_local {
                let a = self.cfg.ewma_alpha;
                self.power.compute_w += a * (w - self.power.compute_w);
            }
        }
        self.level = self.level.next(battery, &self.cfg.battery);
    }

    /// A reading of a [`PowerSource`](splitstream_power::PowerSource): its watts and its
    /// battery (on a charger, full, or not charging count as mains: energy is not scarce).
    pub fn observe_sample(&mut self, sample: &splitstream_power::PowerSample) {
        use splitstream_power::BatteryStatus;
        let battery = sample.battery.map(|b| BatteryObservation {
            capacity_pct: b.capacity_pct,
            charging: matches!(
                b.status,
                BatteryStatus::Charging | BatteryStatus::Full | BatteryStatus::NotCharging
            ),
        });
        self.observe_power(sample.watts, battery);
    }

    /// What a frame in `plan` taught.
    pub fn observe_frame(&mut self, obs: &FrameObservation) {
        // Samples weigh `ewma_alpha`; one taken after a long gap weighs `probe_alpha`.
        let base = self.cfg.ewma_alpha;
        let after_gap = self.cfg.probe_alpha.max(base);
        let Some(plan) = self.plans.get(obs.candidate).copied() else {
            return;
        };
        let frame = self.frame;
        let queue_s = self.queue_s;
        let rtt_s = self.link.rtt_s.unwrap_or(0.0);
        let edge_prior = self.edge_prior_s(obs.candidate);
        let dwell = self.cfg.min_dwell_frames;
        let link_stale = self.link_stale(frame);
        let cold = self.last_candidate != Some(obs.candidate);
        self.last_candidate = Some(obs.candidate);
        let Some(e) = self.est.get_mut(obs.candidate) else {
            return;
        };
        // A frame in another mode than the last one runs cold (caches hold the other
        // mode's weights, worker threads sleep, the stream is new), and a sustained run
        // in this mode would not: its compute time is left out. Warmup and probes run
        // two frames for this. A warm frame in a mode not run warm for a while says more
        // about the mode now than its old average does.
        let stale = e
            .warm_at
            .is_some_and(|last| frame.saturating_sub(last) > dwell);
        let a = if stale { after_gap } else { base };
        self.last_was_local = matches!(obs.outcome, ObservedOutcome::Local);
        if !cold && !matches!(obs.outcome, ObservedOutcome::FellBack) {
            // A fallen-back frame's device time includes the local rescue.
            e.head_s.add(secs(obs.head), a);
            e.warm_at = Some(frame);
        }
        match obs.outcome {
            ObservedOutcome::Local => {}
            ObservedOutcome::FellBack => {
                if plan.is_remote() {
                    e.blocked_until = frame + self.cfg.fallback_backoff_frames;
                }
            }
            ObservedOutcome::Answered {
                bytes,
                upload,
                round_trip,
                edge,
            } => {
                let bytes = bytes as f64;
                e.bytes.add(bytes, a);
                let rt = secs(round_trip);
                e.round_trip_s.add(rt, a);
                // The edge's time excludes the queueing its status reports, which the
                // prediction adds as it is at the time.
                let up = match (upload, edge) {
                    (Some(u), edge) => {
                        // Known upload time: the rest of the round trip, less the
                        // propagation, is the edge's (unless it says so itself).
                        let served = edge.map_or(rt - secs(u) - rtt_s, |x| secs(x.serve));
                        e.edge_s.add((served - queue_s).max(0.0), a);
                        secs(u)
                    }
                    (None, Some(x)) => {
                        // What the edge did not spend is the link's: the upload and the
                        // propagation. The smoothed RTT can run high while the uplink
                        // queues (its acknowledgements wait too), so the upload is at
                        // least what the edge saw arrive.
                        // The edge's figures are its word: capped at the round trip.
                        let serve = secs(x.serve).min(rt);
                        e.edge_s.add((serve - queue_s).max(0.0), a);
                        (rt - serve - rtt_s).max(secs(x.receive).min(rt - serve))
                    }
                    (None, None) => {
                        let edge = e.edge_s.get().unwrap_or(edge_prior);
                        rt - rtt_s - queue_s - edge
                    }
                };
                if bytes >= MIN_BYTES_FOR_BANDWIDTH {
                    // Timing under 0.2 ms is noise; cap the sample at 10 Gbit/s.
                    let spb = up.max(2e-4) / (bytes * 8.0);
                    let link_a = if link_stale { after_gap } else { base };
                    self.link.add_sample(spb.max(1e-10), link_a, frame);
                }
            }
        }
    }

    /// The edge's compute for `c` before it is measured: the local time of the stages
    /// it runs there, over `edge_speedup`.
    fn edge_prior_s(&self, c: usize) -> f64 {
        let full = self.est[self.local].head_s.get().unwrap_or(0.0);
        let head = match self.plans[c] {
            Plan::Offload => 0.0,
            _ => self.est[c].head_s.get().unwrap_or(0.0),
        };
        (full - head).max(0.0) / self.cfg.edge_speedup.max(1e-3)
    }

    /// The predicted latency and energy of a frame in candidate `c` now (None until
    /// the mode and, for remote modes, the link have been measured).
    pub fn predict(&self, c: usize) -> Option<Prediction> {
        let plan = *self.plans.get(c)?;
        let e = &self.est[c];
        let head = e.head_s.get()?;
        let pm = &self.power;
        if !plan.is_remote() {
            return Some(Prediction {
                latency: dur(head),
                energy_j: pm.energy_j(dur(head), Duration::ZERO, 0.0, Duration::ZERO),
            });
        }
        let bytes = e.bytes.get()?;
        let (up, wait) = match self.link.s_per_bit.get() {
            Some(spb) => {
                let edge = e.edge_s.get().unwrap_or_else(|| self.edge_prior_s(c));
                (
                    bytes * 8.0 * spb,
                    self.link.rtt_s.unwrap_or(0.0) + self.queue_s + edge,
                )
            }
            // No payload has been large enough to time the link: the mode's own
            // measured round trip, all counted as waiting.
            None => (0.0, e.round_trip_s.get()?),
        };
        Some(Prediction {
            latency: dur(head + up + wait),
            energy_j: pm.energy_j(dur(head), dur(up), bytes, dur(wait)),
        })
    }

    fn feasible(&self, c: usize) -> bool {
        match self.plans[c] {
            Plan::Local => true,
            Plan::Classic => self.classic_now().is_some(),
            _ => self.remote_feasible(c),
        }
    }

    fn remote_feasible(&self, c: usize) -> bool {
        self.connected
            && !matches!(self.advice, Advice::PreferLocal | Advice::Draining)
            && self.est[c].blocked_until <= self.frame
    }

    /// The non-neural fallback's candidate and why, when it should run now: the
    /// battery is critical and the edge cannot answer.
    fn classic_now(&self) -> Option<(usize, EdgeDown)> {
        let c = self.plans.iter().position(|p| *p == Plan::Classic)?;
        if self.level != BatteryLevel::Critical {
            return None;
        }
        let why = if !self.connected {
            EdgeDown::Disconnected
        } else if self.advice == Advice::PreferLocal {
            EdgeDown::AdviceLocal
        } else if self.advice == Advice::Draining {
            EdgeDown::AdviceDraining
        } else if !(0..self.plans.len())
            .any(|r| self.plans[r].is_remote() && self.remote_feasible(r))
        {
            EdgeDown::Failing
        } else {
            return None;
        };
        Some((c, why))
    }

    /// Chooses the next frame's mode.
    pub fn decide(&mut self) -> Decision {
        let frame = self.frame;
        self.frame += 1;
        if self.fixed {
            return self.answer(0, Reason::Fixed);
        }
        // A critical battery and no edge: the cheapest answer there is, at once.
        if let Some((c, why)) = self.classic_now() {
            self.probe_next = None;
            self.switch_to(c, frame);
            return self.answer(c, Reason::Classic(why));
        }
        // The edge's word and the link come first, and do not wait for the dwell.
        let forced = match self.advice {
            Advice::PreferLocal => Some(Reason::AdviceLocal),
            Advice::Draining => Some(Reason::AdviceDraining),
            _ if !self.connected => Some(Reason::Disconnected),
            _ => None,
        };
        if let Some(reason) = forced {
            self.switch_to(self.local, frame);
            return self.answer(self.local, reason);
        }
        // A probe's second frame: the first ran cold.
        if let Some(c) = self.probe_next.take().filter(|&c| self.feasible(c)) {
            return self.answer(c, Reason::Probe);
        }
        // Not measured warm yet: measure it (the current mode is kept).
        if let Some(c) =
            (0..self.plans.len()).find(|&c| self.feasible(c) && self.est[c].warm_at.is_none())
        {
            return self.answer(c, Reason::Warmup);
        }
        if self.cfg.probe_every > 0 && (frame + 1).is_multiple_of(self.cfg.probe_every) {
            if let Some(c) = self.probe_candidate(frame) {
                return self.probe(c);
            }
        }
        let (best, reason) = self.best();
        let current_ok = self.feasible(self.current);
        if best == self.current {
            return self.answer(best, reason);
        }
        if !current_ok {
            // The fallback classifier is no longer needed (the battery or the edge
            // came back): the objective's choice at once. Or the current remote mode
            // fell back recently: leave it now.
            let why = if self.plans[self.current] == Plan::Classic {
                reason
            } else {
                Reason::Fallback
            };
            self.switch_to(best, frame);
            return self.answer(best, why);
        }
        let held = self.switched_at.map_or(u64::MAX, |s| frame - s);
        if held < self.cfg.min_dwell_frames {
            return self.answer(self.current, Reason::Dwell);
        }
        if self.gain(self.current, best, reason) < self.cfg.hysteresis {
            return self.answer(self.current, Reason::Hysteresis);
        }
        if self.stale(best, frame) {
            // Its estimate is old: measure it now, and switch only if that confirms.
            return self.probe(best);
        }
        self.switch_to(best, frame);
        self.answer(best, reason)
    }

    /// Whether candidate `c` has not run warm for longer than the probe interval.
    fn stale(&self, c: usize, frame: u64) -> bool {
        self.est[c]
            .warm_at
            .is_none_or(|last| frame.saturating_sub(last) > self.cfg.probe_every.max(1))
    }

    /// Starts a probe of `c`: this frame and the next (the first runs cold).
    fn probe(&mut self, c: usize) -> Decision {
        self.probe_next = Some(c);
        self.answer(c, Reason::Probe)
    }

    /// The mode a probe measures: the one longest unmeasured, with a mode the
    /// objective rates k times worse than the current one waiting k times longer (up to
    /// four): a probe of a far worse mode costs much and rarely changes the choice.
    /// While nothing times the link, a mode whose payloads would does not wait longer:
    /// its estimate rests on a bandwidth that may have changed since; and after a
    /// surprising bandwidth sample, such a mode is probed at once to confirm it.
    fn probe_candidate(&self, frame: u64) -> Option<usize> {
        let cur = self.cost(self.current);
        let link_stale = self.link_stale(frame);
        let times_link = |c: usize| self.est[c].times_link();
        if self.link.surprise != 0 && !times_link(self.current) {
            if let Some(c) = (0..self.plans.len())
                .filter(|&c| c != self.current && self.feasible(c) && times_link(c))
                .max_by_key(|&c| frame.saturating_sub(self.est[c].warm_at.unwrap_or(0)))
            {
                return Some(c);
            }
        }
        (0..self.plans.len())
            .filter(|&c| c != self.current && self.feasible(c))
            .map(|c| {
                let age = self.est[c]
                    .warm_at
                    .map_or(f64::INFINITY, |last| frame.saturating_sub(last) as f64);
                let ratio = match (self.cost(c), cur) {
                    _ if link_stale && times_link(c) => 1.0,
                    (Some(x), Some(y)) if y > 0.0 => (x / y).clamp(1.0, 4.0),
                    _ => 1.0,
                };
                (c, age / ratio)
            })
            .filter(|&(_, due)| due >= self.cfg.probe_every as f64)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c)
    }

    /// Whether no frame has timed the link for longer than the probe interval (the
    /// current mode's payloads are too small to, or it is local).
    fn link_stale(&self, frame: u64) -> bool {
        self.link
            .sampled_at
            .is_none_or(|at| frame.saturating_sub(at) > self.cfg.probe_every.max(1))
    }

    /// What the objective minimises for `c` at the current battery level.
    fn cost(&self, c: usize) -> Option<f64> {
        let p = self.predict(c)?;
        Some(match self.level {
            BatteryLevel::Plenty => secs(p.latency),
            _ => p.energy_j,
        })
    }

    fn switch_to(&mut self, c: usize, frame: u64) {
        if self.current != c {
            self.current = c;
            self.switched_at = Some(frame);
        }
    }

    fn answer(&self, c: usize, reason: Reason) -> Decision {
        Decision {
            candidate: c,
            plan: self.plans[c],
            reason,
            predicted: self.predict(c),
        }
    }

    /// The objective's best feasible candidate and the reason it names.
    fn best(&self) -> (usize, Reason) {
        let preds: Vec<(usize, Prediction)> = (0..self.plans.len())
            .filter(|&c| self.feasible(c))
            .filter_map(|c| self.predict(c).map(|p| (c, p)))
            .collect();
        let fastest = || {
            preds
                .iter()
                .min_by(|a, b| {
                    a.1.latency
                        .cmp(&b.1.latency)
                        .then(a.1.energy_j.total_cmp(&b.1.energy_j))
                })
                .map_or(self.local, |x| x.0)
        };
        let frugal_within = |bound: Option<Duration>| {
            preds
                .iter()
                .filter(|(_, p)| bound.is_none_or(|b| p.latency <= b))
                .min_by(|a, b| {
                    a.1.energy_j
                        .total_cmp(&b.1.energy_j)
                        .then(a.1.latency.cmp(&b.1.latency))
                })
                .map(|x| x.0)
        };
        match self.level {
            BatteryLevel::Plenty => (fastest(), Reason::Objective(BatteryLevel::Plenty)),
            level => {
                let bound = match level {
                    BatteryLevel::Low => self.cfg.latency_target,
                    _ => Some(self.cfg.latency_bound),
                };
                match frugal_within(bound) {
                    Some(c) => (c, Reason::Objective(level)),
                    None => (fastest(), Reason::OverLatency(level)),
                }
            }
        }
    }

    /// How much better `best` is than `cur` on the metric `reason` optimised, as a
    /// fraction of `cur`'s; infinite when `cur` breaks a bound `best` meets.
    fn gain(&self, cur: usize, best: usize, reason: Reason) -> f64 {
        let (Some(c), Some(b)) = (self.predict(cur), self.predict(best)) else {
            return f64::INFINITY;
        };
        let (cv, bv) = match reason {
            Reason::Objective(BatteryLevel::Plenty) | Reason::OverLatency(_) => {
                (secs(c.latency), secs(b.latency))
            }
            Reason::Objective(level) => {
                let bound = match level {
                    BatteryLevel::Low => self.cfg.latency_target,
                    _ => Some(self.cfg.latency_bound),
                };
                if bound.is_some_and(|bd| c.latency > bd) {
                    return f64::INFINITY;
                }
                (c.energy_j, b.energy_j)
            }
            _ => return 0.0,
        };
        if cv <= 0.0 {
            return 0.0;
        }
        (cv - bv) / cv
    }
}
