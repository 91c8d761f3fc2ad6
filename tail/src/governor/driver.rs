//! The thin async shell around [`Governor`]: samples a [`PowerSource`] on an
//! interval, steps the core, applies GPU caps, and publishes the state the edge's
//! sessions and status task read.
//!
//! What the edge sees is a [`PowerState`] on a `tokio::sync::watch` channel: each
//! session task reads it per frame (shed? rate-cap?), the worker per batch (batch
//! cap), the status task when it changes (advice). Hardware caps go through a
//! [`PowerCap`]; when the hardware refuses for good (no root, not supported) the
//! driver logs it once and goes on with the software caps alone. The GPU's own
//! setting is restored on release, when the driver stops, and (by `NvmlCap`'s own
//! `Drop`) if the process unwinds.

use std::sync::Arc;
use std::time::Duration;

use splitstream_power::{PowerCap, PowerError, PowerSource};
use splitstream_transport::Advice;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::core::{Action, Governor, GovernorConfig, Level, SessionCap, Transition};

/// What the rest of the edge needs to know of the governor.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerState {
    /// The level now.
    pub level: Level,
    /// The latest power figure, W (`None` before the first).
    pub watts: Option<f64>,
    /// The budget, W.
    pub budget_w: f64,
    /// Share of the budget free at the latest figure (negative over budget).
    pub headroom: f64,
    /// The cap on low-priority sessions, when capping.
    pub low_priority_cap: Option<SessionCap>,
    /// Transitions so far.
    pub transitions: u64,
}

impl PowerState {
    /// The state of an edge with no governor: never capped, no figure.
    pub fn ungoverned() -> Self {
        Self {
            level: Level::Normal,
            watts: None,
            budget_w: 0.0,
            headroom: 1.0,
            low_priority_cap: None,
            transitions: 0,
        }
    }

    /// What devices are advised.
    pub fn advice(&self) -> Advice {
        match self.level {
            Level::Shedding => Advice::PreferLocal,
            Level::Normal | Level::Capped => Advice::Normal,
        }
    }

    /// Whether new offload work is answered `Dropped{shed}`.
    pub fn sheds(&self) -> bool {
        self.level == Level::Shedding
    }

    fn from_governor(g: &Governor, transitions: u64) -> Self {
        Self {
            level: g.level(),
            watts: g.last_watts(),
            budget_w: g.config().budget_w,
            headroom: g.headroom(),
            low_priority_cap: g.low_priority_cap(),
            transitions,
        }
    }
}

/// Hooks for metrics and logs; every method has a no-op default.
pub trait GovernorObserver: Send + Sync {
    /// A sample was read (`None`: the source had no figure this time).
    fn sampled(&self, _watts: Option<f64>) {}
    /// The source failed.
    fn sample_failed(&self, _err: &PowerError) {}
    /// The level changed.
    fn transition(&self, _t: &Transition) {}
}

/// An observer that observes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl GovernorObserver for NoObserver {}

/// Samples, decides, applies. See the module documentation.
pub struct GovernorDriver {
    governor: Governor,
    source: Box<dyn PowerSource>,
    gpu: Option<Box<dyn PowerCap>>,
    interval: Duration,
    observer: Arc<dyn GovernorObserver>,
    state: watch::Sender<PowerState>,
    transitions: u64,
    source_failing: bool,
}

impl std::fmt::Debug for GovernorDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorDriver")
            .field("level", &self.governor.level())
            .field("source", &self.source.describe())
            .field("gpu", &self.gpu.as_ref().map(|g| g.describe()))
            .finish()
    }
}

impl GovernorDriver {
    /// A driver sampling `source` every `interval`; the receiver follows its state.
    pub fn new(
        config: GovernorConfig,
        source: Box<dyn PowerSource>,
        interval: Duration,
    ) -> (Self, watch::Receiver<PowerState>) {
        let governor = Governor::new(config);
        let (state, rx) = watch::channel(PowerState::from_governor(&governor, 0));
        (
            Self {
                governor,
                source,
                gpu: None,
                interval,
                observer: Arc::new(NoObserver),
                state,
                transitions: 0,
                source_failing: false,
            },
            rx,
        )
    }

