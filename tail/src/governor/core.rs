//! The governor's decisions, as a deterministic state machine: power samples and
//! their times in, transitions and actions out. No clock, no I/O, no hardware.

use std::time::Duration;

/// How hard the governor is holding the edge back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Under T1: everything runs as configured.
    #[default]
    Normal,
    /// Over T1: low-priority sessions are capped (batch size, frame rate), the GPU is
    /// capped lightly where it can be.
    Capped,
    /// Over T2: devices are advised to run locally, new offload work is shed, the GPU
    /// is capped hard where it can be; low-priority caps stay.
    Shedding,
}

impl Level {
    /// The snake_case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Capped => "capped",
            Level::Shedding => "shedding",
        }
    }

    /// 0, 1, 2: the value of the governor state gauge.
    pub fn gauge(self) -> i64 {
        self as i64
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The throughput cap put on low-priority sessions above T1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SessionCap {
    /// Most frames of low-priority sessions computed in one batch.
    pub max_batch: usize,
    /// Most frames per second one low-priority session may have computed; the rest
    /// are answered `Dropped{shed}`.
    pub max_rate_hz: f64,
}

/// The governor's settings. Thresholds are fractions of the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct GovernorConfig {
    /// The power budget, W.
    pub budget_w: f64,
    /// Capping starts at this fraction of the budget.
    pub t1: f64,
    /// Shedding starts at this fraction of the budget.
    pub t2: f64,
    /// A level is released only when power is this fraction of the budget below its
    /// threshold (below T2 - margin for shedding, below T1 - margin for the caps).
    pub release_margin: f64,
    /// ... and has stayed there this long.
    pub min_hold: Duration,
    /// What low-priority sessions are capped to above T1.
    pub low_priority_cap: SessionCap,
    /// GPU cap above T1, as a fraction of the GPU's full setting; `None`: none.
    pub gpu_fraction_t1: Option<f64>,
    /// GPU cap above T2; `None`: none.
    pub gpu_fraction_t2: Option<f64>,
}

impl GovernorConfig {
    /// Defaults for a budget of `budget_w` watts (see [`super::PowerConfig`] for the
    /// reasons behind each).
    pub fn with_budget(budget_w: f64) -> Self {
        Self {
            budget_w,
            t1: 0.85,
            t2: 0.95,
            release_margin: 0.05,
            min_hold: Duration::from_secs(5),
            low_priority_cap: SessionCap {
                max_batch: 2,
                max_rate_hz: 5.0,
            },
            gpu_fraction_t1: Some(0.8),
            gpu_fraction_t2: Some(0.6),
        }
    }

    /// Checks what types cannot; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let b = self.budget_w;
        if !b.is_finite() || b <= 0.0 {
            return Err(format!(
                "budget_w = {b}: give the power budget in watts, above 0"
            ));
        }
        let (t1, t2, m) = (self.t1, self.t2, self.release_margin);
        if !(t1 > 0.0 && t1 < t2 && t2 <= 2.0) {
            return Err(format!(
                "t1 = {t1}, t2 = {t2}: need 0 < t1 < t2 <= 2 (fractions of budget_w; e.g. 0.85 and 0.95)"
            ));
        }
        if !(m >= 0.0 && m < t1) {
            return Err(format!(
                "release_margin = {m}: need 0 <= release_margin < t1 (a fraction of budget_w, e.g. 0.05)"
            ));
        }
        let c = self.low_priority_cap;
        if c.max_batch == 0 || !(c.max_rate_hz.is_finite() && c.max_rate_hz > 0.0) {
            return Err(format!(
                "low-priority cap max_batch = {}, max_rate_hz = {}: both must be above 0",
                c.max_batch, c.max_rate_hz
            ));
        }
        for (name, f) in [
            ("gpu_fraction_t1", self.gpu_fraction_t1),
            ("gpu_fraction_t2", self.gpu_fraction_t2),
        ] {
            if let Some(f) = f {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(format!("{name} = {f}: need 0 < fraction <= 1"));
                }
            }
        }
        Ok(())
    }

    fn watts(&self, fraction: f64) -> f64 {
        self.budget_w * fraction
    }
}

