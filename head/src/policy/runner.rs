//! The thin async shell around [`Policy`]: before each frame it tells the policy the
//! connection's state, round trip and the edge's status, asks where the frame runs,
//! moves the session to that split and codec (a `Reconfigure`, no reconnect), runs the
//! frame on the [`Device`] of that mode, and tells the policy what it measured.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use splitstream_transport::Client;

use super::{Decision, EdgeAccount, FrameObservation, ObservedOutcome, Plan, Policy};
use crate::classic::ClassicHead;
use crate::device::{Device, DeviceModel, FrameResult, ModelRunError, RunMode};
use crate::offload::JpegSettings;
use crate::source::Frame;
use crate::stats::FrameRecord;

/// The candidates of `--policy auto`: local, a split at each of `points` with `codec`,
/// and offload.
pub fn auto_plans(points: &[usize], codec: crate::device::CodecChoice) -> Vec<Plan> {
    let mut plans = vec![Plan::Local];
    plans.extend(points.iter().map(|&point| Plan::Split { point, codec }));
    plans.push(Plan::Offload);
    plans
}

/// One device per plan, in order: splits cut where `model.split_at` says (the learned
/// bottleneck at its point), offload as JPEG with `jpeg`; the remote ones share
/// `client`. `budget` is each frame's latency budget at the edge. [`Plan::Classic`]
/// needs its classifier: [`devices_with_fallback`].
pub fn devices_for(
    model: &DeviceModel,
    plans: &[Plan],
    client: Option<&Arc<Client>>,
    budget: Duration,
    jpeg: JpegSettings,
) -> Result<Vec<Device>, ModelRunError> {
    devices_with_fallback(model, plans, client, budget, jpeg, None)
}

/// [`devices_for`], with the non-neural fallback's classifier for [`Plan::Classic`].
pub fn devices_with_fallback(
    model: &DeviceModel,
    plans: &[Plan],
    client: Option<&Arc<Client>>,
    budget: Duration,
    jpeg: JpegSettings,
    classic: Option<&ClassicHead>,
) -> Result<Vec<Device>, ModelRunError> {
    plans
        .iter()
        .map(|p| {
            let mode = match *p {
                Plan::Local => RunMode::Local,
                Plan::Split { point, codec } => RunMode::Split {
                    at: model.split_at(point)?,
                    codec,
                },
                Plan::Offload => RunMode::Offload { jpeg },
                Plan::Classic => {
                    RunMode::Classic(classic.cloned().ok_or(ModelRunError::NoFallback)?)
                }
            };
            let client = if p.is_remote() { client.cloned() } else { None };
            Ok(Device::new(model.clone(), mode, client, budget))
        })
        .collect()
}

/// Counts of what the policy decided in a run, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyTally {
    /// Frames per planned mode (`local`, `split@2/u8`, `offload`), fallbacks included.
    pub decisions: BTreeMap<String, u64>,
    /// Frames per reason.
    pub reasons: BTreeMap<String, u64>,
    /// Session reconfigurations (mode changes on the wire).
    pub reconfigurations: u64,
}

/// Runs frames where a [`Policy`] says.
pub struct PolicyRunner {
    policy: Policy,
    devices: Vec<Device>,
    client: Option<Arc<Client>>,
    seq: u64,
    tally: PolicyTally,
    last: Option<Decision>,
}

impl std::fmt::Debug for PolicyRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRunner")
            .field("plans", &self.policy.plans())
            .field("connected", &self.client.is_some())
            .finish()
    }
}

/// Errors building a runner.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NewRunnerError {
    /// Not one device per plan.
    #[error(
        "the policy has {plans} modes but {devices} devices were given: one per mode, in order"
    )]
    Mismatch {
        /// Plans.
        plans: usize,
        /// Devices.
        devices: usize,
    },
    /// A device's mode is not its plan's.
    #[error("device {index} runs {device} but the policy's mode there is {plan}")]
    WrongMode {
        /// Index.
        index: usize,
        /// The device's mode.
        device: String,
        /// The plan.
        plan: String,
    },
}