    /// Caps this hardware as well as the sessions.
    pub fn with_gpu(mut self, gpu: Box<dyn PowerCap>) -> Self {
        self.gpu = Some(gpu);
        self
    }

    /// Reports samples and transitions to `observer` (the edge's metrics).
    pub fn with_observer(mut self, observer: Arc<dyn GovernorObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Another receiver of the state.
    pub fn subscribe(&self) -> watch::Receiver<PowerState> {
        self.state.subscribe()
    }

    /// The level now.
    pub fn level(&self) -> Level {
        self.governor.level()
    }

    /// Whether a hardware cap is still in use (false once it refused for good).
    pub fn has_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// One step: sample, decide, apply, publish. The async loop calls this every
    /// interval; tests call it directly.
    pub fn tick(&mut self) -> Option<Transition> {
        let sample = match self.source.sample() {
            Ok(s) => {
                if self.source_failing {
                    tracing::info!(source = %self.source.describe(), "power readings are back");
                    self.source_failing = false;
                }
                s
            }
            Err(e) => {
                self.observer.sample_failed(&e);
                if !self.source_failing {
                    tracing::warn!(
                        "power source failed: {e}; the governor holds its level ({}) until readings return",
                        self.governor.level()
                    );
                    self.source_failing = true;
                }
                return None;
            }
        };
        self.observer.sampled(sample.watts);
        let transition = self.governor.observe(sample.at, sample.watts);
        if let Some(t) = &transition {
            self.transitions += 1;
            tracing::info!(
                from = %t.from,
                to = %t.to,
                watts = format_args!("{:.1}", t.watts),
                budget_w = self.governor.config().budget_w,
                "power governor: {} -> {}",
                t.from,
                t.to
            );
            self.apply_hardware(&t.actions);
            self.observer.transition(t);
        }
        let state = PowerState::from_governor(&self.governor, self.transitions);
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        transition
    }

    fn apply_hardware(&mut self, actions: &[Action]) {
        for a in actions {
            let Some(gpu) = self.gpu.as_mut() else {
                return;
            };
            let result = match *a {
                Action::CapGpu(f) => gpu.apply(f).map(|what| {
                    tracing::info!("power governor: {what}");
                }),
                Action::RestoreGpu => gpu.restore().map(|()| {
                    tracing::info!("power governor: {} restored", gpu.describe());
                }),
                _ => Ok(()),
            };
            if let Err(e) = result {
                if e.is_permanent() {
                    tracing::warn!(
                        "power governor: cannot cap {}: {e}; keeping the software caps only",
                        gpu.describe()
                    );
                    self.gpu = None;
                } else {
                    tracing::warn!("power governor: {}: {e}", gpu.describe());
                }
            }
        }
    }

    /// Puts the GPU's own setting back (on shutdown).
    pub fn restore(&mut self) {
        if let Some(gpu) = self.gpu.as_mut() {
            match gpu.restore() {
                Ok(()) => tracing::debug!("{} restored", gpu.describe()),
                Err(e) => tracing::warn!("could not restore {}: {e}", gpu.describe()),
            }
        }
    }

    /// Runs on the current tokio runtime until `stop` becomes true (or its sender is
    /// dropped), then restores the GPU. Samples once at start.
    pub fn spawn(mut self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tracing::info!(
            source = %self.source.describe(),
            gpu = self.gpu.as_ref().map(|g| g.describe()).unwrap_or_else(|| "none".into()),
            budget_w = self.governor.config().budget_w,
            "power governor started"
        );
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = stop.wait_for(|s| *s) => { let _ = r; break; }
                    _ = ticker.tick() => { self.tick(); }
                }
            }
            self.restore();
        })
    }
}
