//! A simulated device, link and edge for the policy's trace tests: each frame the
//! policy decides, the world answers with what a paced link and an edge of known
//! speed would give (the observations a real device loop would feed), and the true
//! latency and energy of every mode can be computed to check the objective.
#![allow(dead_code)]

use std::time::Duration;

use splitstream_head::device::CodecChoice;
use splitstream_head::policy::{
    Decision, FrameObservation, ObservedOutcome, Plan, Policy, PowerModel, Reason,
};

/// One mode's true costs.
#[derive(Clone, Copy, Debug)]
pub struct TrueMode {
    pub plan: Plan,
    /// Device compute before sending (whole model when local), seconds.
    pub head_s: f64,
    /// Bytes sent.
    pub bytes: u64,
    /// Edge compute, seconds.
    pub edge_s: f64,
}

/// The simulated world.
#[derive(Clone, Debug)]
pub struct World {
    pub modes: Vec<TrueMode>,
    pub mbps: f64,
    pub rtt_s: f64,
    pub queue_s: f64,
    pub power: PowerModel,
}

pub const SPLIT2_U4: Plan = Plan::Split {
    point: 2,
    codec: CodecChoice::U4,
};

impl World {
    /// A Raspberry-Pi-class device on Wi-Fi: slow local compute, a fast edge; the
    /// JPEG is larger than the 4-bit bottleneck at block 2.
    pub fn pi_on_wifi(mbps: f64) -> Self {
        Self {
            modes: vec![
                TrueMode {
                    plan: Plan::Local,
                    head_s: 0.120,
                    bytes: 0,
                    edge_s: 0.0,
                },
                TrueMode {
                    plan: SPLIT2_U4,
                    head_s: 0.060,
                    bytes: 2_400,
                    edge_s: 0.005,
                },
                TrueMode {
                    plan: Plan::Offload,
                    head_s: 0.003,
                    bytes: 30_000,
                    edge_s: 0.010,
                },
            ],
            mbps,
            rtt_s: 0.004,
            queue_s: 0.0,
            power: PowerModel::default(),
        }
    }

    /// A Jetson-class device on a cellular link: fast but power-hungry compute, so the
    /// fastest mode (local) is not the most frugal (offload).
    pub fn jetson_on_cellular() -> Self {
        Self {
            modes: vec![
                TrueMode {
                    plan: Plan::Local,
                    head_s: 0.025,
                    bytes: 0,
                    edge_s: 0.0,
                },
                TrueMode {
                    plan: SPLIT2_U4,
                    head_s: 0.0125,
                    bytes: 2_400,
                    edge_s: 0.005,
                },
                TrueMode {
                    plan: Plan::Offload,
                    head_s: 0.003,
                    bytes: 30_000,
                    edge_s: 0.010,
                },
            ],
            mbps: 10.0,
            rtt_s: 0.020,
            queue_s: 0.0,
            power: PowerModel {
                compute_w: 15.0,
                ..PowerModel::default()
            },
        }
    }

    pub fn plans(&self) -> Vec<Plan> {
        self.modes.iter().map(|m| m.plan).collect()
    }

    fn upload_s(&self, m: &TrueMode) -> f64 {
        m.bytes as f64 * 8.0 / (self.mbps * 1e6)
    }

    /// True latency and energy of mode `i` now.
    pub fn truth(&self, i: usize) -> (f64, f64) {
        let m = &self.modes[i];
        if m.plan == Plan::Local {
            return (m.head_s, self.power.compute_w * m.head_s);
        }
        let up = self.upload_s(m);
        let wait = self.rtt_s + self.queue_s + m.edge_s;
        let e =
            self.power.compute_w * m.head_s + self.power.radio_w * up + self.power.wait_w * wait;
        (m.head_s + up + wait, e)
    }

    /// The fastest and the most frugal mode now.
    pub fn fastest(&self) -> Plan {
        let i = (0..self.modes.len())
            .min_by(|&a, &b| self.truth(a).0.total_cmp(&self.truth(b).0))
            .unwrap();
        self.modes[i].plan
    }

    /// What the device loop would report after running `d` (the scale stretches every
    /// time, for noisy traces).
    pub fn observe(&self, d: &Decision, scale: f64) -> FrameObservation {
        let i = self
            .modes
            .iter()
            .position(|m| m.plan == d.plan)
            .expect("the world knows every plan");
        let m = &self.modes[i];
        let head = Duration::from_secs_f64(m.head_s * scale);
        let outcome = if m.plan == Plan::Local {
            ObservedOutcome::Local
        } else {
            let up = self.upload_s(m) * scale;
            ObservedOutcome::Answered {
                bytes: m.bytes,
                upload: Some(Duration::from_secs_f64(up)),
                round_trip: Duration::from_secs_f64(
                    up + (self.rtt_s + self.queue_s + m.edge_s) * scale,
                ),
                edge: None,
            }
        };
        FrameObservation {
            candidate: d.candidate,
            head,
            outcome,
        }
    }
}

/// One step: the policy sees the link, decides, the world answers.
pub fn step(policy: &mut Policy, world: &World, scale: f64) -> Decision {
    step_with(policy, world, world.rtt_s, scale, |_, _| {})
}

/// One step where the transport reports `rtt_s` and `edit` changes the remote outcome
/// the device loop reports (what the shell can time, what the edge says).
pub fn step_with(
    policy: &mut Policy,
    world: &World,
    rtt_s: f64,
    scale: f64,
    edit: impl FnOnce(&Decision, &mut ObservedOutcome),
) -> Decision {
    policy.observe_link(true, Some(Duration::from_secs_f64(rtt_s)));
    let d = policy.decide();
    let mut obs = world.observe(&d, scale);
    edit(&d, &mut obs.outcome);
    policy.observe_frame(&obs);
    d
}

/// The decisions the objective made (warmup and probe frames left out), with runs of
/// the same plan collapsed: the sequence the tests assert.
pub fn steady_sequence(decisions: &[Decision]) -> Vec<Plan> {
    let mut out: Vec<Plan> = Vec::new();
    for d in decisions {
        if matches!(d.reason, Reason::Warmup | Reason::Probe) {
            continue;
        }
        if out.last() != Some(&d.plan) {
            out.push(d.plan);
        }
    }
    out
}

/// Switches of the steady plan (probes and warmup left out).
pub fn switches(decisions: &[Decision]) -> usize {
    steady_sequence(decisions).len().saturating_sub(1)
}

/// The reasons as strings, for messages.
pub fn trace(decisions: &[Decision]) -> String {
    decisions
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{i}:{}:{}", d.plan, d.reason))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A small deterministic noise source (SplitMix64) in [-1, 1).
pub struct Noise(pub u64);

impl Noise {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}
