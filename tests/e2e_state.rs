//! A family that keeps state between a session's frames, over real QUIC: the edge
//! creates each session's state on its first frame, runs that session's frames in order
//! with it, caps it per session and in total (refusing with a reason), and frees it when
//! the session ends. Its answers are detections, so the typed answer path is exercised
//! end to end as well.
//!
//! The network here is a running sum, small enough to check by hand: what matters is
//! the runtime around it, which is the one every stateful family (SNN membranes, LLM KV
//! caches) plugs into through `SplitNet`.

mod e2e_support;

use std::any::Any;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use e2e_support::{connect, device, TOKEN};
use splitstream_head::device::{CodecChoice, DeviceModel, RunMode};
use splitstream_head::source::{Frame, InputTensor, Payload};
use splitstream_head::stats::Outcome;
use splitstream_models::net::{
    Answer, Detection, Family, InputSpec, NetError, NetState, Output, OutputKind, SplitPoint,
};
use splitstream_models::{HostTensor, SplitNet};
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_tail::state::StateLimits;
use splitstream_transport::{ConnectError, ModelId, RejectReason, TokenStore};

const WIDTH: usize = 4;
/// What the test net says its state may reach.
const STATE_BYTES: usize = 1000;

/// Sums of every frame a session sent so far.
struct Sums(Vec<f32>);

impl NetState for Sums {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Head: identity. Tail: adds the frame to the session's sums and answers one
/// detection whose box is the four sums.
struct RunningSum {
    input: InputSpec,
    points: Vec<SplitPoint>,
}

impl RunningSum {
    fn new() -> Self {
        Self {
            input: InputSpec::EventWindow {
                channels: 1,
                height: 1,
                width: WIDTH,
                window_us: 1000,
            },
            points: vec![SplitPoint {
                name: "accumulate".into(),
                depth: 1,
                shape: vec![1, 1, WIDTH],
                bottleneck: None,
            }],
        }
    }

    fn step(&self, x: &HostTensor, state: Option<&mut dyn NetState>) -> Result<Output, NetError> {
        let state = state
            .ok_or_else(|| NetError::State("the running sum needs its session's sums".into()))?;
        let sums = state
            .as_any_mut()
            .downcast_mut::<Sums>()
            .ok_or_else(|| NetError::State("not this family's state".into()))?;
        let items = x.data().chunks(WIDTH).map(|row| {
            for (s, v) in sums.0.iter_mut().zip(row) {
                *s += v;
            }
            vec![Detection {
                bbox: [sums.0[0], sums.0[1], sums.0[2], sums.0[3]],
                score: 1.0,
                label: 0,
            }]
        });
        Ok(Output::Detections(items.collect()))
    }
}

impl SplitNet for RunningSum {
    fn family(&self) -> Family {
        Family::Vit
    }
    fn describe(&self) -> String {
        "running sum".into()
    }
    fn backend_name(&self) -> &'static str {
        "cpu"
    }
    fn input(&self) -> &InputSpec {
        &self.input
    }
    fn output(&self) -> OutputKind {
        OutputKind::Detections { classes: 1 }
    }
    fn split_points(&self) -> &[SplitPoint] {
        &self.points
    }
    fn state_size(&self) -> Option<usize> {
        Some(STATE_BYTES)
    }
    fn new_state(&self) -> Option<Box<dyn NetState>> {
        Some(Box::new(Sums(vec![0.0; WIDTH])))
    }
    fn head(
        &self,
        x: &HostTensor,
        at: &str,
        _: Option<&mut dyn NetState>,
    ) -> Result<HostTensor, NetError> {
        self.split_point(at)?;
        Ok(x.clone())
    }
    fn tail(
        &self,
        h: &HostTensor,
        at: &str,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        self.split_point(at)?;
        self.step(h, state)
    }
    fn forward(
        &self,
        x: &HostTensor,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        self.step(x, state)
    }
}

fn start(limits: StateLimits, devices: usize) -> (RunningEdge, ModelId, DeviceModel) {
    let net: Arc<dyn SplitNet> = Arc::new(RunningSum::new());
    let id = ModelId::from_weights_bytes("running-sum", b"running sum v1");
    let mut tokens = TokenStore::new();
    for i in 0..devices {
        tokens.insert(format!("dev-{i}"), TOKEN);
    }
    let options = EdgeOptions {
        state: limits,
        ..EdgeOptions::default()
    };
    let served = ServedModel::new(id.clone(), net.clone());
    let edge = RunningEdge::loopback(vec![served], tokens, options, Arc::new(EdgeMetrics::new()))
        .expect("edge starts");
    (edge, id, DeviceModel::new(net))
}

