//! Running a source on its own thread, feeding an async consumer.
//!
//! Sources block (decoding, `ffmpeg`'s pipe, pacing sleeps), the device's loop is
//! async: a thread per source bridges them through a bounded channel. Dropping the
//! receiver stops the thread at its next frame, which drops the source (and so kills
//! `ffmpeg`).

use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::{Frame, FrameError, Source};

/// The receiving end of a source thread.
pub type FrameFeed = mpsc::Receiver<Result<Frame, FrameError>>;

/// Starts a thread that reads `source` into a channel of `capacity` frames (at least
/// 1). The channel closes after the source's last frame, or after its first error
/// that ends it (video and tensor errors; an unreadable image is sent and reading
/// goes on). The thread returns how many frames it sent.
pub fn spawn_feed(
    source: Source,
    capacity: usize,
) -> std::io::Result<(FrameFeed, JoinHandle<u64>)> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let thread = std::thread::Builder::new()
        .name("splitstream-source".into())
        .spawn(move || {
            let mut sent = 0;
            for item in source {
                let ends = matches!(
                    item,
                    Err(FrameError::Ffmpeg { .. }
                        | FrameError::TruncatedFrame { .. }
                        | FrameError::Io { .. })
                );
                if tx.blocking_send(item).is_err() {
                    tracing::debug!("frame consumer gone; closing the source");
                    break;
                }
                sent += 1;
                if ends {
                    break;
                }
            }
            sent
        })?;
    Ok((rx, thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{open_source, SourceOptions};

    fn folder(n: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            image::RgbImage::new(2, 2)
                .save(dir.path().join(format!("f{i:03}.png")))
                .unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn every_frame_arrives_in_order_then_the_channel_closes() {
        let dir = folder(5);
        let src = open_source(dir.path().to_str().unwrap(), &SourceOptions::default()).unwrap();
        let (mut rx, thread) = spawn_feed(src, 2).unwrap();
        let mut seen = Vec::new();
        while let Some(f) = rx.recv().await {
            seen.push(f.unwrap().index);
        }
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(thread.join().unwrap(), 5);
    }

    #[tokio::test]
    async fn dropping_the_receiver_stops_an_endless_source() {
        let dir = folder(2);
        let opts = SourceOptions {
            repeat: true,
            ..SourceOptions::default()
        };
        let src = open_source(dir.path().to_str().unwrap(), &opts).unwrap();
        let (mut rx, thread) = spawn_feed(src, 1).unwrap();
        assert!(rx.recv().await.unwrap().is_ok());
        drop(rx);
        // The thread notices at its next send and ends; a repeating source would
        // otherwise run forever.
        let sent = tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert!(sent >= 1);
    }
}
