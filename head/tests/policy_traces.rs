//! The policy driven by traces: battery, link, edge advice and noise. Each test asserts
//! the sequence of decisions a simulated device loop gets.

mod policy_support;

use std::time::Duration;

use policy_support::{steady_sequence, step, step_with, switches, trace, Noise, World, SPLIT2_U4};
use splitstream_head::policy::{
    BatteryLevel, BatteryObservation, Decision, EdgeAccount, FrameObservation, ObservedOutcome,
    Plan, Policy, PolicyConfig, Reason,
};
use splitstream_transport::{Advice, Status};

fn battery(pct: f64) -> Option<BatteryObservation> {
    Some(BatteryObservation {
        capacity_pct: pct,
        charging: false,
    })
}

fn config(world: &World) -> PolicyConfig {
    PolicyConfig {
        power: world.power,
        // The traces below count probes at this interval.
        probe_every: 40,
        ..PolicyConfig::default()
    }
}

#[test]
fn battery_draining_from_full_to_critical_moves_from_latency_to_energy() {
    let world = World::jetson_on_cellular();
    let mut cfg = config(&world);
    cfg.latency_target = Some(Duration::from_millis(45));
    let mut policy = Policy::new(world.plans(), cfg).unwrap();
    let frames = 300;
    let mut decisions = Vec::new();
    let mut levels = Vec::new();
    for f in 0..frames {
        // 100% down to 1% over the run.
        let pct = 100.0 - 99.0 * f as f64 / (frames - 1) as f64;
        policy.observe_power(None, battery(pct));
        levels.push(policy.level());
        decisions.push(step(&mut policy, &world, 1.0));
    }
    let t = trace(&decisions);
    // Plenty: local is fastest (25 ms). Low with a 45 ms target: the split (39 ms)
    // uses less energy than local. Critical: offload, the least energy (57 ms < 1 s).
    assert_eq!(
        steady_sequence(&decisions),
        vec![Plan::Local, SPLIT2_U4, Plan::Offload],
        "{t}"
    );
    let first_low = levels.iter().position(|l| *l == BatteryLevel::Low).unwrap();
    let first_critical = levels
        .iter()
        .position(|l| *l == BatteryLevel::Critical)
        .unwrap();
    // Each change follows its level within the dwell (10 frames) plus a probe.
    let steady = |from: usize, plan: Plan| {
        decisions[from..]
            .iter()
            .position(|d| d.plan == plan && !matches!(d.reason, Reason::Probe))
            .map(|p| p + from)
            .unwrap()
    };
    let split_at = steady(first_low, SPLIT2_U4);
    let offload_at = steady(first_critical, Plan::Offload);
    assert!(
        split_at <= first_low + 11,
        "split at {split_at}, low from {first_low}: {t}"
    );
    assert!(
        offload_at <= first_critical + 11,
        "offload at {offload_at}, critical from {first_critical}: {t}"
    );
    assert_eq!(decisions[split_at].reason.to_string(), "battery_low:energy");
    assert_eq!(
        decisions[offload_at].reason.to_string(),
        "battery_critical:energy"
    );
    // Before the battery got low, the steady choice said why: least latency.
    assert!(decisions[20..first_low]
        .iter()
        .filter(|d| d.plan == Plan::Local)
        .all(|d| d.reason.to_string() == "battery_plenty:latency"));
    // The energy the policy predicts for its critical choice is the true minimum.
    let (_, e_off) = world.truth(2);
    let (_, e_local) = world.truth(0);
    let p = decisions[offload_at].predicted.unwrap();
    assert!(
        (p.energy_j - e_off).abs() < 0.01 * e_off,
        "{p:?} vs {e_off}"
    );
    assert!(p.energy_j < e_local);
}

#[test]
fn battery_without_latency_target_goes_straight_to_least_energy() {
    let world = World::jetson_on_cellular();
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut decisions = Vec::new();
    for f in 0..120 {
        let pct = if f < 60 { 80.0 } else { 30.0 };
        policy.observe_power(None, battery(pct));
        decisions.push(step(&mut policy, &world, 1.0));
    }
    assert_eq!(
        steady_sequence(&decisions),
        vec![Plan::Local, Plan::Offload],
        "{}",
        trace(&decisions)
    );
}