/// Something the edge must do because the governor changed level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Cap low-priority sessions.
    CapLowPriority(SessionCap),
    /// Lift the low-priority caps.
    UncapLowPriority,
    /// Tell devices to compute locally (`Advice::PreferLocal`).
    AdviseLocal,
    /// Tell devices to offload as usual (`Advice::Normal`).
    AdviseNormal,
    /// Answer new offload work `Dropped{shed}`.
    StartShedding,
    /// Accept new offload work again.
    StopShedding,
    /// Cap the GPU at this fraction of its full setting.
    CapGpu(f64),
    /// Put the GPU's own setting back.
    RestoreGpu,
}

/// A change of level, with the actions that carry it out, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The sample time that caused it.
    pub at: Duration,
    /// The level before.
    pub from: Level,
    /// The level after.
    pub to: Level,
    /// The power that caused it, W.
    pub watts: f64,
    /// What to do.
    pub actions: Vec<Action>,
}

/// The POLCA-style governor. Feed it every sample with [`Governor::observe`].
///
/// - Escalation is immediate: one sample at or above T1 (T2) caps (sheds), since
///   exceeding the budget is the hazard; Normal jumps straight to Shedding when a
///   sample is over T2.
/// - Release is slow: shedding ends only after power has stayed below
///   `T2 - release_margin` for `min_hold` (to Capped), or below `T1 - release_margin`
///   for `min_hold` (straight to Normal); caps end after `min_hold` below
///   `T1 - release_margin`. A sample above the release level restarts the wait, so
///   noise around a threshold cannot make it flap.
/// - A missing figure (`None`) changes nothing: the level holds until real readings
///   say otherwise.
#[derive(Clone, Debug)]
pub struct Governor {
    cfg: GovernorConfig,
    level: Level,
    entered: Duration,
    last_watts: Option<f64>,
    /// Since when power has been below `T1 - margin` (resp. `T2 - margin`) without a
    /// break.
    below_t1_release: Option<Duration>,
    below_t2_release: Option<Duration>,
}

