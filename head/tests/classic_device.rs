//! The fallback classifier on the device loop: the shipped demo student and its forest,
//! a policy with no edge and a critical battery. Every frame runs `classic`, says why,
//! and answers what the forest answers on the student's pooled code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use splitstream_head::classic::ClassicHead;
use splitstream_head::device::load_model;
use splitstream_head::offload::JpegSettings;
use splitstream_head::policy::{
    auto_plans, devices_with_fallback, BatteryObservation, Plan, Policy, PolicyConfig, PolicyRunner,
};
use splitstream_head::source::{Frame, Payload};
use splitstream_head::stats::{Mode, Outcome};
use splitstream_models::classic::ClassicModel;
use splitstream_models::HostTensor;
use splitstream_transport::CodecChoice;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_battery_without_an_edge_runs_the_forest() {
    let path = root().join("assets/demo/demo_vit_bottlefit.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (model, _) = load_model("demo", bytes, "demo", None, 1).unwrap();
    let forest =
        ClassicModel::from_file(&root().join("assets/demo/fallback/random_forest.safetensors"))
            .unwrap();
    let probe = HostTensor::new([1, 3, 224, 224], vec![0.0; 3 * 224 * 224]).unwrap();
    let head = ClassicHead::new(model.clone(), forest, &probe).unwrap();

    let mut plans = auto_plans(&[1], CodecChoice::U4);
    plans.push(Plan::Classic);
    let mut policy = Policy::new(plans, PolicyConfig::default()).unwrap();
    policy.observe_power(
        None,
        Some(BatteryObservation {
            capacity_pct: 5.0,
            charging: false,
        }),
    );
    let devices = devices_with_fallback(
        &model,
        policy.plans(),
        None,
        Duration::from_secs(1),
        JpegSettings::default(),
        Some(&head),
    )
    .unwrap();
    let mut runner = PolicyRunner::new(policy, devices, None).unwrap();

    let test = root().join("assets/demo/test");
    for (i, file) in ["0000.jpg", "0001.jpg", "0002.jpg"].iter().enumerate() {
        let img = splitstream_models::preprocess::load_rgb(test.join(file)).unwrap();
        let frame = Frame {
            index: i as u64,
            captured: Instant::now(),
            captured_wall: SystemTime::now(),
            source: Arc::from(*file),
            payload: Payload::Image(img.clone()),
        };
        let r = runner.process(&frame).await;
        assert_eq!(r.record.mode, Mode::Classic, "{:?}", r.record);
        assert_eq!(
            r.record.why.as_deref(),
            Some("battery_critical:classic:disconnected")
        );
        let line = r.record.to_json_line();
        assert!(line.contains(r#""mode":"classic""#), "{line}");
        // The same answer as the classifier on the same features.
        let transform = model.input().transform().unwrap().clone();
        let x = HostTensor::new([1, 3, 224, 224], transform.apply(&img)).unwrap();
        let expected = head.predict(&x).unwrap();
        match r.record.result {
            Outcome::Classified { class, score } => {
                assert_eq!(class as usize, expected.label);
                let p = expected.scores[expected.label] as f32;
                assert!((score - p).abs() < 1e-4, "score {score} vs probability {p}");
            }
            other => panic!("{other:?}"),
        }
    }
    let tally = runner.tally();
    assert_eq!(tally.decisions.get("classic"), Some(&3));
}

#[test]
fn a_classifier_for_other_features_is_refused_with_a_reason() {
    let path = root().join("assets/demo/demo_vit.safetensors");
    let (teacher, _) = load_model("t", std::fs::read(path).unwrap(), "t", None, 1).unwrap();
    let forest =
        ClassicModel::from_file(&root().join("assets/demo/fallback/random_forest.safetensors"))
            .unwrap();
    let probe = HostTensor::new([1, 3, 224, 224], vec![0.0; 3 * 224 * 224]).unwrap();
    // The teacher's tokens after block 1 are 192 wide: 384 features, not 64.
    let e = ClassicHead::new(teacher, forest, &probe).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("64 features") && text.contains("384"),
        "{text}"
    );
}