#[test]
fn battery_level_rises_only_past_the_margin_and_charging_is_plenty() {
    let world = World::jetson_on_cellular();
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    policy.observe_power(None, battery(39.0));
    assert_eq!(policy.level(), BatteryLevel::Low);
    policy.observe_power(None, battery(41.0));
    assert_eq!(
        policy.level(),
        BatteryLevel::Low,
        "within the 3-point margin"
    );
    policy.observe_power(None, battery(43.5));
    assert_eq!(policy.level(), BatteryLevel::Plenty);
    policy.observe_power(None, battery(10.0));
    assert_eq!(policy.level(), BatteryLevel::Critical);
    policy.observe_power(
        None,
        Some(BatteryObservation {
            capacity_pct: 10.0,
            charging: true,
        }),
    );
    assert_eq!(policy.level(), BatteryLevel::Plenty);
    policy.observe_power(None, None);
    assert_eq!(policy.level(), BatteryLevel::Plenty, "no battery: mains");
}

#[test]
fn link_dropping_from_100_to_2_mbits_and_back_moves_off_and_back_onto_offload() {
    let mut world = World::pi_on_wifi(100.0);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut decisions = Vec::new();
    let mut mbps_at = Vec::new();
    for f in 0..240 {
        world.mbps = if (80..160).contains(&f) { 2.0 } else { 100.0 };
        mbps_at.push(world.mbps);
        decisions.push(step(&mut policy, &world, 1.0));
    }
    let t = trace(&decisions);
    // 100 Mbit/s: the 30 KB JPEG goes in 2.4 ms, offload is fastest (19 ms). At 2 Mbit/s
    // it would take 120 ms: the 4-bit bottleneck at block 2 (2.4 KB) wins (79 ms) over
    // local (120 ms). Then back.
    assert_eq!(world.fastest(), Plan::Offload);
    assert_eq!(
        steady_sequence(&decisions),
        vec![Plan::Offload, SPLIT2_U4, Plan::Offload],
        "{t}"
    );
    // The drop is noticed on the first offloaded frame after it, so the switch comes
    // within the dwell; the recovery is seen in the split's own (2.4 KB) uploads.
    let moved = (80..160)
        .find(|&f| decisions[f].plan == SPLIT2_U4 && decisions[f].reason != Reason::Probe)
        .unwrap();
    assert!(moved <= 80 + 11, "moved at {moved}: {t}");
    let back = (160..240)
        .find(|&f| decisions[f].plan == Plan::Offload && decisions[f].reason != Reason::Probe)
        .unwrap();
    assert!(back <= 160 + 11, "back at {back}: {t}");
    // The bandwidth estimate followed the link.
    let est = policy.bandwidth_bps().unwrap();
    assert!((est - 100e6).abs() < 10e6, "{est}");
}

#[test]
fn bandwidth_is_learnt_from_round_trips_when_the_upload_time_is_unknown() {
    // The shell cannot time the upload (no pacer of its own): the policy takes the round
    // trip less RTT, queue and the edge's compute (predicted from local time / speedup).
    let world = World::pi_on_wifi(20.0);
    let mut cfg = config(&world);
    // The world's edge runs the whole model in 10 ms against 120 ms locally.
    cfg.edge_speedup = 12.0;
    let mut policy = Policy::new(world.plans(), cfg).unwrap();
    for _ in 0..30 {
        step_with(&mut policy, &world, world.rtt_s, 1.0, |_, outcome| {
            if let ObservedOutcome::Answered { upload, .. } = outcome {
                *upload = None;
            }
        });
    }
    let est = policy.bandwidth_bps().unwrap();
    assert!(
        (est - 20e6).abs() < 4e6,
        "estimated {est} bit/s for a 20 Mbit/s link"
    );
}

