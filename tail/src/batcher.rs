//! The edge's dynamic batcher, as a deterministic state machine.
//!
//! Frames from many devices wait here to be computed together. It holds no clock and
//! does no I/O (in the manner of `quinn-proto`): the caller passes `now` to every call
//! and asks [`Batcher::next_deadline`] when to come back. [`crate::batch_loop`] is the
//! tokio shell that drives it; tests drive it with a fake clock.
//!
//! Rules:
//! - Only items with the same [`BatchKey`] (model and split point) batch together:
//!   they run the same tail layers on tensors of the same shape.
//! - A key's batch is formed when it has `max_batch` items, or when its oldest item has
//!   waited `max_wait`, or `dispatch_slack` before the earliest deadline among its
//!   items (so an item is not left to expire while the batch fills), or at once when
//!   the batcher is closing.
//! - An item whose deadline has come (`now >= deadline`) is handed back as expired, to
//!   be answered `Dropped{deadline}`; it is never put in a batch.
//! - Fairness: a batch takes items round robin across the sessions that have some,
//!   starting after the session the previous batch of that key ended with, so one
//!   device cannot fill every batch. Within a session, first in first out.
//! - Bounded: at most `max_queued_per_session` items per session and `max_queued` in
//!   all. Past the first, [`Overflow`] says whether the new item or the session's oldest
//!   is dropped; past the second, the new item is refused. Both are answered
//!   `Dropped{queue_full}`.
//!
//! Every call is O(queued items); the queue is capped (hundreds of items), so a scan is
//! cheaper than keeping heaps in step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::reason::DropReason;

/// A device session, as numbered by the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// What the edge computes for a key's items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// The tail from the split point after `k` head stages (the model's point of that
    /// depth: a plain cut, or a learned bottleneck's code).
    Split(u32),
    /// The whole model, on an offloaded frame.
    Full,
}

impl Route {
    /// The `split` label of metrics: the point's depth (`4`) or `offload`.
    pub fn label(self) -> String {
        match self {
            Self::Split(k) => k.to_string(),
            Self::Full => "offload".to_owned(),
        }
    }
}

/// What items must share to be batched: the model and what runs of it (so the same
/// layers run on tensors of the same shape), and, for a model that keeps state between
/// a session's frames, the session (its frames run with its own state, never batched
/// with another's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchKey {
    /// The model's name (as in the edge config).
    pub model: Arc<str>,
    /// What runs.
    pub route: Route,
    /// The session whose state the items use; `None`: stateless, batched across
    /// sessions.
    pub session: Option<SessionId>,
}

impl BatchKey {
    /// A key for the tail of `model` from the split point of depth `split`.
    pub fn new(model: impl Into<Arc<str>>, split: u32) -> Self {
        Self::routed(model, Route::Split(split))
    }

    /// A key for `route` of `model`.
    pub fn routed(model: impl Into<Arc<str>>, route: Route) -> Self {
        Self {
            model: model.into(),
            route,
            session: None,
        }
    }

    /// The same key, for the frames of one stateful session.
    pub fn for_session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }
}

/// What to do when a session's own queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the new item. Default: the device learns at once that it is sending
    /// faster than the edge serves it, and its policy can react.
    #[default]
    RejectNew,
    /// Drop the session's oldest item and queue the new one (latest frame wins; for
    /// video, where a fresh frame is worth more than a stale one).
    DropOldest,
}

/// The batcher's settings. See `tail/edge.example.toml` for the reasons behind the
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Most items in one batch (at least 1). Default 8.
    pub max_batch: usize,
    /// Longest an item waits for company. Default 5 ms.
    pub max_wait: Duration,
    /// How long before the earliest deadline in a key its batch is formed regardless
    /// of size. Default 2 ms.
    pub dispatch_slack: Duration,
    /// Most items one session may have queued. Default 8.
    pub max_queued_per_session: usize,
    /// Most items queued in all. Default 512.
    pub max_queued: usize,
    /// What a full session queue does. Default [`Overflow::RejectNew`].
    pub overflow: Overflow,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            dispatch_slack: Duration::from_millis(2),
            max_queued_per_session: 8,
            max_queued: 512,
            overflow: Overflow::RejectNew,
        }
    }
}

