//! Four devices at once against one edge: frames from different devices are batched
//! together, and every device gets its own answers.

mod e2e_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e_support::*;
use splitstream_head::device::{CodecChoice, RunMode};
use splitstream_head::stats::Mode;
use splitstream_tail::batcher::BatcherConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_devices_share_batches_on_one_edge() {
    let (model, id, bytes) = model();
    // A generous wait so frames of different devices meet even on a loaded machine.
    let batcher = BatcherConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(40),
        ..BatcherConfig::default()
    };
    let edge = start_edge(bytes, 4, batcher);
    let mode = RunMode::Split {
        at: model.split_at(2).expect("point 2"),
        codec: CodecChoice::Lossless,
    };
    let frames = frames(5);
    let local = local_logits(&model, &frames).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let client = connect(&edge, &id, &mode, &format!("dev-{i}"), TOKEN)
            .await
            .expect("connects");
        let mut dev = device(&model, mode.clone(), Some(client));
        let frames = frames.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for f in &frames {
                out.push(dev.process(f).await);
            }
            out
        }));
    }
    for t in tasks {
        let results = t.await.expect("device task");
        for (r, want) in results.iter().zip(&local) {
            assert_eq!(
                r.record.mode,
                Mode::Split,
                "fell back: {:?}",
                r.record.fallback
            );
            // A batch runs the same ops on more rows; allow GEMM blocking to differ.
            let diff = r
                .logits()
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-3, "logits differ from local by {diff}");
            assert_eq!(argmax(r.logits()), argmax(want));
        }
    }
    let c = edge.counters();
    let (batches, largest, multi) = (
        c.batches.load(Ordering::Relaxed),
        c.largest_batch.load(Ordering::Relaxed),
        c.multi_frame_batches.load(Ordering::Relaxed),
    );
    println!("20 frames in {batches} batches, largest {largest}, {multi} with more than one frame");
    assert_eq!(c.answered.load(Ordering::Relaxed), 20);
    assert!(
        largest > 1 && multi > 0,
        "frames of different devices were batched together"
    );
    let text = edge.metrics().encode();
    assert!(text.contains("batch"), "metrics expose batch sizes");
    edge.shutdown().await;
}