#[test]
fn bandwidth_and_edge_time_are_learnt_from_the_edges_account() {
    // The edge says how long it took (protocol 2): the policy needs no prior for the
    // edge's compute. The prior here is far off (speedup 1: the edge as slow as the
    // device), and the transport's RTT reads high, as it does while the uplink queues.
    let world = World::pi_on_wifi(20.0);
    let mut cfg = config(&world);
    cfg.edge_speedup = 1.0;
    let mut policy = Policy::new(world.plans(), cfg).unwrap();
    for _ in 0..30 {
        step_with(
            &mut policy,
            &world,
            world.rtt_s + 0.004,
            1.0,
            |d, outcome| {
                if let ObservedOutcome::Answered {
                    upload,
                    bytes,
                    edge,
                    ..
                } = outcome
                {
                    let m = world.modes.iter().find(|m| m.plan == d.plan).unwrap();
                    let up = upload.take().unwrap();
                    // The edge sees the payload arrive from its first packet on.
                    let first_packet = Duration::from_secs_f64(1200.0 * 8.0 / (world.mbps * 1e6));
                    *edge = Some(EdgeAccount {
                        receive: up.saturating_sub(first_packet),
                        serve: Duration::from_secs_f64(world.queue_s + m.edge_s),
                    });
                    assert!(*bytes > 0);
                }
            },
        );
    }
    let est = policy.bandwidth_bps().unwrap();
    assert!(
        (est - 20e6).abs() < 4e6,
        "estimated {est} bit/s for a 20 Mbit/s link"
    );
    // Its predictions are the world's truth, so it picks the truly fastest mode.
    for (i, m) in world.modes.iter().enumerate() {
        let p = policy.predict(i).unwrap();
        let (latency, _) = world.truth(i);
        assert!(
            (p.latency.as_secs_f64() - latency).abs() < 0.15 * latency,
            "{}: predicted {:?}, truly {latency} s",
            m.plan,
            p.latency
        );
    }
    assert_eq!(policy.decide().plan, world.fastest());
}

#[test]
fn edge_advice_local_is_obeyed_at_once_and_released() {
    let world = World::pi_on_wifi(100.0);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut decisions = Vec::new();
    for f in 0..150 {
        let advice = if (50..100).contains(&f) {
            Advice::PreferLocal
        } else {
            Advice::Normal
        };
        policy.observe_status(Some(&Status {
            advice,
            ..Status::default()
        }));
        decisions.push(step(&mut policy, &world, 1.0));
    }
    let t = trace(&decisions);
    assert_eq!(decisions[49].plan, Plan::Offload, "{t}");
    for d in &decisions[50..100] {
        assert_eq!(
            d.plan,
            Plan::Local,
            "no remote frame, probes included, under advice: {t}"
        );
        assert_eq!(d.reason.to_string(), "advice:local");
    }
    // Released: back to offload once the dwell since the forced switch has passed.
    let back = (100..150)
        .find(|&f| decisions[f].plan == Plan::Offload)
        .unwrap();
    assert_eq!(back, 100, "the dwell (10 frames) has long passed: {t}");
    // Offload's estimate is 50 frames old: the first two frames back measure it (a
    // probe: the first of them runs cold), and the next one switches on that figure.
    for f in [back, back + 1] {
        assert_eq!(
            (decisions[f].plan, decisions[f].reason.to_string()),
            (Plan::Offload, "probe".to_owned()),
            "{t}"
        );
    }
    assert_eq!(
        (
            decisions[back + 2].plan,
            decisions[back + 2].reason.to_string()
        ),
        (Plan::Offload, "battery_plenty:latency".to_owned()),
        "{t}"
    );
    assert_eq!(
        steady_sequence(&decisions),
        vec![Plan::Offload, Plan::Local, Plan::Offload]
    );
}

#[test]
fn edge_queue_delay_makes_local_worthwhile() {
    let world = World::pi_on_wifi(100.0);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut decisions = Vec::new();
    for f in 0..80 {
        let mut w = world.clone();
        if f >= 40 {
            // The edge reports a 200 ms queue, and frames do wait that long.
            w.queue_s = 0.2;
            policy.observe_status(Some(&Status {
                queue_delay_us: 200_000,
                ..Status::default()
            }));
        }
        decisions.push(step(&mut policy, &w, 1.0));
    }
    assert_eq!(
        steady_sequence(&decisions),
        vec![Plan::Offload, Plan::Local],
        "{}",
        trace(&decisions)
    );
    assert!(decisions[41..]
        .iter()
        .all(|d| d.plan == Plan::Local || d.reason == Reason::Dwell || d.reason == Reason::Probe));
}