/// A frame offered to the batcher.
#[derive(Debug)]
pub struct Item<T> {
    /// The session it belongs to.
    pub session: SessionId,
    /// What it may be batched with.
    pub key: BatchKey,
    /// When its answer is no longer useful; `None` for never.
    pub deadline: Option<Instant>,
    /// The frame (decoded tensor, responder, ...).
    pub payload: T,
}

/// An item the batcher accepted, with when it was accepted.
#[derive(Debug)]
pub struct Queued<T> {
    /// The item.
    pub item: Item<T>,
    /// When it was pushed.
    pub enqueued: Instant,
    seq: u64,
}

impl<T> Queued<T> {
    /// How long it has waited at `now`.
    pub fn waited(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.enqueued)
    }

    fn expired(&self, now: Instant) -> bool {
        self.item.deadline.is_some_and(|d| now >= d)
    }
}

/// Why an item was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Its session already has `max_queued_per_session` items.
    SessionQueueFull,
    /// The batcher already holds `max_queued` items.
    QueueFull,
    /// Its deadline had already come.
    DeadlinePassed,
    /// The batcher is closing (the edge is shutting down).
    Closing,
}

impl RejectReason {
    /// The reason the device is told.
    pub fn drop_reason(self) -> DropReason {
        match self {
            RejectReason::SessionQueueFull | RejectReason::QueueFull => DropReason::QueueFull,
            RejectReason::DeadlinePassed => DropReason::Deadline,
            RejectReason::Closing => DropReason::Shutdown,
        }
    }
}

/// An item the batcher refused, handed back to be answered.
#[derive(Debug)]
pub struct Rejected<T> {
    /// The item.
    pub item: Item<T>,
    /// Why.
    pub reason: RejectReason,
}

/// Why a batch was formed when it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// It reached `max_batch`.
    Full,
    /// Its oldest item waited `max_wait`.
    Waited,
    /// An item's deadline was near.
    Deadline,
    /// The batcher is closing.
    Draining,
}

/// Items to compute together.
#[derive(Debug)]
pub struct Batch<T> {
    /// What they share.
    pub key: BatchKey,
    /// The items, in the order the round robin took them.
    pub items: Vec<Queued<T>>,
    /// When the batch was formed.
    pub formed: Instant,
    /// Why then.
    pub trigger: Trigger,
}

impl<T> Batch<T> {
    /// Takes out the items whose deadline has come by `now` (the worker calls this
    /// just before computing, in case the batch waited for it).
    pub fn take_expired(&mut self, now: Instant) -> Vec<Queued<T>> {
        let (expired, keep) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|q| q.expired(now));
        self.items = keep;
        expired
    }
}

/// What [`Batcher::poll`] hands out.
#[derive(Debug)]
pub enum Polled<T> {
    /// An item whose deadline came while it waited: answer it `Dropped{deadline}`.
    Expired(Queued<T>),
    /// A batch to compute.
    Batch(Batch<T>),
}

#[derive(Debug)]
struct KeyQueue<T> {
    /// Non-empty per-session queues.
    sessions: BTreeMap<SessionId, VecDeque<Queued<T>>>,
    len: usize,
    /// The session the previous batch ended with.
    last_served: Option<SessionId>,
}

impl<T> KeyQueue<T> {
    fn new() -> Self {
        Self {
            sessions: BTreeMap::new(),
            len: 0,
            last_served: None,
        }
    }

    fn items(&self) -> impl Iterator<Item = &Queued<T>> {
        self.sessions.values().flatten()
    }

