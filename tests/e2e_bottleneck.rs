//! A model with a learned bottleneck, split over real QUIC: the device runs the head
//! and the encoder and sends the code, the edge decodes it and runs the tail. With a
//! lossless codec that is exactly the model run locally; the local fallback from a
//! code is exact too; plain splits of a bottleneck model are refused.

mod e2e_support;

use e2e_support::*;
use splitstream_head::device::{CodecChoice, RunMode};
use splitstream_head::stats::Mode;
use splitstream_models::net::SplitPoint;
use splitstream_tail::batcher::BatcherConfig;
use splitstream_transport::{ConnectError, RejectReason};

const FRAMES: usize = 4;

/// The seeded split model's bottleneck point: after two blocks, named by the model.
fn bottleneck_point() -> SplitPoint {
    SplitPoint {
        name: "block1-bottleneck".into(),
        depth: 2,
        shape: vec![50, 16],
        bottleneck: Some(16),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_with_bottleneck_and_lossless_codec_equals_local_exactly() {
    let (model, id, bytes) = split_model();
    assert_eq!(
        model.split_at(2).expect("the bottleneck's point"),
        bottleneck_point()
    );
    let edge = start_edge(bytes, 1, BatcherConfig::default());
    let mode = RunMode::Split {
        at: bottleneck_point(),
        codec: CodecChoice::Lossless,
    };
    let client = connect(&edge, &id, &mode, "dev-0", TOKEN)
        .await
        .expect("connects");
    let frames = frames(FRAMES);
    let mut dev = device(&model, mode, Some(client));
    let mut logits = Vec::new();
    for f in &frames {
        let r = dev.process(f).await;
        assert_eq!(
            r.record.mode,
            Mode::Split,
            "frame {} fell back: {:?}",
            r.record.seq,
            r.record.fallback
        );
        // 50 tokens x 16 code channels in f32, not 50 x 96.
        assert!(
            r.record.bytes_sent >= 50 * 16 * 4 && r.record.bytes_sent < 50 * 96 * 4,
            "the code was sent, not the activation: {} bytes",
            r.record.bytes_sent
        );
        logits.push(r.logits().to_vec());
    }
    drop(dev);
    edge.shutdown().await;
    let local = local_logits(&model, &frames).await;
    assert_eq!(
        logits, local,
        "decoder + tail on the edge must equal the local split model bit for bit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fallback_from_a_code_is_exact() {
    let (model, id, bytes) = split_model();
    let edge = start_edge(bytes, 1, BatcherConfig::default());
    let mode = RunMode::Split {
        at: bottleneck_point(),
        codec: CodecChoice::Lossless,
    };
    let client = connect(&edge, &id, &mode, "dev-0", TOKEN)
        .await
        .expect("connects");
    edge.kill();
    let frames = frames(2);
    let local = local_logits(&model, &frames).await;
    let mut dev = device(&model, mode, Some(client));
    for (f, want) in frames.iter().zip(&local) {
        let r = dev.process(f).await;
        assert_eq!(r.record.mode, Mode::Local);
        assert!(r.record.fallback.is_some());
        assert_eq!(&r.logits(), want, "decoder + tail run locally on the code");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_split_of_a_bottleneck_model_is_refused_with_the_split_to_use() {
    let (_, id, bytes) = split_model();
    let edge = start_edge(bytes, 1, BatcherConfig::default());
    let mode = RunMode::Split {
        // What the device would ask of a plain ViT: the edge must refuse it.
        at: SplitPoint {
            name: "block1".into(),
            depth: 2,
            shape: vec![50, 96],
            bottleneck: None,
        },
        codec: CodecChoice::Lossless,
    };
    let Err(err) = connect(&edge, &id, &mode, "dev-0", TOKEN).await else {
        panic!("a plain split must be refused");
    };
    match &err {
        ConnectError::Rejected(RejectReason::UnsupportedSplit { supported, .. }) => {
            assert_eq!(supported, &vec![bottleneck_point().name]);
        }
        other => panic!("unexpected refusal: {other:?}"),
    }
    edge.shutdown().await;
}