#[test]
fn noisy_link_near_a_tie_does_not_flap() {
    // At 3.2 Mbit/s the split (about 72 ms) and offload (about 82 ms) are close; every
    // frame's times are scaled by up to +-25%.
    let mut world = World::pi_on_wifi(3.2);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut noise = Noise(42);
    let mut decisions: Vec<Decision> = Vec::new();
    for _ in 0..600 {
        world.mbps = 3.2 * (1.0 + 0.25 * noise.next());
        let scale = 1.0 + 0.25 * noise.next();
        decisions.push(step(&mut policy, &world, scale));
    }
    let t = trace(&decisions);
    assert!(
        switches(&decisions) <= 3,
        "{} switches: {t}",
        switches(&decisions)
    );
    // And switches are at least the dwell apart.
    let mut last: Option<(usize, Plan)> = None;
    for (i, d) in decisions.iter().enumerate() {
        if matches!(d.reason, Reason::Warmup | Reason::Probe) {
            continue;
        }
        if let Some((j, p)) = last {
            if p != d.plan {
                assert!(i - j >= 10 || j < 3, "switch at {i} after {j}: {t}");
                last = Some((i, d.plan));
            }
        } else {
            last = Some((i, d.plan));
        }
    }
    // Probes keep the other modes measured: two frames (the first runs cold) roughly
    // every 40th frame.
    let probes = decisions
        .iter()
        .filter(|d| d.reason == Reason::Probe)
        .count();
    assert!((20..=32).contains(&probes), "{probes} probe frames");
}

#[test]
fn lost_connection_runs_locally_and_a_fallback_backs_off_that_mode() {
    let world = World::pi_on_wifi(100.0);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    for _ in 0..20 {
        step(&mut policy, &world, 1.0);
    }
    policy.observe_link(false, None);
    let d = policy.decide();
    assert_eq!((d.plan, d.reason), (Plan::Local, Reason::Disconnected));
    policy.observe_frame(&world.observe(&d, 1.0));
    // Reconnected, but the next offloaded frame falls back (the edge dropped it).
    let mut decisions = Vec::new();
    for i in 0..40 {
        policy.observe_link(true, Some(Duration::from_millis(4)));
        let d = policy.decide();
        let obs = if d.plan == Plan::Offload && i < 12 {
            FrameObservation {
                candidate: d.candidate,
                head: Duration::from_millis(3),
                outcome: ObservedOutcome::FellBack,
            }
        } else {
            world.observe(&d, 1.0)
        };
        policy.observe_frame(&obs);
        decisions.push(d);
    }
    let t = trace(&decisions);
    let first_off = decisions
        .iter()
        .position(|d| d.plan == Plan::Offload)
        .unwrap();
    assert!(
        decisions[first_off + 1].plan != Plan::Offload
            && decisions[first_off + 1].reason == Reason::Fallback,
        "{t}"
    );
    // Offload is left alone for the backoff (20 frames), then used again.
    assert!(
        decisions[first_off + 1..first_off + 20]
            .iter()
            .all(|d| d.plan != Plan::Offload),
        "{t}"
    );
    assert!(
        decisions[first_off + 20..]
            .iter()
            .any(|d| d.plan == Plan::Offload),
        "{t}"
    );
}

#[test]
fn power_readings_during_local_frames_refine_compute_watts() {
    let world = World::pi_on_wifi(100.0);
    let mut policy = Policy::new(vec![Plan::Local], config(&world)).unwrap();
    for _ in 0..20 {
        let d = policy.decide();
        policy.observe_frame(&world.observe(&d, 1.0));
        policy.observe_power(Some(9.0), None);
    }
    assert!((policy.power_model().compute_w - 9.0).abs() < 0.01);
}

#[test]
fn fixed_policy_always_answers_its_plan() {
    let mut p = Policy::fixed(Plan::Offload, PolicyConfig::default());
    p.observe_status(Some(&Status {
        advice: Advice::PreferLocal,
        ..Status::default()
    }));
    for _ in 0..5 {
        let d = p.decide();
        assert_eq!(
            (d.plan, d.reason.to_string()),
            (Plan::Offload, "fixed".to_owned())
        );
    }
}

#[test]
fn policy_without_local_is_refused() {
    assert!(Policy::new(vec![Plan::Offload], PolicyConfig::default()).is_err());
    assert!(Policy::new(vec![], PolicyConfig::default()).is_err());
}

#[test]
fn payloads_too_small_to_time_the_link_are_predicted_from_their_round_trips() {
    // An 800-byte bottleneck never times the link; the mode is still chosen on its
    // measured round trip rather than measured forever.
    let mut world = World::pi_on_wifi(100.0);
    world.modes.truncate(2);
    world.modes[1].bytes = 800;
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let decisions: Vec<Decision> = (0..30).map(|_| step(&mut policy, &world, 1.0)).collect();
    assert_eq!(policy.bandwidth_bps(), None);
    let t = trace(&decisions);
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d.reason == Reason::Warmup)
            .count(),
        4,
        "two warmup frames per mode: {t}"
    );
    assert_eq!(steady_sequence(&decisions), vec![SPLIT2_U4], "{t}");
}

