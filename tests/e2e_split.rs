//! Split and offload over real QUIC on loopback give the local results: exactly with a
//! lossless codec and for offload (on the same decoded JPEG), within the quantization
//! error with 8 bits.

mod e2e_support;

use e2e_support::*;
use splitstream_head::device::{CodecChoice, RunMode};
use splitstream_head::offload::{encode_jpeg, JpegSettings};
use splitstream_head::source::Payload;
use splitstream_head::stats::Mode;
use splitstream_tail::batcher::BatcherConfig;

const FRAMES: usize = 6;

async fn remote(
    mode: RunMode,
) -> (
    Vec<Vec<f32>>,
    Vec<Vec<f32>>,
    Vec<splitstream_head::stats::FrameRecord>,
) {
    let (model, id, bytes) = model();
    let edge = start_edge(bytes, 1, BatcherConfig::default());
    let client = connect(&edge, &id, &mode, "dev-0", TOKEN)
        .await
        .expect("connects");
    let frames = frames(FRAMES);
    let mut dev = device(&model, mode, Some(client));
    let mut logits = Vec::new();
    let mut records = Vec::new();
    for f in &frames {
        let r = dev.process(f).await;
        logits.push(r.logits().to_vec());
        records.push(r.record);
    }
    drop(dev);
    edge.shutdown().await;
    let local = local_logits(&model, &frames).await;
    (logits, local, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_with_lossless_codec_equals_local_exactly() {
    let (split, local, records) = remote(RunMode::Split {
        at: model().0.split_at(2).expect("point 2"),
        codec: CodecChoice::Lossless,
    })
    .await;
    for r in &records {
        assert_eq!(
            r.mode,
            Mode::Split,
            "frame {} fell back: {:?}",
            r.seq,
            r.fallback
        );
        assert!(r.bytes_sent > 50 * 96 * 4, "the f32 tokens were sent");
        // The edge's account splits the round trip: its own time (it ran the tail) and
        // the link's, and it saw the payload arrive.
        assert!(r.tail_ms > 0.0 && r.transfer_ms > 0.0, "{r:?}");
        assert!(r.edge_receive_ms.is_some_and(|ms| ms >= 0.0), "{r:?}");
        assert!(r.tail_ms + r.transfer_ms <= r.total_ms, "{r:?}");
    }
    assert_eq!(
        split, local,
        "tail(head(x)) over QUIC must be bit-identical to local"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_with_8bit_codec_stays_within_tolerance_of_local() {
    let (split, local, records) = remote(RunMode::Split {
        at: model().0.split_at(2).expect("point 2"),
        codec: CodecChoice::U8,
    })
    .await;
    for r in &records {
        assert_eq!(
            r.mode,
            Mode::Split,
            "frame {} fell back: {:?}",
            r.seq,
            r.fallback
        );
        assert!(
            r.bytes_sent < 50 * 96 + 200,
            "8-bit symbols were sent, not f32"
        );
    }
    let scale = local.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (a, b) in split.iter().zip(&local) {
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    println!("8-bit split: max |logit difference| {worst:.3e} (logit scale {scale:.3})");
    assert!(worst > 0.0, "quantization changes something");
    assert!(
        worst <= 0.05 * scale,
        "max diff {worst} exceeds 5% of the logit scale {scale}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_equals_local_on_the_same_decoded_jpeg() {
    // "Offload equals local" means: the edge's logits for an offloaded frame are
    // bit-identical to the device running the whole model locally on the very JPEG it
    // sent, decoded the same way (the JPEG itself is lossy, so not on the raw frame).
    let (offloaded, _, records) = remote(RunMode::Offload {
        jpeg: JpegSettings::default(),
    })
    .await;
    let (model, _, _) = model();
    let frames = frames(FRAMES);
    let mut dev = device(&model, RunMode::Local, None);
    for ((f, remote), r) in frames.iter().zip(&offloaded).zip(&records) {
        assert_eq!(
            r.mode,
            Mode::Offload,
            "frame {} fell back: {:?}",
            r.seq,
            r.fallback
        );
        let Payload::Image(img) = &f.payload else {
            unreachable!()
        };
        let jpeg = encode_jpeg(img, &JpegSettings::default()).expect("encodes");
        assert_eq!(
            r.bytes_sent,
            jpeg.len() as u64,
            "the JPEG was what was sent"
        );
        let decoded = splitstream_tail::offload::decode_jpeg(&jpeg, 4096).expect("decodes");
        let mut same = f.clone();
        same.payload = Payload::Image(decoded);
        let local = dev.process(&same).await.logits().to_vec();
        assert_eq!(remote, &local, "frame {}", r.seq);
    }
}