fn frame(i: u64, values: [f32; WIDTH]) -> Frame {
    Frame {
        index: i,
        captured: Instant::now(),
        captured_wall: SystemTime::now(),
        source: Arc::from("test"),
        payload: Payload::Tensor(InputTensor {
            shape: [1, 1, 1, WIDTH],
            data: values.to_vec(),
        }),
    }
}

fn mode(model: &DeviceModel) -> RunMode {
    RunMode::Split {
        at: model.split_at(1).expect("the one point"),
        codec: CodecChoice::Lossless,
    }
}

fn sums(answer: &Option<Answer>) -> [f32; 4] {
    match answer {
        Some(Answer::Detections(d)) if d.len() == 1 => d[0].bbox,
        other => panic!("expected one detection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_keeps_its_own_state_between_frames_and_answers_are_typed() {
    let limits = StateLimits {
        per_session: STATE_BYTES,
        total: 2 * STATE_BYTES,
    };
    let (edge, id, model) = start(limits, 2);
    let mode = mode(&model);
    let a = connect(&edge, &id, &mode, "dev-0", TOKEN).await.expect("a");
    let b = connect(&edge, &id, &mode, "dev-1", TOKEN).await.expect("b");
    let mut a = device(&model, mode.clone(), Some(a));
    let mut b = device(&model, mode, Some(b));
    let r = a.process(&frame(0, [1.0, 2.0, 3.0, 4.0])).await;
    assert_eq!(r.record.fallback, None, "answered by the edge");
    assert_eq!(sums(&r.answer), [1.0, 2.0, 3.0, 4.0]);
    let line = r.record.to_json_line();
    assert!(
        line.contains(r#""status":"detected","boxes":[{"box":[1.0,2.0,3.0,4.0]"#),
        "{line}"
    );
    let r = b.process(&frame(0, [10.0, 0.0, 0.0, 0.0])).await;
    assert_eq!(sums(&r.answer), [10.0, 0.0, 0.0, 0.0], "b starts from zero");
    let r = a.process(&frame(1, [1.0, 1.0, 1.0, 1.0])).await;
    assert_eq!(
        sums(&r.answer),
        [2.0, 3.0, 4.0, 5.0],
        "a's sums carried over"
    );
    assert!(matches!(r.record.result, Outcome::Detected { .. }));
    drop((a, b));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_the_per_session_cap_is_refused_at_the_handshake() {
    let limits = StateLimits {
        per_session: STATE_BYTES - 1,
        total: 10 * STATE_BYTES,
    };
    let (edge, id, model) = start(limits, 1);
    let Err(err) = connect(&edge, &id, &mode(&model), "dev-0", TOKEN).await else {
        panic!("the session must be refused");
    };
    match &err {
        ConnectError::Rejected(RejectReason::Policy(why)) => {
            assert!(why.contains("per-session cap"), "{why}")
        }
        other => panic!("unexpected refusal: {other:?}"),
    }
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_total_cap_frames_are_refused_with_a_reason_until_a_session_frees_its_state() {
    let limits = StateLimits {
        per_session: STATE_BYTES,
        total: STATE_BYTES + STATE_BYTES / 2,
    };
    let (edge, id, model) = start(limits, 3);
    let mode = mode(&model);
    let first = connect(&edge, &id, &mode, "dev-0", TOKEN).await.expect("a");
    let mut first = device(&model, mode.clone(), Some(first));
    let r = first.process(&frame(0, [1.0; WIDTH])).await;
    assert_eq!(r.record.fallback, None);

    // The second session fits the per-session cap but not the total: its frame is
    // refused with the reason, and the device computes it itself (its own state).
    let second = connect(&edge, &id, &mode, "dev-1", TOKEN).await.expect("b");
    let mut second = device(&model, mode.clone(), Some(second));
    let r = second.process(&frame(0, [5.0; WIDTH])).await;
    let why = r.record.fallback.clone().expect("refused by the edge");
    assert!(why.contains("model-state budget is full"), "{why}");

    // The first session ends; its state goes, and a new session is served.
    drop(first);
    let mut served = false;
    for attempt in 0..50 {
        let third = connect(&edge, &id, &mode, "dev-2", TOKEN).await.expect("c");
        let mut third = device(&model, mode.clone(), Some(third));
        let r = third.process(&frame(attempt, [2.0; WIDTH])).await;
        if r.record.fallback.is_none() {
            assert_eq!(sums(&r.answer), [2.0; WIDTH]);
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served, "the freed state made room for a new session");
    drop(second);
    edge.shutdown().await;
}