#[test]
fn a_cold_first_frame_does_not_condemn_a_mode() {
    // Each mode's first frame runs three times slower (cold caches, threads starting);
    // on a fast link with a slow edge queue, local is truly fastest. The policy must
    // find it at once, not after a probe or two.
    let mut world = World::pi_on_wifi(100.0);
    world.queue_s = 0.150;
    assert_eq!(world.fastest(), Plan::Local);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut seen = std::collections::HashSet::new();
    let decisions: Vec<Decision> = (0..40)
        .map(|_| {
            policy.observe_link(true, Some(Duration::from_secs_f64(world.rtt_s)));
            let d = policy.decide();
            let scale = if seen.insert(d.plan) { 3.0 } else { 1.0 };
            policy.observe_frame(&world.observe(&d, scale));
            d
        })
        .collect();
    let t = trace(&decisions);
    assert_eq!(steady_sequence(&decisions), vec![Plan::Local], "{t}");
    let local = policy.predict(0).unwrap().latency.as_secs_f64();
    assert!((local - world.truth(0).0).abs() < 1e-9, "{local} {t}");
}

#[test]
fn far_worse_modes_are_probed_less_often_but_still_probed() {
    // On a fast link offload takes about 20 ms; split about 3.5 times and local 6 times
    // longer. Probing them every 40th frame would spend two slow frames each time: they
    // wait up to four times longer, and are still measured now and then (a probe is two
    // frames, the first runs cold).
    let world = World::pi_on_wifi(100.0);
    assert_eq!(world.fastest(), Plan::Offload);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let decisions: Vec<Decision> = (0..400).map(|_| step(&mut policy, &world, 1.0)).collect();
    let t = trace(&decisions);
    let probes = |plan: Plan| {
        decisions
            .iter()
            .filter(|d| d.reason == Reason::Probe && d.plan == plan)
            .count()
    };
    let (local, split) = (probes(Plan::Local), probes(SPLIT2_U4));
    assert!((2..=6).contains(&local), "{local} local probe frames: {t}");
    assert!((2..=6).contains(&split), "{split} split probe frames: {t}");
    assert_eq!(steady_sequence(&decisions), vec![Plan::Offload], "{t}");
}

#[test]
fn a_recovered_link_is_found_even_when_the_split_payload_cannot_time_it() {
    // As above, but the bottleneck is 800 bytes: while the split runs, no frame times the
    // link, so the recovery must be found by probing offload, at the probe interval
    // rather than the longer one its (stale, 2 Mbit/s) cost would earn.
    let mut world = World::pi_on_wifi(100.0);
    world.modes[1].bytes = 800;
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    let mut decisions = Vec::new();
    for f in 0..300 {
        world.mbps = if (80..160).contains(&f) { 2.0 } else { 100.0 };
        decisions.push(step(&mut policy, &world, 1.0));
    }
    let t = trace(&decisions);
    assert_eq!(
        steady_sequence(&decisions),
        vec![Plan::Offload, SPLIT2_U4, Plan::Offload],
        "{t}"
    );
    let back = (160..300)
        .find(|&f| decisions[f].plan == Plan::Offload && decisions[f].reason != Reason::Probe)
        .unwrap();
    // The next probe slot after the recovery, its two frames, then the switch.
    assert!(back <= 160 + 40 + 3, "back at {back}: {t}");
}

#[test]
fn an_edge_claiming_absurd_times_cannot_skew_predictions_past_the_round_trip() {
    // A broken (or lying) edge says every frame took it ten seconds to receive and ten
    // to serve. Its figures are capped at the measured round trip, so the predictions
    // stay near what the device itself measured.
    let world = World::pi_on_wifi(20.0);
    let mut policy = Policy::new(world.plans(), config(&world)).unwrap();
    for _ in 0..30 {
        step_with(&mut policy, &world, world.rtt_s, 1.0, |_, outcome| {
            if let ObservedOutcome::Answered { upload, edge, .. } = outcome {
                *upload = None;
                *edge = Some(EdgeAccount {
                    receive: Duration::from_secs(10),
                    serve: Duration::from_secs(10),
                });
            }
        });
    }
    for (i, m) in world.modes.iter().enumerate() {
        let p = policy.predict(i).unwrap();
        let (latency, _) = world.truth(i);
        let predicted = p.latency.as_secs_f64();
        assert!(
            predicted.is_finite() && predicted < 1.5 * latency + world.rtt_s,
            "{}: predicted {predicted} s, truly {latency} s",
            m.plan
        );
    }
}
