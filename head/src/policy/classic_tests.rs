//! The non-neural fallback in the deterministic core: chosen exactly when the battery
//! is critical and the edge cannot answer, and left as soon as either changes.

use std::time::Duration;

use splitstream_transport::Advice;

use super::*;

fn battery(pct: f64) -> Option<BatteryObservation> {
    Some(BatteryObservation {
        capacity_pct: pct,
        charging: false,
    })
}

/// Local, offload and the fallback, with every mode measured: local 120 ms, offload
/// 40 ms round trips, the fallback 15 ms.
fn measured() -> Policy {
    let mut p = Policy::new(
        vec![Plan::Local, Plan::Offload, Plan::Classic],
        PolicyConfig::default(),
    )
    .unwrap();
    p.observe_link(true, Some(Duration::from_millis(5)));
    for _ in 0..6 {
        let d = p.decide();
        let outcome = match d.plan {
            Plan::Offload => ObservedOutcome::Answered {
                bytes: 20_000,
                upload: None,
                round_trip: Duration::from_millis(35),
                edge: None,
            },
            _ => ObservedOutcome::Local,
        };
        let head = match d.plan {
            Plan::Local => Duration::from_millis(120),
            Plan::Classic => Duration::from_millis(15),
            _ => Duration::from_millis(5),
        };
        p.observe_frame(&FrameObservation {
            candidate: d.candidate,
            head,
            outcome,
        });
    }
    p
}

#[test]
fn classic_is_never_chosen_while_the_edge_answers_or_the_battery_lasts() {
    let mut p = measured();
    for pct in [90.0, 30.0, 5.0] {
        p.observe_power(None, battery(pct));
        for _ in 0..30 {
            let d = p.decide();
            assert_ne!(d.plan, Plan::Classic, "at {pct}%: {d:?}");
        }
    }
    // Disconnected with plenty of battery: the network, locally.
    p.observe_power(None, battery(90.0));
    p.observe_link(false, None);
    let d = p.decide();
    assert_eq!((d.plan, d.reason), (Plan::Local, Reason::Disconnected));
}

#[test]
fn critical_battery_and_no_connection_choose_classic_at_once() {
    let mut p = measured();
    p.observe_power(None, battery(10.0));
    assert_eq!(p.level(), BatteryLevel::Critical);
    p.observe_link(false, None);
    let d = p.decide();
    assert_eq!(d.plan, Plan::Classic);
    assert_eq!(d.reason, Reason::Classic(EdgeDown::Disconnected));
    assert_eq!(
        d.reason.to_string(),
        "battery_critical:classic:disconnected"
    );
    // It stays while nothing changes (no probe, no warmup elsewhere).
    for _ in 0..200 {
        assert_eq!(p.decide().plan, Plan::Classic);
    }
}

#[test]
fn the_edge_advising_local_or_draining_counts_as_unreachable() {
    for (advice, why) in [
        (Advice::PreferLocal, EdgeDown::AdviceLocal),
        (Advice::Draining, EdgeDown::AdviceDraining),
    ] {
        let mut p = measured();
        p.observe_power(None, battery(4.0));
        p.observe_status(Some(&Status {
            advice,
            ..Status::default()
        }));
        let d = p.decide();
        assert_eq!((d.plan, d.reason), (Plan::Classic, Reason::Classic(why)));
    }
}

#[test]
fn every_remote_mode_failing_counts_as_unreachable() {
    let mut p = measured();
    p.observe_power(None, battery(4.0));
    // The offload candidate's frame fell back: it is blocked for the backoff.
    p.observe_frame(&FrameObservation {
        candidate: 1,
        head: Duration::from_millis(5),
        outcome: ObservedOutcome::FellBack,
    });
    let d = p.decide();
    assert_eq!(
        (d.plan, d.reason),
        (Plan::Classic, Reason::Classic(EdgeDown::Failing))
    );
    assert_eq!(
        d.reason.to_string(),
        "battery_critical:classic:edge_failing"
    );
}

#[test]
fn classic_is_left_when_the_charger_or_the_edge_returns() {
    let mut p = measured();
    p.observe_power(None, battery(4.0));
    p.observe_link(false, None);
    assert_eq!(p.decide().plan, Plan::Classic);
    // Plugged in: the objective's choice on the next frame, without a dwell.
    p.observe_power(
        None,
        Some(BatteryObservation {
            capacity_pct: 4.0,
            charging: true,
        }),
    );
    let d = p.decide();
    assert_eq!((d.plan, d.reason), (Plan::Local, Reason::Disconnected));

    let mut p = measured();
    p.observe_power(None, battery(4.0));
    p.observe_link(false, None);
    assert_eq!(p.decide().plan, Plan::Classic);
    p.observe_link(true, Some(Duration::from_millis(5)));
    let d = p.decide();
    assert_ne!(d.plan, Plan::Classic);
    assert_ne!(d.reason, Reason::Fallback, "{d:?}");
}

#[test]
fn without_a_fallback_a_critical_battery_and_no_edge_run_the_network() {
    let mut p = Policy::new(vec![Plan::Local, Plan::Offload], PolicyConfig::default()).unwrap();
    p.observe_power(None, battery(4.0));
    p.observe_link(false, None);
    let d = p.decide();
    assert_eq!((d.plan, d.reason), (Plan::Local, Reason::Disconnected));
}

#[test]
fn classic_is_local_to_the_device_and_named_in_the_frame_line() {
    assert!(!Plan::Classic.is_remote());
    assert_eq!(Plan::Classic.mode().as_str(), "classic");
    assert_eq!(Plan::Classic.to_string(), "classic");
}