    /// When this key's batch is due, and why, ignoring fullness and closing.
    fn due(&self, cfg: &BatcherConfig) -> Option<(Instant, Trigger)> {
        let oldest = self.items().map(|q| q.enqueued).min()?;
        let waited = (oldest + cfg.max_wait, Trigger::Waited);
        let earliest = self.items().filter_map(|q| q.item.deadline).min();
        Some(match earliest {
            Some(d) => {
                let at = d.checked_sub(cfg.dispatch_slack).unwrap_or(d);
                if at < waited.0 {
                    (at, Trigger::Deadline)
                } else {
                    waited
                }
            }
            None => waited,
        })
    }
}

/// The dynamic batcher. See the module documentation for its rules.
#[derive(Debug)]
pub struct Batcher<T> {
    cfg: BatcherConfig,
    keys: BTreeMap<BatchKey, KeyQueue<T>>,
    per_session: HashMap<SessionId, usize>,
    len: usize,
    next_seq: u64,
    closing: bool,
}

impl<T> Batcher<T> {
    /// An empty batcher. `max_batch`, `max_queued_per_session` and `max_queued` are
    /// raised to at least 1.
    pub fn new(mut cfg: BatcherConfig) -> Self {
        cfg.max_batch = cfg.max_batch.max(1);
        cfg.max_queued_per_session = cfg.max_queued_per_session.max(1);
        cfg.max_queued = cfg.max_queued.max(1);
        Self {
            cfg,
            keys: BTreeMap::new(),
            per_session: HashMap::new(),
            len: 0,
            next_seq: 0,
            closing: false,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &BatcherConfig {
        &self.cfg
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items queued for one session.
    pub fn session_len(&self, session: SessionId) -> usize {
        self.per_session.get(&session).copied().unwrap_or(0)
    }

    /// Whether [`Batcher::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// How long the oldest queued item has waited at `now` (zero when empty): the
    /// queue delay the edge reports to devices.
    pub fn oldest_wait(&self, now: Instant) -> Duration {
        self.keys
            .values()
            .flat_map(|k| k.items())
            .map(|q| q.waited(now))
            .max()
            .unwrap_or_default()
    }

    /// Offers an item. `Ok(None)`: queued. `Ok(Some(old))`: queued, and the session's
    /// oldest item was dropped to make room ([`Overflow::DropOldest`]); answer it
    /// `Dropped{queue_full}`. `Err`: refused, the item is handed back with the reason.
    pub fn push(&mut self, item: Item<T>, now: Instant) -> Result<Option<Queued<T>>, Rejected<T>> {
        let reject = |item, reason| Err(Rejected { item, reason });
        if self.closing {
            return reject(item, RejectReason::Closing);
        }
        if item.deadline.is_some_and(|d| now >= d) {
            return reject(item, RejectReason::DeadlinePassed);
        }
        let mut displaced = None;
        if self.session_len(item.session) >= self.cfg.max_queued_per_session {
            match self.cfg.overflow {
                Overflow::RejectNew => return reject(item, RejectReason::SessionQueueFull),
                Overflow::DropOldest => displaced = self.remove_oldest_of(item.session),
            }
        }
        if self.len >= self.cfg.max_queued {
            return reject(item, RejectReason::QueueFull);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let session = item.session;
        let kq = self
            .keys
            .entry(item.key.clone())
            .or_insert_with(KeyQueue::new);
        kq.sessions.entry(session).or_default().push_back(Queued {
            item,
            enqueued: now,
            seq,
        });
        kq.len += 1;
        self.len += 1;
        *self.per_session.entry(session).or_default() += 1;
        Ok(displaced)
    }

    /// The next thing to do at `now`: an expired item first, then a due batch; `None`
    /// when nothing is due (come back at [`Batcher::next_deadline`]).
    pub fn poll(&mut self, now: Instant) -> Option<Polled<T>> {
        if let Some(q) = self.poll_expired(now) {
            return Some(Polled::Expired(q));
        }
        self.poll_batch(now).map(Polled::Batch)
    }

    /// The queued item with the earliest deadline that has come by `now`, if any. A
    /// shell whose worker is busy calls only this, so expired items are answered at
    /// once rather than when the worker frees up.
    pub fn poll_expired(&mut self, now: Instant) -> Option<Queued<T>> {
        let (key, session, _, seq) = self
            .keys
            .iter()
            .flat_map(|(key, kq)| kq.sessions.iter().map(move |(s, q)| (key, s, q)))
            .flat_map(|(key, s, q)| q.iter().map(move |x| (key, s, x)))
            .filter(|(_, _, x)| x.expired(now))
            .map(|(key, s, x)| (key.clone(), *s, x.item.deadline, x.seq))
            .min_by_key(|&(_, _, deadline, seq)| (deadline, seq))?;
        self.remove_by_seq(&key, session, seq)
    }

    /// Whether a batch is due at `now` (no expired item is considered).
    pub fn has_due_batch(&self, now: Instant) -> bool {
        self.due_key(now).is_some()
    }

    /// The batch due first at `now`, if any. Call [`Batcher::poll_expired`] first (or
    /// use [`Batcher::poll`]): an item whose deadline has come must be answered, not
    /// batched.
    fn poll_batch(&mut self, now: Instant) -> Option<Batch<T>> {
        let (key, trigger) = self.due_key(now)?;
        let max_batch = self.cfg.max_batch;
        let kq = self.keys.get_mut(&key)?;
        let ids: Vec<SessionId> = kq.sessions.keys().copied().collect();
        let n = ids.len();
        // Start after the session the previous batch ended with.
        let start = match kq.last_served {
            Some(last) => ids.iter().position(|&s| s > last).unwrap_or(0),
            None => 0,
        };
        let mut items = Vec::with_capacity(max_batch.min(kq.len));
        'rounds: loop {
            let mut took = false;
            for j in 0..n {
                let Some(id) = ids.get((start + j) % n) else {
                    continue;
                };
                let Some(q) = kq.sessions.get_mut(id) else {
                    continue;
                };
                if let Some(x) = q.pop_front() {
                    items.push(x);
                    kq.last_served = Some(*id);
                    took = true;
                    if items.len() == max_batch {
                        break 'rounds;
                    }
                }
            }
            if !took {
                break;
            }
        }
        kq.sessions.retain(|_, q| !q.is_empty());
        kq.len -= items.len();
        if kq.len == 0 {
            self.keys.remove(&key);
        }
        self.len -= items.len();
        for x in &items {
            self.dec_session(x.item.session);
        }
        tracing::trace!(model = %key.model, route = ?key.route, size = items.len(), ?trigger, "batch formed");
        Some(Batch {
            key,
            items,
            formed: now,
            trigger,
        })
    }

    /// When something will next be due: the earlier of [`Batcher::next_flush`] and
    /// [`Batcher::next_expiry`]. `None` when empty. It may be in the past: poll now.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_flush(), self.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next batch will be due (for a full or closing key: its oldest item's
    /// enqueue time, which is already past).
    pub fn next_flush(&self) -> Option<Instant> {
        self.keys
            .values()
            .filter_map(|kq| {
                if self.closing || kq.len >= self.cfg.max_batch {
                    kq.items().map(|q| q.enqueued).min()
                } else {
                    kq.due(&self.cfg).map(|(at, _)| at)
                }
            })
            .min()
    }

    /// The earliest deadline of any queued item.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.keys
            .values()
            .flat_map(|kq| kq.items())
            .filter_map(|q| q.item.deadline)
            .min()
    }

    /// Removes every item of a session (it closed), oldest first, to be answered.
    pub fn remove_session(&mut self, session: SessionId) -> Vec<Queued<T>> {
        let mut out = Vec::new();
        for kq in self.keys.values_mut() {
            if let Some(q) = kq.sessions.remove(&session) {
                kq.len -= q.len();
                out.extend(q);
            }
        }
        self.keys.retain(|_, kq| kq.len > 0);
        self.len -= out.len();
        self.per_session.remove(&session);
        out.sort_by_key(|q| q.seq);
        out
    }

    /// Stops accepting items; everything queued becomes due at once (graceful
    /// shutdown: answer what is in flight).
    pub fn close(&mut self) {
        self.closing = true;
    }

    fn due_key(&self, now: Instant) -> Option<(BatchKey, Trigger)> {
        self.keys
            .iter()
            .filter_map(|(key, kq)| {
                let (at, trigger) = kq.due(&self.cfg)?;
                let trigger = if self.closing {
                    Trigger::Draining
                } else if kq.len >= self.cfg.max_batch {
                    Trigger::Full
                } else if at <= now {
                    trigger
                } else {
                    return None;
                };
                Some((at, key, trigger))
            })
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
            .map(|(_, key, trigger)| (key.clone(), trigger))
    }

    fn remove_oldest_of(&mut self, session: SessionId) -> Option<Queued<T>> {
        let (key, seq) = self
            .keys
            .iter()
            .filter_map(|(key, kq)| kq.sessions.get(&session)?.front().map(|q| (key, q.seq)))
            .min_by_key(|&(_, seq)| seq)
            .map(|(key, seq)| (key.clone(), seq))?;
        self.remove_by_seq(&key, session, seq)
    }

    fn remove_by_seq(&mut self, key: &BatchKey, session: SessionId, seq: u64) -> Option<Queued<T>> {
        let kq = self.keys.get_mut(key)?;
        let q = kq.sessions.get_mut(&session)?;
        let pos = q.iter().position(|x| x.seq == seq)?;
        let removed = q.remove(pos)?;
        if q.is_empty() {
            kq.sessions.remove(&session);
        }
        kq.len -= 1;
        if kq.len == 0 {
            self.keys.remove(key);
        }
        self.len -= 1;
        self.dec_session(session);
        Some(removed)
    }

    fn dec_session(&mut self, session: SessionId) {
        if let Some(n) = self.per_session.get_mut(&session) {
            *n -= 1;
            if *n == 0 {
                self.per_session.remove(&session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake clock: `t(ms)` is a fixed origin plus `ms` milliseconds.
    struct Clock(Instant);
    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }
        fn t(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn cfg(max_batch: usize, max_wait_ms: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            dispatch_slack: Duration::from_millis(2),
            max_queued_per_session: 100,
            max_queued: 1000,
            overflow: Overflow::RejectNew,
        }
    }

    fn item(
        session: u64,
        model: &str,
        split: u32,
        deadline: Option<Instant>,
        tag: u32,
    ) -> Item<u32> {
        Item {
            session: SessionId(session),
            key: BatchKey::new(model, split),
            deadline,
            payload: tag,
        }
    }

    fn batch(p: Option<Polled<u32>>) -> Batch<u32> {
        match p {
            Some(Polled::Batch(b)) => b,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn tags(b: &Batch<u32>) -> Vec<u32> {
        b.items.iter().map(|q| q.item.payload).collect()
    }

    fn sessions(b: &Batch<u32>) -> Vec<u64> {
        b.items.iter().map(|q| q.item.session.0).collect()
    }

    #[test]
    fn full_batch_is_formed_at_once() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(3, 10));
        for i in 0..3 {
            b.push(item(i, "vit", 4, None, i as u32), c.t(0)).unwrap();
        }
        let got = batch(b.poll(c.t(0)));
        assert_eq!(got.trigger, Trigger::Full);
        assert_eq!(tags(&got), [0, 1, 2]);
        assert!(b.is_empty());
        assert!(b.poll(c.t(0)).is_none());
    }

    #[test]
    fn partial_batch_waits_max_wait_then_goes() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 10));
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        b.push(item(2, "vit", 4, None, 2), c.t(3)).unwrap();
        assert_eq!(
            b.next_deadline(),
            Some(c.t(10)),
            "due max_wait after the oldest"
        );
        assert!(b.poll(c.t(9)).is_none());
        let got = batch(b.poll(c.t(10)));
        assert_eq!(got.trigger, Trigger::Waited);
        assert_eq!(tags(&got), [1, 2]);
        assert_eq!(got.items[1].waited(got.formed), Duration::from_millis(7));
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn different_models_and_splits_never_share_a_batch() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 5));
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        b.push(item(2, "vit", 6, None, 2), c.t(1)).unwrap();
        b.push(item(3, "deit", 4, None, 3), c.t(2)).unwrap();
        b.push(item(4, "vit", 4, None, 4), c.t(3)).unwrap();
        // Each key is due max_wait after its own oldest; the earliest goes first.
        let first = batch(b.poll(c.t(20)));
        assert_eq!(
            (first.key.clone(), tags(&first)),
            (BatchKey::new("vit", 4), vec![1, 4])
        );
        let second = batch(b.poll(c.t(20)));
        assert_eq!(
            (second.key.clone(), tags(&second)),
            (BatchKey::new("vit", 6), vec![2])
        );
        let third = batch(b.poll(c.t(20)));
        assert_eq!(
            (third.key.clone(), tags(&third)),
            (BatchKey::new("deit", 4), vec![3])
        );
        assert!(b.poll(c.t(20)).is_none());
    }

