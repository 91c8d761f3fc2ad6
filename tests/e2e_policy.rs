//! The device policy against a real edge whose power governor replays a trace that
//! crosses T2: the edge pushes `PreferLocal` in its status, devices running
//! `--policy auto` go local at once, and come back to the edge after the governor
//! releases; every frame gets a result.

mod e2e_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_support::*;
use splitstream_head::device::CodecChoice;
use splitstream_head::offload::JpegSettings;
use splitstream_head::policy::{
    auto_plans, devices_for, BatteryObservation, Policy, PolicyConfig, PolicyRunner,
};
use splitstream_head::stats::{FrameRecord, Mode};
use splitstream_tail::config::BackendChoice;
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::governor::PowerConfig;
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_transport::TokenStore;

/// The edge's power, replayed in real time from when the governor opens it: under
/// budget, then 2 s at 120% of it (over T2), then well under (released after the
/// hold).
const EDGE_TRACE: &str = "t_s,watts\n0,50\n2,120\n4,40\n";

fn trace_file(text: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "splitstream-e2e-policy-{}-{nanos}.csv",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("writing the power trace");
    path
}

fn governed_edge(bytes: Vec<u8>, devices: usize, trace: &std::path::Path) -> RunningEdge {
    let served = ServedModel::from_bytes(MODEL, bytes, "seeded", None, BackendChoice::Cpu, 1)
        .expect("edge loads the model");
    let mut tokens = TokenStore::new();
    for i in 0..devices {
        tokens.insert(format!("dev-{i}"), TOKEN);
    }
    let mut power = PowerConfig::new(100.0, format!("trace:{}", trace.display()));
    power.interval_ms = 50;
    power.min_hold_ms = 300;
    let options = EdgeOptions {
        power: Some(power),
        ..EdgeOptions::default()
    };
    RunningEdge::loopback(vec![served], tokens, options, Arc::new(EdgeMetrics::new()))
        .expect("edge starts with its governor")
}

/// One device running `--policy auto` until it has come back from advice-local (or
/// the time runs out); its records.
async fn run_device(edge: &RunningEdge, n: usize) -> Vec<FrameRecord> {
    let (model, id, _) = model();
    let plans = auto_plans(&[2], CodecChoice::U8);
    let budget = Duration::from_secs(5);
    let jpeg = JpegSettings::default();
    let probe = devices_for(&model, &plans, None, budget, jpeg).expect("devices");
    let first_remote = probe
        .iter()
        .map(|d| d.mode().clone())
        .find(|m| m.wire().is_some())
        .expect("a remote mode");
    let client = Arc::new(
        connect(edge, &id, &first_remote, &format!("dev-{n}"), TOKEN)
            .await
            .expect("connects"),
    );
    let devices = devices_for(&model, &plans, Some(&client), budget, jpeg).expect("devices");
    let mut runner = PolicyRunner::new(
        Policy::new(plans, PolicyConfig::default()).expect("policy"),
        devices,
        Some(client),
    )
    .expect("runner");
    // A low battery: least energy, which on this loopback link is the edge's.
    runner.policy_mut().observe_power(
        None,
        Some(BatteryObservation {
            capacity_pct: 30.0,
            charging: false,
        }),
    );
    let frames = frames(8);
    let mut records = Vec::new();
    let started = Instant::now();
    let mut advised = false;
    let mut remote_after = 0;
    while started.elapsed() < Duration::from_secs(40) && remote_after < 5 {
        let f = &frames[records.len() % frames.len()];
        let r = runner.process(f).await;
        let why = r.record.why.clone().unwrap_or_default();
        advised |= why == "advice:local";
        if advised && why != "advice:local" && r.record.mode != Mode::Local {
            remote_after += 1;
        }
        records.push(r.record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_go_local_while_the_edge_is_over_t2_and_come_back_after_release() {
    let trace = trace_file(EDGE_TRACE);
    let (_, _, bytes) = model();
    let edge = governed_edge(bytes, 2, &trace);
    let (a, b) = tokio::join!(run_device(&edge, 0), run_device(&edge, 1));
    edge.shutdown().await;
    let _ = std::fs::remove_file(&trace);

    for (n, records) in [a, b].iter().enumerate() {
        let t: Vec<String> = records
            .iter()
            .map(|r| format!("{}:{}:{}", r.seq, r.mode, r.why.as_deref().unwrap_or("")))
            .collect();
        let t = t.join(" ");
        // No frame lost: every one has a result, wherever it ran.
        assert!(
            records.iter().all(|r| r.result.is_result()),
            "dev-{n}: a frame without a result: {t}"
        );
        let advised: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.why.as_deref() == Some("advice:local"))
            .map(|(i, _)| i)
            .collect();
        let (Some(&first), Some(&last)) = (advised.first(), advised.last()) else {
            panic!("dev-{n}: never advised to run locally: {t}");
        };
        // Before the advice the policy used the edge (least energy on a low battery).
        assert!(
            records[..first].iter().any(|r| r.mode != Mode::Local),
            "dev-{n}: never used the edge before the advice: {t}"
        );
        // Under advice every frame ran locally, as planned (no fallback needed).
        for r in &records[first..=last] {
            if r.why.as_deref() == Some("advice:local") {
                assert_eq!(r.mode, Mode::Local, "dev-{n}: {t}");
                assert!(r.fallback.is_none(), "dev-{n}: {t}");
            }
        }
        // After the release it came back to the edge.
        assert!(
            records[last + 1..]
                .iter()
                .any(|r| r.mode != Mode::Local && r.fallback.is_none()),
            "dev-{n}: did not come back to the edge after the release: {t}"
        );
    }
}
