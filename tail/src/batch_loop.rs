//! The tokio shell around the [`Batcher`]: items come in on a channel, batches go out
//! on another, a timer wakes it when something is due.
//!
//! The worker (the task running the tail) receives from the batch channel. The loop
//! forms a batch only when the channel has room, so at most `capacity` formed batches
//! wait for the worker (1 keeps the next batch ready while the current one computes,
//! without batching early what could still have grown). Meanwhile expired items are
//! answered at their deadline, not when the worker frees up.
//!
//! Dropped items (refused, displaced, expired, or left when the session closes or the
//! worker is gone) go to the `on_drop` callback, which answers them (typically through
//! a responder inside `T`). Nothing is lost silently.
//!
//! How the edge wires it (the worker here doubles its inputs where the edge runs the
//! tail):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use splitstream_tail::batch_loop::{spawn_batch_loop, Dropped};
//! use splitstream_tail::batcher::{BatchKey, BatcherConfig, Item, SessionId};
//! use splitstream_tail::metrics::EdgeMetrics;
//! use tokio::sync::{mpsc, oneshot};
//!
//! // What a frame carries through the batcher: its input and where to answer.
//! struct Job { input: f32, answer: oneshot::Sender<Result<f32, &'static str>> }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let metrics = Arc::new(EdgeMetrics::new());
//! let (batch_tx, mut batches) = mpsc::channel(1);
//! let m = metrics.clone();
//! let (handle, _task) = spawn_batch_loop(BatcherConfig::default(), batch_tx, move |d: Dropped<Job>| {
//!     m.dropped(d.reason);
//!     let _ = d.item.payload.answer.send(Err(d.reason.as_str()));
//! });
//! let m = metrics.clone();
//! tokio::spawn(async move {
//!     while let Some(mut batch) = batches.recv().await {
//!         m.batch_formed(&batch);
//!         for late in batch.take_expired(Instant::now()) {
//!             m.dropped(splitstream_tail::DropReason::Deadline);
//!             let _ = late.item.payload.answer.send(Err("deadline"));
//!         }
//!         let started = Instant::now();
//!         let outputs: Vec<f32> = batch.items.iter().map(|q| q.item.payload.input * 2.0).collect();
//!         m.batch_computed(&batch.key, batch.items.len(), started.elapsed());
//!         m.frames_done(&batch.key, batch.items.len() as u64);
//!         for (q, y) in batch.items.into_iter().zip(outputs) {
//!             let _ = q.item.payload.answer.send(Ok(y));
//!         }
//!     }
//! });
//!
//! let (answer, result) = oneshot::channel();
//! let item = Item {
//!     session: SessionId(1),
//!     key: BatchKey::new("vit-tiny", 4),
//!     deadline: Some(Instant::now() + Duration::from_millis(500)),
//!     payload: Job { input: 21.0, answer },
//! };
//! handle.submit(item).await.map_err(|(_, e)| e).unwrap();
//! assert_eq!(result.await.unwrap(), Ok(42.0));
//! handle.shutdown().await.unwrap();
//! # });
//! ```

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::batcher::{Batch, Batcher, BatcherConfig, Item, Polled, Queued, SessionId};
use crate::reason::DropReason;

/// An item the batcher could not serve, handed to `on_drop`.
#[derive(Debug)]
pub struct Dropped<T> {
    /// The item.
    pub item: Item<T>,
    /// Why it gets no result.
    pub reason: DropReason,
    /// How long it waited in the batcher (zero if it never got in).
    pub waited: Duration,
}

enum Command<T> {
    Push(Item<T>),
    EndSession(SessionId),
    Close,
}

/// The sending side of a running batch loop. Cloneable; the loop drains and ends when
/// [`BatchHandle::shutdown`] is called or every handle is dropped.
#[derive(Debug)]
pub struct BatchHandle<T> {
    tx: mpsc::Sender<Command<T>>,
}

impl<T> Clone for BatchHandle<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Command<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Push(i) => write!(f, "Push({:?}, {:?})", i.session, i.key),
            Command::EndSession(s) => write!(f, "EndSession({s:?})"),
            Command::Close => f.write_str("Close"),
        }
    }
}

/// The batch loop has ended (shut down, or its worker went away).
#[derive(Debug, thiserror::Error)]
#[error("the batch loop has stopped: the edge is shutting down")]
pub struct LoopStopped;

impl<T> BatchHandle<T> {
    /// Offers an item; waits while the input channel is full (back-pressure). The item
    /// may still be dropped by the batcher (answered through `on_drop`). An error
    /// hands the item back: the loop has stopped.
    pub async fn submit(&self, item: Item<T>) -> Result<(), (Item<T>, LoopStopped)> {
        match self.tx.reserve().await {
            Ok(permit) => {
                permit.send(Command::Push(item));
                Ok(())
            }
            Err(_) => Err((item, LoopStopped)),
        }
    }