    #[test]
    fn one_busy_session_cannot_monopolise_a_batch() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(4, 5));
        // Session 1 floods first; sessions 2 and 3 send one frame each afterwards.
        for i in 0..10 {
            b.push(item(1, "vit", 4, None, 100 + i), c.t(0)).unwrap();
        }
        b.push(item(2, "vit", 4, None, 200), c.t(1)).unwrap();
        b.push(item(3, "vit", 4, None, 300), c.t(1)).unwrap();
        let first = batch(b.poll(c.t(1)));
        assert_eq!(sessions(&first), [1, 2, 3, 1]);
        assert_eq!(tags(&first), [100, 200, 300, 101]);
        // The next batch starts after the session the last one ended with.
        b.push(item(2, "vit", 4, None, 201), c.t(2)).unwrap();
        let second = batch(b.poll(c.t(2)));
        assert_eq!(sessions(&second), [2, 1, 1, 1]);
        assert_eq!(tags(&second), [201, 102, 103, 104]);
    }

    #[test]
    fn round_robin_rotates_the_first_place_between_sessions() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(1, 0));
        for s in 1..=3 {
            for i in 0..2 {
                b.push(item(s, "vit", 4, None, (s * 10 + i) as u32), c.t(0))
                    .unwrap();
            }
        }
        let order: Vec<u64> = (0..6)
            .map(|_| sessions(&batch(b.poll(c.t(0))))[0])
            .collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn expired_item_is_handed_back_not_batched() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 50));
        b.push(item(1, "vit", 4, Some(c.t(10)), 1), c.t(0)).unwrap();
        b.push(item(2, "vit", 4, None, 2), c.t(0)).unwrap();
        // The worker was busy: nobody polled until well after the deadline.
        match b.poll(c.t(30)) {
            Some(Polled::Expired(q)) => assert_eq!(q.item.payload, 1),
            other => panic!("expected the expired item, got {other:?}"),
        }
        assert_eq!(b.len(), 1);
        let got = batch(b.poll(c.t(50)));
        assert_eq!(tags(&got), [2]);
    }

    #[test]
    fn near_deadline_forms_the_batch_early() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 50));
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        b.push(item(2, "vit", 4, Some(c.t(12)), 2), c.t(1)).unwrap();
        // Due dispatch_slack (2 ms) before the 12 ms deadline, not at 50 ms.
        assert_eq!(b.next_flush(), Some(c.t(10)));
        assert_eq!(b.next_expiry(), Some(c.t(12)));
        assert!(b.poll(c.t(9)).is_none());
        let got = batch(b.poll(c.t(10)));
        assert_eq!(got.trigger, Trigger::Deadline);
        assert_eq!(tags(&got), [1, 2]);
    }

    #[test]
    fn item_arriving_past_its_deadline_is_refused() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 5));
        let err = b
            .push(item(1, "vit", 4, Some(c.t(5)), 1), c.t(5))
            .unwrap_err();
        assert_eq!(err.reason, RejectReason::DeadlinePassed);
        assert_eq!(err.reason.drop_reason(), DropReason::Deadline);
        assert_eq!(err.item.payload, 1);
        assert!(b.is_empty());
    }

    #[test]
    fn full_session_queue_refuses_the_new_item() {
        let c = Clock::new();
        let mut b = Batcher::new(BatcherConfig {
            max_queued_per_session: 2,
            ..cfg(8, 5)
        });
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        b.push(item(1, "vit", 4, None, 2), c.t(0)).unwrap();
        let err = b.push(item(1, "vit", 4, None, 3), c.t(0)).unwrap_err();
        assert_eq!(err.reason, RejectReason::SessionQueueFull);
        assert_eq!(err.reason.drop_reason(), DropReason::QueueFull);
        // Another session still gets in.
        b.push(item(2, "vit", 4, None, 4), c.t(0)).unwrap();
        assert_eq!((b.session_len(SessionId(1)), b.len()), (2, 3));
    }

    #[test]
    fn drop_oldest_overflow_keeps_the_newest_frames() {
        let c = Clock::new();
        let mut b = Batcher::new(BatcherConfig {
            max_queued_per_session: 2,
            overflow: Overflow::DropOldest,
            ..cfg(8, 5)
        });
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        b.push(item(1, "vit", 6, None, 2), c.t(1)).unwrap();
        let displaced = b.push(item(1, "vit", 4, None, 3), c.t(2)).unwrap().unwrap();
        assert_eq!(displaced.item.payload, 1);
        assert_eq!(b.session_len(SessionId(1)), 2);
        let mut left: Vec<u32> = std::iter::from_fn(|| b.poll(c.t(100)))
            .flat_map(|p| tags(&batch(Some(p))))
            .collect();
        left.sort();
        assert_eq!(left, [2, 3]);
    }

    #[test]
    fn full_batcher_refuses_every_session() {
        let c = Clock::new();
        let mut b = Batcher::new(BatcherConfig {
            max_queued: 3,
            ..cfg(8, 5)
        });
        for s in 0..3 {
            b.push(item(s, "vit", 4, None, 0), c.t(0)).unwrap();
        }
        let err = b.push(item(9, "vit", 4, None, 0), c.t(0)).unwrap_err();
        assert_eq!(err.reason, RejectReason::QueueFull);
    }

    #[test]
    fn closing_drains_everything_at_once_and_refuses_new_items() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(2, 1000));
        for i in 0..3 {
            b.push(item(1, "vit", 4, None, i), c.t(0)).unwrap();
        }
        b.push(item(2, "deit", 4, None, 9), c.t(0)).unwrap();
        b.close();
        let err = b.push(item(3, "vit", 4, None, 0), c.t(1)).unwrap_err();
        assert_eq!(err.reason, RejectReason::Closing);
        assert_eq!(b.next_deadline(), Some(c.t(0)));
        let mut sizes = Vec::new();
        while let Some(p) = b.poll(c.t(1)) {
            let got = batch(Some(p));
            assert_eq!(got.trigger, Trigger::Draining);
            sizes.push(got.items.len());
        }
        sizes.sort();
        assert_eq!(sizes, [1, 1, 2]);
        assert!(b.is_empty());
    }

    #[test]
    fn removing_a_session_returns_its_items_in_order() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 5));
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        b.push(item(2, "vit", 4, None, 2), c.t(0)).unwrap();
        b.push(item(1, "vit", 6, None, 3), c.t(1)).unwrap();
        let gone: Vec<u32> = b
            .remove_session(SessionId(1))
            .into_iter()
            .map(|q| q.item.payload)
            .collect();
        assert_eq!(gone, [1, 3]);
        assert_eq!((b.len(), b.session_len(SessionId(1))), (1, 0));
        assert_eq!(tags(&batch(b.poll(c.t(5)))), [2]);
    }

    #[test]
    fn oldest_wait_reports_queue_delay() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(8, 100));
        assert_eq!(b.oldest_wait(c.t(0)), Duration::ZERO);
        b.push(item(1, "vit", 4, None, 1), c.t(2)).unwrap();
        b.push(item(1, "vit", 4, None, 2), c.t(5)).unwrap();
        assert_eq!(b.oldest_wait(c.t(9)), Duration::from_millis(7));
    }

    #[test]
    fn batch_take_expired_splits_off_late_items() {
        let c = Clock::new();
        let mut b = Batcher::new(cfg(2, 5));
        b.push(item(1, "vit", 4, Some(c.t(8)), 1), c.t(0)).unwrap();
        b.push(item(2, "vit", 4, None, 2), c.t(0)).unwrap();
        let mut got = batch(b.poll(c.t(0)));
        let late = got.take_expired(c.t(8));
        assert_eq!(late.iter().map(|q| q.item.payload).collect::<Vec<_>>(), [1]);
        assert_eq!(tags(&got), [2]);
    }

    #[test]
    fn zero_sizes_are_raised_to_one() {
        let c = Clock::new();
        let mut b = Batcher::new(BatcherConfig {
            max_batch: 0,
            max_queued: 0,
            ..cfg(0, 5)
        });
        b.push(item(1, "vit", 4, None, 1), c.t(0)).unwrap();
        assert_eq!(tags(&batch(b.poll(c.t(0)))), [1]);
    }

    /// A random schedule of pushes and polls never loses or duplicates an item, never
    /// batches across keys, never exceeds the limits, and never batches an expired
    /// item.
    #[test]
    fn random_schedules_keep_every_invariant() {
        let c = Clock::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let config = BatcherConfig {
            max_batch: 4,
            max_wait: Duration::from_millis(3),
            dispatch_slack: Duration::from_millis(1),
            max_queued_per_session: 5,
            max_queued: 12,
            overflow: Overflow::DropOldest,
        };
        let mut b = Batcher::new(config);
        let mut accounted = std::collections::HashSet::new();
        let mut pushed = 0u32;
        let mut now_ms = 0;
        for _ in 0..5000 {
            now_ms += next() % 2;
            let now = c.t(now_ms);
            if next() % 3 != 0 {
                let deadline = (next() % 2 == 0).then(|| c.t(now_ms + 1 + next() % 10));
                let it = item(
                    next() % 6,
                    ["a", "b"][(next() % 2) as usize],
                    (next() % 2) as u32,
                    deadline,
                    pushed,
                );
                pushed += 1;
                match b.push(it, now) {
                    Ok(Some(d)) => assert!(accounted.insert(d.item.payload)),
                    Ok(None) => {}
                    Err(r) => assert!(accounted.insert(r.item.payload)),
                }
            } else {
                while let Some(p) = b.poll(now) {
                    match p {
                        Polled::Expired(q) => {
                            assert!(q.item.deadline.unwrap() <= now);
                            assert!(accounted.insert(q.item.payload));
                        }
                        Polled::Batch(bt) => {
                            assert!(!bt.items.is_empty() && bt.items.len() <= 4);
                            for q in &bt.items {
                                assert_eq!(q.item.key, bt.key);
                                assert!(q.item.deadline.is_none_or(|d| d > now));
                                assert!(accounted.insert(q.item.payload));
                            }
                        }
                    }
                }
            }
            assert!(b.len() <= 12);
            for s in 0..6 {
                assert!(b.session_len(SessionId(s)) <= 5);
            }
        }
        b.close();
        while let Some(p) = b.poll(c.t(now_ms)) {
            match p {
                Polled::Expired(q) => assert!(accounted.insert(q.item.payload)),
                Polled::Batch(bt) => bt
                    .items
                    .iter()
                    .for_each(|q| assert!(accounted.insert(q.item.payload))),
            }
        }
        assert_eq!(
            accounted.len() as u32,
            pushed,
            "every item is answered exactly once"
        );
    }
}