impl PolicyRunner {
    /// `devices[i]` runs `policy.plans()[i]`; all remote ones share `client` (the
    /// session is reconfigured when the mode changes).
    pub fn new(
        policy: Policy,
        devices: Vec<Device>,
        client: Option<Arc<Client>>,
    ) -> Result<Self, NewRunnerError> {
        if devices.len() != policy.plans().len() {
            return Err(NewRunnerError::Mismatch {
                plans: policy.plans().len(),
                devices: devices.len(),
            });
        }
        for (index, (d, p)) in devices.iter().zip(policy.plans()).enumerate() {
            if d.mode().mode() != p.mode() {
                return Err(NewRunnerError::WrongMode {
                    index,
                    device: d.mode().mode().to_string(),
                    plan: p.to_string(),
                });
            }
        }
        Ok(Self {
            policy,
            devices,
            client,
            seq: 0,
            tally: PolicyTally::default(),
            last: None,
        })
    }

    /// The policy (to feed power readings, or read its estimates).
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What was decided so far.
    pub fn tally(&self) -> &PolicyTally {
        &self.tally
    }

    /// The last decision.
    pub fn last_decision(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// Decides, runs and learns from one frame. The record's `why` is the decision's
    /// reason; `mode` says where the frame ran in the end (a fallback says `local`).
    pub async fn process(&mut self, frame: &Frame) -> FrameResult {
        if let Some(c) = &self.client {
            let connected = c.state().borrow().is_connected();
            self.policy.observe_link(connected, c.rtt());
            let status = *c.status().borrow();
            self.policy.observe_status(status.as_ref());
        } else {
            self.policy.observe_link(false, None);
        }
        let d = self.policy.decide();
        self.last = Some(d);
        *self.tally.decisions.entry(d.plan.to_string()).or_default() += 1;
        *self.tally.reasons.entry(d.reason.to_string()).or_default() += 1;

        let mut reconfigure_failed = None;
        if let (Some(client), Some((split, codec))) =
            (&self.client, self.devices[d.candidate].mode().wire())
        {
            let cur = client.stream_config();
            if cur.split != split || cur.codec != codec {
                match client.reconfigure(split, codec).await {
                    Ok(_) => self.tally.reconfigurations += 1,
                    Err(e) => {
                        reconfigure_failed =
                            Some(format!("the edge did not take the new mode: {e}"))
                    }
                }
            }
        }
        let (mut result, outcome) = match reconfigure_failed {
            Some(why) => {
                // Sending in the old session's configuration would be misread: run
                // this frame on the local device instead.
                let local = self
                    .policy
                    .plans()
                    .iter()
                    .position(|p| *p == Plan::Local)
                    .unwrap_or(0);
                let mut r = self.devices[local].process(frame).await;
                r.record.fallback = Some(why);
                (r, ObservedOutcome::FellBack)
            }
            None => {
                let r = self.devices[d.candidate].process(frame).await;
                let outcome = ObservedOutcome::of_record(&r.record, d.plan.is_remote());
                (r, outcome)
            }
        };
        self.policy.observe_frame(&FrameObservation {
            candidate: d.candidate,
            head: secs_ms(result.record.head_ms),
            outcome,
        });
        result.record.seq = self.seq;
        self.seq += 1;
        result.record.why = Some(d.reason.to_string());
        result
    }
}

impl ObservedOutcome {
    /// What a device's record of a frame tells the policy (`remote`: the frame was
    /// planned for the edge).
    pub fn of_record(rec: &FrameRecord, remote: bool) -> Self {
        if rec.fallback.is_some() {
            Self::FellBack
        } else if remote {
            Self::Answered {
                bytes: rec.bytes_sent,
                upload: None,
                round_trip: secs_ms(rec.transfer_ms + rec.tail_ms),
                edge: rec.edge_receive_ms.map(|receive| EdgeAccount {
                    receive: secs_ms(receive),
                    serve: secs_ms(rec.tail_ms),
                }),
            }
        } else {
            Self::Local
        }
    }
}

fn secs_ms(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_secs_f64(ms.min(1e9) * 1e-3)
    } else {
        Duration::ZERO
    }
}