    /// Drops a closed session's queued items (each answered through `on_drop` with
    /// [`DropReason::SessionClosed`]).
    pub async fn end_session(&self, session: SessionId) -> Result<(), LoopStopped> {
        self.tx
            .send(Command::EndSession(session))
            .await
            .map_err(|_| LoopStopped)
    }

    /// Stops accepting items and forms batches of everything queued right away; the
    /// loop ends (closing the batch channel) once all of it has gone to the worker.
    pub async fn shutdown(&self) -> Result<(), LoopStopped> {
        self.tx.send(Command::Close).await.map_err(|_| LoopStopped)
    }
}

/// Starts the batch loop on the current tokio runtime. Batches are sent on `batches`
/// (its capacity bounds the formed batches waiting for the worker); dropped items go
/// to `on_drop`. The task ends after a shutdown has drained, or when the worker drops
/// its receiver (the rest is then dropped with [`DropReason::Shutdown`]).
pub fn spawn_batch_loop<T, F>(
    config: BatcherConfig,
    batches: mpsc::Sender<Batch<T>>,
    on_drop: F,
) -> (BatchHandle<T>, JoinHandle<()>)
where
    T: Send + 'static,
    F: FnMut(Dropped<T>) + Send + 'static,
{
    // Room for a full queue's worth of pushes in flight; beyond it, submitters wait.
    let (tx, rx) = mpsc::channel(config.max_queued.max(1));
    let task = tokio::spawn(run(Batcher::new(config), rx, batches, on_drop));
    (BatchHandle { tx }, task)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn run<T, F>(
    mut batcher: Batcher<T>,
    mut rx: mpsc::Receiver<Command<T>>,
    out: mpsc::Sender<Batch<T>>,
    mut on_drop: F,
) where
    T: Send + 'static,
    F: FnMut(Dropped<T>),
{
    let expired = |q: Queued<T>, now: Instant, reason: DropReason, on_drop: &mut F| {
        on_drop(Dropped {
            waited: q.waited(now),
            item: q.item,
            reason,
        })
    };
    let mut permit: Option<mpsc::OwnedPermit<Batch<T>>> = None;
    let mut input_open = true;
    loop {
        let t = now();
        while let Some(q) = batcher.poll_expired(t) {
            expired(q, t, DropReason::Deadline, &mut on_drop);
        }
        if let Some(p) = permit.take() {
            match batcher.poll(t) {
                Some(Polled::Batch(b)) => {
                    p.send(b);
                    continue;
                }
                // Expired items were all taken just above; keep this total anyway.
                Some(Polled::Expired(q)) => {
                    expired(q, t, DropReason::Deadline, &mut on_drop);
                    permit = Some(p);
                    continue;
                }
                None => permit = Some(p),
            }
        }
        if !input_open && batcher.is_empty() {
            break;
        }
        // With a permit, wake for batches and expiries; without one, only expiries
        // matter (a due batch waits for the worker anyway).
        let wake = if permit.is_some() {
            batcher.next_deadline()
        } else {
            batcher.next_expiry()
        };
        let sleep_until =
            tokio::time::Instant::from_std(wake.unwrap_or(t + Duration::from_secs(3600)));
        tokio::select! {
            biased;
            p = out.clone().reserve_owned(), if permit.is_none() && !batcher.is_empty() => match p {
                Ok(p) => permit = Some(p),
                Err(_) => {
                    // The worker is gone: nothing queued can be computed.
                    tracing::warn!(queued = batcher.len(), "batch worker gone; dropping queued frames");
                    batcher.close();
                    let t = now();
                    while let Some(p) = batcher.poll(t) {
                        let items = match p {
                            Polled::Expired(q) => vec![q],
                            Polled::Batch(b) => b.items,
                        };
                        for q in items {
                            expired(q, t, DropReason::Shutdown, &mut on_drop);
                        }
                    }
                    return;
                }
            },
            cmd = rx.recv(), if input_open => match cmd {
                Some(Command::Push(item)) => {
                    let t = now();
                    match batcher.push(item, t) {
                        Ok(None) => {}
                        Ok(Some(old)) => expired(old, t, DropReason::QueueFull, &mut on_drop),
                        Err(r) => on_drop(Dropped {
                            item: r.item,
                            reason: r.reason.drop_reason(),
                            waited: Duration::ZERO,
                        }),
                    }
                }
                Some(Command::EndSession(s)) => {
                    let t = now();
                    for q in batcher.remove_session(s) {
                        expired(q, t, DropReason::SessionClosed, &mut on_drop);
                    }
                }
                Some(Command::Close) | None => {
                    tracing::debug!(queued = batcher.len(), "batch loop draining");
                    input_open = false;
                    rx.close();
                    batcher.close();
                }
            },
            _ = tokio::time::sleep_until(sleep_until), if wake.is_some() => {}
            // Every branch off: input closed and nothing left that could make progress
            // (not reachable by the checks above, but never a panic).
            else => break,
        }
    }
    // Items that raced in after close (sent before the channel closed) are refused.
    while let Ok(Command::Push(item)) = rx.try_recv() {
        on_drop(Dropped {
            item,
            reason: DropReason::Shutdown,
            waited: Duration::ZERO,
        });
    }
    tracing::debug!("batch loop finished");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::BatchKey;

    fn cfg(max_batch: usize, max_wait_ms: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            ..BatcherConfig::default()
        }
    }

    fn item(session: u64, deadline: Option<Instant>, tag: u32) -> Item<u32> {
        Item {
            session: SessionId(session),
            key: BatchKey::new("vit", 4),
            deadline,
            payload: tag,
        }
    }

    type Drops = mpsc::UnboundedReceiver<(u32, DropReason)>;

    fn start(
        config: BatcherConfig,
        capacity: usize,
    ) -> (
        BatchHandle<u32>,
        mpsc::Receiver<Batch<u32>>,
        Drops,
        JoinHandle<()>,
    ) {
        let (btx, brx) = mpsc::channel(capacity);
        let (dtx, drx) = mpsc::unbounded_channel();
        let (h, task) = spawn_batch_loop(config, btx, move |d: Dropped<u32>| {
            let _ = dtx.send((d.item.payload, d.reason));
        });
        (h, brx, drx, task)
    }

    fn tags(b: &Batch<u32>) -> Vec<u32> {
        b.items.iter().map(|q| q.item.payload).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_is_delivered_after_max_wait() {
        let (h, mut batches, _drops, _task) = start(cfg(4, 10), 1);
        let t0 = tokio::time::Instant::now();
        h.submit(item(1, None, 1)).await.unwrap();
        h.submit(item(2, None, 2)).await.unwrap();
        let b = batches.recv().await.unwrap();
        assert_eq!(tags(&b), [1, 2]);
        assert_eq!(t0.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn full_batch_is_delivered_without_waiting() {
        let (h, mut batches, _drops, _task) = start(cfg(3, 1000), 1);
        let t0 = tokio::time::Instant::now();
        for i in 0..3 {
            h.submit(item(i, None, i as u32)).await.unwrap();
        }
        let b = batches.recv().await.unwrap();
        assert_eq!(b.items.len(), 3);
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn item_expires_at_its_deadline_while_the_worker_is_busy() {
        let (h, mut batches, mut drops, _task) = start(cfg(1, 0), 1);
        // Batch A fills the one-slot channel; the worker does not take it yet.
        h.submit(item(1, None, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let deadline = now() + Duration::from_millis(20);
        h.submit(item(2, Some(deadline), 2)).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let (tag, reason) = drops.recv().await.unwrap();
        assert_eq!((tag, reason), (2, DropReason::Deadline));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(20),
            "answered at the deadline"
        );
        assert_eq!(tags(&batches.recv().await.unwrap()), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_is_answered_queue_full() {
        let config = BatcherConfig {
            max_queued_per_session: 1,
            ..cfg(8, 50)
        };
        let (h, _batches, mut drops, _task) = start(config, 1);
        h.submit(item(1, None, 1)).await.unwrap();
        h.submit(item(1, None, 2)).await.unwrap();
        assert_eq!(drops.recv().await.unwrap(), (2, DropReason::QueueFull));
    }

    #[tokio::test(start_paused = true)]
    async fn ending_a_session_answers_its_queued_items() {
        let (h, _batches, mut drops, _task) = start(cfg(8, 50), 1);
        h.submit(item(7, None, 1)).await.unwrap();
        h.end_session(SessionId(7)).await.unwrap();
        assert_eq!(drops.recv().await.unwrap(), (1, DropReason::SessionClosed));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_delivers_everything_queued_then_ends() {
        let (h, mut batches, mut drops, task) = start(cfg(2, 3_600_000), 4);
        let t0 = tokio::time::Instant::now();
        for i in 0..3 {
            h.submit(item(i, None, i as u32)).await.unwrap();
        }
        h.shutdown().await.unwrap();
        let mut got = Vec::new();
        while let Some(b) = batches.recv().await {
            got.extend(tags(&b));
        }
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "drained without waiting max_wait"
        );
        task.await.unwrap();
        assert!(drops.try_recv().is_err(), "nothing was dropped");
        let (_, stopped) = h.submit(item(9, None, 9)).await.unwrap_err();
        assert_eq!(stopped.to_string(), LoopStopped.to_string());
    }

    #[tokio::test(start_paused = true)]
    async fn gone_worker_drops_the_queue_with_shutdown() {
        let (h, batches, mut drops, task) = start(cfg(8, 50), 1);
        h.submit(item(1, None, 1)).await.unwrap();
        drop(batches);
        assert_eq!(drops.recv().await.unwrap(), (1, DropReason::Shutdown));
        task.await.unwrap();
    }
}
