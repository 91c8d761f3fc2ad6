//! Faults: the edge dies mid-stream and the device finishes every frame locally; a
//! wrong token is refused with its reason.

mod e2e_support;

use e2e_support::*;
use splitstream_head::device::{CodecChoice, RunMode};
use splitstream_head::stats::{Mode, Outcome};
use splitstream_tail::batcher::BatcherConfig;
use splitstream_transport::{ConnectError, RejectReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_finishes_every_frame_locally_when_the_edge_dies() {
    let (model, id, bytes) = model();
    let edge = start_edge(bytes, 1, BatcherConfig::default());
    let mode = RunMode::Split {
        at: model.split_at(2).expect("point 2"),
        codec: CodecChoice::Lossless,
    };
    let client = connect(&edge, &id, &mode, "dev-0", TOKEN)
        .await
        .expect("connects");
    let frames = frames(8);
    let local = local_logits(&model, &frames).await;
    let mut dev = device(&model, mode, Some(client));
    let mut edge = Some(edge);
    let mut records = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if i == 3 {
            edge.take().expect("edge").kill();
        }
        let r = dev.process(f).await;
        assert!(
            matches!(r.record.result, Outcome::Classified { .. }),
            "frame {i} has a result"
        );
        assert_eq!(
            r.logits(),
            local[i],
            "frame {i}: the local fallback is exact"
        );
        records.push(r.record);
    }
    assert!(records[..3]
        .iter()
        .all(|r| r.mode == Mode::Split && r.fallback.is_none()));
    for r in &records[3..] {
        assert_eq!(r.mode, Mode::Local, "frame {} ran locally", r.seq);
        println!(
            "frame {} fallback: {}",
            r.seq,
            r.fallback.as_deref().unwrap_or("-")
        );
        assert!(r.fallback.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_with_its_reason() {
    let (_, id, bytes) = model();
    let edge = start_edge(bytes, 1, BatcherConfig::default());
    let mode = RunMode::Offload {
        jpeg: Default::default(),
    };
    let Err(err) = connect(&edge, &id, &mode, "dev-0", "not-the-token-at-all").await else {
        panic!("a wrong token must be refused");
    };
    println!("refused: {err}");
    assert!(
        matches!(err, ConnectError::Rejected(RejectReason::BadToken)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("token"),
        "the reason names the token: {err}"
    );
    edge.shutdown().await;
}