impl Governor {
    /// A governor at [`Level::Normal`]. Call [`GovernorConfig::validate`] first.
    pub fn new(cfg: GovernorConfig) -> Self {
        Self {
            cfg,
            level: Level::Normal,
            entered: Duration::ZERO,
            last_watts: None,
            below_t1_release: None,
            below_t2_release: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &GovernorConfig {
        &self.cfg
    }

    /// The level now.
    pub fn level(&self) -> Level {
        self.level
    }

    /// When the current level was entered (sample time).
    pub fn since(&self) -> Duration {
        self.entered
    }

    /// The latest power figure, W.
    pub fn last_watts(&self) -> Option<f64> {
        self.last_watts
    }

    /// The share of the budget still free at the latest figure (1 with no figure yet;
    /// negative over budget).
    pub fn headroom(&self) -> f64 {
        match self.last_watts {
            Some(w) => 1.0 - w / self.cfg.budget_w,
            None => 1.0,
        }
    }

    /// The cap low-priority sessions are under now, if any.
    pub fn low_priority_cap(&self) -> Option<SessionCap> {
        (self.level >= Level::Capped).then_some(self.cfg.low_priority_cap)
    }

    /// Feeds one sample taken at `at`; returns the transition it causes, if any.
    pub fn observe(&mut self, at: Duration, watts: Option<f64>) -> Option<Transition> {
        let w = watts.filter(|w| w.is_finite() && *w >= 0.0)?;
        self.last_watts = Some(w);
        let c = &self.cfg;
        let (t1, t2) = (c.watts(c.t1), c.watts(c.t2));
        let (r1, r2) = (
            c.watts(c.t1 - c.release_margin),
            c.watts(c.t2 - c.release_margin),
        );
        let track = |since: &mut Option<Duration>, below: bool| {
            *since = if below {
                Some(since.unwrap_or(at))
            } else {
                None
            };
        };
        track(&mut self.below_t1_release, w < r1);
        track(&mut self.below_t2_release, w < r2);
        let held = |since: Option<Duration>| {
            since.is_some_and(|s| at.saturating_sub(s) >= self.cfg.min_hold)
        };
        let target = if w >= t2 {
            Level::Shedding
        } else if w >= t1 {
            self.level.max(Level::Capped)
        } else {
            self.level
        };
        let target = if target > self.level {
            target
        } else {
            match self.level {
                Level::Shedding if held(self.below_t1_release) => Level::Normal,
                Level::Shedding if held(self.below_t2_release) => Level::Capped,
                Level::Capped if held(self.below_t1_release) => Level::Normal,
                l => l,
            }
        };
        if target == self.level {
            return None;
        }
        let from = self.level;
        self.level = target;
        self.entered = at;
        Some(Transition {
            at,
            from,
            to: target,
            watts: w,
            actions: self.actions(from, target),
        })
    }

    fn actions(&self, from: Level, to: Level) -> Vec<Action> {
        use Level::*;
        let mut a = Vec::new();
        let gpu = |l: Level| match l {
            Normal => None,
            Capped => self.cfg.gpu_fraction_t1,
            Shedding => self.cfg.gpu_fraction_t2,
        };
        // Hardware first when tightening (it acts fastest on the power draw), last
        // when loosening (software limits lift only once the GPU may run freely).
        let gpu_action = match (gpu(from), gpu(to)) {
            (a, b) if a == b => None,
            (_, Some(f)) => Some(Action::CapGpu(f)),
            (Some(_), None) => Some(Action::RestoreGpu),
            (None, None) => None,
        };
        if to > from {
            a.extend(gpu_action);
            if from == Normal {
                a.push(Action::CapLowPriority(self.cfg.low_priority_cap));
            }
            if to == Shedding {
                a.push(Action::AdviseLocal);
                a.push(Action::StartShedding);
            }
        } else {
            if from == Shedding {
                a.push(Action::StopShedding);
                a.push(Action::AdviseNormal);
            }
            if to == Normal {
                a.push(Action::UncapLowPriority);
            }
            a.extend(gpu_action);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GovernorConfig {
        GovernorConfig {
            min_hold: Duration::from_secs(3),
            ..GovernorConfig::with_budget(100.0)
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn defaults_validate_and_nonsense_is_explained() {
        assert_eq!(cfg().validate(), Ok(()));
        let bad = [
            (GovernorConfig::with_budget(0.0), "budget_w"),
            (
                GovernorConfig {
                    t1: 0.9,
                    t2: 0.8,
                    ..cfg()
                },
                "0 < t1 < t2",
            ),
            (
                GovernorConfig {
                    release_margin: 0.9,
                    ..cfg()
                },
                "release_margin",
            ),
            (
                GovernorConfig {
                    gpu_fraction_t2: Some(1.5),
                    ..cfg()
                },
                "gpu_fraction_t2",
            ),
        ];
        for (c, want) in bad {
            let err = c.validate().unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn a_spike_over_t2_from_normal_sheds_at_once_with_every_action() {
        let mut g = Governor::new(cfg());
        assert_eq!(g.observe(s(0), Some(50.0)), None);
        let t = g.observe(s(1), Some(97.0)).unwrap();
        assert_eq!((t.from, t.to), (Level::Normal, Level::Shedding));
        assert_eq!(
            t.actions,
            [
                Action::CapGpu(0.6),
                Action::CapLowPriority(cfg().low_priority_cap),
                Action::AdviseLocal,
                Action::StartShedding
            ]
        );
        // Far below T1 for the hold: straight back to normal, everything undone.
        assert_eq!(g.observe(s(2), Some(40.0)), None);
        assert_eq!(g.observe(s(4), Some(40.0)), None);
        let t = g.observe(s(5), Some(40.0)).unwrap();
        assert_eq!((t.from, t.to), (Level::Shedding, Level::Normal));
        assert_eq!(
            t.actions,
            [
                Action::StopShedding,
                Action::AdviseNormal,
                Action::UncapLowPriority,
                Action::RestoreGpu
            ]
        );
    }

    #[test]
    fn missing_or_nonsense_figures_change_nothing() {
        let mut g = Governor::new(cfg());
        g.observe(s(0), Some(90.0)).unwrap();
        assert_eq!(g.observe(s(10), None), None);
        assert_eq!(g.observe(s(11), Some(f64::NAN)), None);
        assert_eq!(g.level(), Level::Capped);
        assert_eq!(g.last_watts(), Some(90.0));
        assert!((g.headroom() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn without_gpu_fractions_no_gpu_actions_are_emitted() {
        let mut g = Governor::new(GovernorConfig {
            gpu_fraction_t1: None,
            gpu_fraction_t2: None,
            ..cfg()
        });
        let t = g.observe(s(0), Some(90.0)).unwrap();
        assert_eq!(t.actions, [Action::CapLowPriority(cfg().low_priority_cap)]);
        let t = g.observe(s(1), Some(99.0)).unwrap();
        assert_eq!(t.actions, [Action::AdviseLocal, Action::StartShedding]);
    }
}
