//! What the governor's [`PowerState`] means for one frame, one batch and one status
//! message: the deterministic rules the edge's session tasks, worker and status task
//! apply.

use std::time::{Duration, Instant};

use splitstream_transport::{Advice, Status};

use super::core::SessionCap;
use super::driver::PowerState;
use super::priority::Priority;
use super::rate::TokenBucket;

/// Why a frame was shed, for the device's `Dropped` message and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// Over T2: offloaded whole frames are not taken.
    OverBudgetOffload,
    /// Over T2: low-priority sessions send nothing.
    OverBudgetLowPriority,
    /// Over T1: this low-priority session is over its frame rate.
    RateCapped,
}

impl ShedReason {
    /// The snake_case name, the `reason` label of the shed counter.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::OverBudgetOffload => "over_budget_offload",
            ShedReason::OverBudgetLowPriority => "over_budget_low_priority",
            ShedReason::RateCapped => "rate_capped",
        }
    }

    /// The sentence the device is told.
    pub fn message(self) -> &'static str {
        match self {
            ShedReason::OverBudgetOffload => {
                "shed: the edge is over its power budget and takes no offloaded frames; run locally"
            }
            ShedReason::OverBudgetLowPriority => {
                "shed: the edge is over its power budget and serves no low-priority devices; run locally"
            }
            ShedReason::RateCapped => {
                "shed: the edge is near its power budget and caps this low-priority device's frame rate"
            }
        }
    }
}

/// One session's admission under the governor.
#[derive(Clone, Debug)]
pub struct SessionGate {
    priority: Priority,
    bucket: Option<TokenBucket>,
}

impl SessionGate {
    /// A gate for a session of this priority.
    pub fn new(priority: Priority) -> Self {
        Self {
            priority,
            bucket: None,
        }
    }

    /// The session's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Whether a new frame (`offload`: a whole frame for the full model) is taken at
    /// `now` under `state`, or why not.
    pub fn admit(
        &mut self,
        state: &PowerState,
        offload: bool,
        now: Instant,
    ) -> Result<(), ShedReason> {
        if state.sheds() {
            if self.priority == Priority::Low {
                return Err(ShedReason::OverBudgetLowPriority);
            }
            if offload {
                return Err(ShedReason::OverBudgetOffload);
            }
        }
        match (self.priority, state.low_priority_cap) {
            (Priority::Low, Some(cap)) => {
                let bucket = self
                    .bucket
                    .get_or_insert_with(|| TokenBucket::new(cap.max_rate_hz, 1.0));
                if bucket.rate_hz() != cap.max_rate_hz {
                    *bucket = TokenBucket::new(cap.max_rate_hz, 1.0);
                }
                if bucket.allow(now) {
                    Ok(())
                } else {
                    Err(ShedReason::RateCapped)
                }
            }
            _ => {
                // A new cap period starts with a fresh bucket.
                self.bucket = None;
                Ok(())
            }
        }
    }
}

/// Splits a batch's items (given by priority, in batch order) into the groups to
/// compute one after another: without a cap, one group of everything; with one, the
/// high-priority items together and the low-priority ones in groups of at most
/// `cap.max_batch`. Returns indices into `priorities`.
pub fn plan_batch(priorities: &[Priority], cap: Option<SessionCap>) -> Vec<Vec<usize>> {
    let all: Vec<usize> = (0..priorities.len()).collect();
    let Some(cap) = cap else {
        return if all.is_empty() {
            Vec::new()
        } else {
            vec![all]
        };
    };
    let (high, low): (Vec<usize>, Vec<usize>) = all
        .into_iter()
        .partition(|&i| priorities.get(i) == Some(&Priority::High));
    let mut groups = Vec::new();
    if !high.is_empty() {
        groups.push(high);
    }
    groups.extend(low.chunks(cap.max_batch.max(1)).map(<[usize]>::to_vec));
    groups
}

/// The `Status` devices are told: load and queue delay as measured, power headroom and
/// advice from the governor (`Draining` overrides it during shutdown).
pub fn status(state: &PowerState, load: f32, queue_delay: Duration, draining: bool) -> Status {
    let headroom = if state.headroom.is_finite() {
        state.headroom.clamp(-10.0, 1.0) as f32
    } else {
        1.0
    };
    Status {
        load: if load.is_finite() {
            load.clamp(0.0, 1.0)
        } else {
            0.0
        },
        queue_delay_us: u64::try_from(queue_delay.as_micros()).unwrap_or(u64::MAX),
        power_headroom: headroom,
        advice: if draining {
            Advice::Draining
        } else {
            state.advice()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governor::core::Level;

    fn state(level: Level) -> PowerState {
        PowerState {
            level,
            watts: Some(90.0),
            budget_w: 100.0,
            headroom: 0.1,
            low_priority_cap: (level >= Level::Capped).then_some(SessionCap {
                max_batch: 2,
                max_rate_hz: 2.0,
            }),
            transitions: 1,
        }
    }

    #[test]
    fn shedding_refuses_offload_and_low_priority_but_not_high_priority_splits() {
        let now = Instant::now();
        let s = state(Level::Shedding);
        let mut high = SessionGate::new(Priority::High);
        let mut low = SessionGate::new(Priority::Low);
        assert_eq!(high.admit(&s, false, now), Ok(()));
        assert_eq!(
            high.admit(&s, true, now),
            Err(ShedReason::OverBudgetOffload)
        );
        assert_eq!(
            low.admit(&s, false, now),
            Err(ShedReason::OverBudgetLowPriority)
        );
    }

    #[test]
    fn capping_limits_the_rate_of_low_priority_sessions_only() {
        let t0 = Instant::now();
        let s = state(Level::Capped);
        let mut high = SessionGate::new(Priority::High);
        let mut low = SessionGate::new(Priority::Low);
        // 10 frames in one second at 2 Hz: the burst of 1 plus 2 more.
        let admitted = (0..10)
            .filter(|i| {
                low.admit(&s, false, t0 + Duration::from_millis(100 * i + 50))
                    .is_ok()
            })
            .count();
        assert!((2..=3).contains(&admitted), "{admitted}");
        assert!((0..10).all(|_| high.admit(&s, true, t0).is_ok()));
        // Released: everything goes again.
        let n = state(Level::Normal);
        assert!((0..10).all(|_| low.admit(&n, false, t0).is_ok()));
    }

    #[test]
    fn capped_batches_keep_high_priority_together_and_chunk_low_priority() {
        use Priority::{High as H, Low as L};
        let cap = SessionCap {
            max_batch: 2,
            max_rate_hz: 5.0,
        };
        assert_eq!(
            plan_batch(&[L, H, L, L, H, L, L], Some(cap)),
            [vec![1, 4], vec![0, 2], vec![3, 5], vec![6]]
        );
        assert_eq!(plan_batch(&[L, H, L], None), [vec![0, 1, 2]]);
        assert!(plan_batch(&[], Some(cap)).is_empty());
    }

    #[test]
    fn status_carries_headroom_and_advice() {
        let s = status(
            &state(Level::Shedding),
            0.5,
            Duration::from_millis(3),
            false,
        );
        assert_eq!(s.advice, Advice::PreferLocal);
        assert_eq!(s.queue_delay_us, 3000);
        assert!((s.power_headroom - 0.1).abs() < 1e-6);
        let s = status(&PowerState::ungoverned(), f32::NAN, Duration::ZERO, true);
        assert_eq!(
            (s.advice, s.load, s.power_headroom),
            (Advice::Draining, 0.0, 1.0)
        );
    }
}
