//! The running edge: QUIC sessions in, frames through the batcher, tails on a worker
//! thread, answers on each frame's own stream.
//!
//! ```text
//! Server::accept -> one task per session: next_frame -> BatchHandle::submit
//!   batch loop (deterministic Batcher) -> Batch (same model and split point)
//!   worker thread: decode codec frames / JPEGs -> one [B, ...] tensor -> tail or full
//!   model -> logits row per frame as a lossless codec frame -> Responder::answer
//! ```
//!
//! Anything that cannot be computed is answered `Dropped` with its reason (deadline,
//! queue full, undecodable payload, shed by the power governor, shutdown): nothing is
//! left unanswered. The compute runs on its own OS thread so a long tail never stalls
//! the QUIC tasks.
//!
//! With a power governor ([`EdgeOptions::power`], see [`crate::governor`]) each session
//! task admits frames through its [`SessionGate`] (shedding offload work above T2,
//! rate-capping low-priority devices above T1), the worker computes low-priority frames
//! in smaller groups above T1, and every session is pushed a `Status` with the
//! governor's advice, the power headroom, the worker's load and the queue delay: at
//! once when the governor changes level, else every [`STATUS_REFRESH`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use splitstream_codec::DecodeLimits;
use splitstream_models::net::NetState;
use splitstream_models::HostTensor;
use splitstream_transport::acceptor::ModelEntry;
use splitstream_transport::tls::TlsConfigError;
use splitstream_transport::{
    Acceptor, BindError, Capabilities, DropReason as WireDrop, Fingerprint, RejectReason,
    Responder, Server, ServerConfig, ServerIdentity, Session, StreamConfig, TokenStore,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::batch_loop::{spawn_batch_loop, BatchHandle, Dropped};
use crate::batcher::{Batch, BatchKey, BatcherConfig, Item, Route, SessionId};
use crate::governor::{
    self, plan_batch, GovernorDriver, GovernorObserver, LoadTracker, PowerConfig, PowerState,
    Priority, SessionGate,
};
use crate::llm;
use crate::metrics::EdgeMetrics;
use crate::model::{CodecChoice, ServedModel, JPEG_CODEC, OFFLOAD_SPLIT};
use crate::offload::{decode_jpeg, DEFAULT_MAX_SIDE};
use crate::reason::DropReason;
use crate::state::{self, StateHandle, StateLimits, StateStore};

/// What runs on the edge besides the transport's own configuration.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// Dynamic batching.
    pub batcher: BatcherConfig,
    /// Largest side of an offloaded JPEG accepted.
    pub max_jpeg_side: u32,
    /// How long shutdown waits for connections to close after answering everything.
    pub close_grace: Duration,
    /// The power governor; `None`: none (devices are told full headroom and normal
    /// advice).
    pub power: Option<PowerConfig>,
    /// Caps on the state stateful models keep per session (KV caches, membranes).
    pub state: StateLimits,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            batcher: BatcherConfig::default(),
            max_jpeg_side: DEFAULT_MAX_SIDE,
            close_grace: Duration::from_secs(1),
            power: None,
            state: StateLimits::default(),
        }
    }
}

/// How often each session's status is refreshed (load and queue delay change without
/// the governor changing level). The transport's own status interval is 500 ms.
pub const STATUS_REFRESH: Duration = Duration::from_millis(500);

/// Errors starting the edge.
#[derive(Debug, thiserror::Error)]
pub enum StartEdgeError {
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Two models share a name.
    #[error("two models are named '{0}': give each [[model]] its own name")]
    DuplicateModel(String),
    /// The worker thread could not start.
    #[error("cannot start the tail worker thread: {0}")]
    Worker(std::io::Error),
    /// The power governor could not start (bad `[power]` values, an unreadable power
    /// source, a GPU cap that was asked for and is not there).
    #[error("cannot start the power governor: {0}")]
    Power(String),
    /// The self-signed certificate of a loopback edge could not be made.
    #[error("cannot make the loopback edge's certificate")]
    Certificate(#[source] TlsConfigError),
}

/// Counters an operator or a test reads without parsing Prometheus text.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Batches computed.
    pub batches: AtomicU64,
    /// Frames answered with a result.
    pub answered: AtomicU64,
    /// Frames answered `Dropped`.
    pub dropped: AtomicU64,
    /// The largest batch computed so far.
    pub largest_batch: AtomicUsize,
    /// Batches of more than one frame.
    pub multi_frame_batches: AtomicU64,
}

/// The edge's say over sessions: the models it loaded, their splits, codecs, offload,
/// and whether a session's model state fits the caps.
struct Registry {
    models: HashMap<String, (ModelEntry, bool)>,
    /// Bytes a session's state may reach, per stateful model.
    state_sizes: HashMap<String, usize>,
    state: Arc<StateStore>,
}

impl Acceptor for Registry {
    fn check(
        &self,
        _device_id: &str,
        config: &StreamConfig,
        _caps: &Capabilities,
    ) -> Result<(), RejectReason> {
        let arch = &config.model.arch;
        let (entry, offload) = self
            .models
            .get(arch)
            .ok_or_else(|| RejectReason::UnknownModel { arch: arch.clone() })?;
        if entry.weights_sha256 != config.model.weights_sha256 {
            return Err(RejectReason::WeightsMismatch {
                arch: arch.clone(),
                device_sha256: config.model.weights_hex(),
                edge_sha256: config_hex(&entry.weights_sha256),
            });
        }
        if let Some(&need) = self.state_sizes.get(arch) {
            self.state
                .admissible(need)
                .map_err(|e| RejectReason::Policy(e.to_string()))?;
        }
        if config.split == OFFLOAD_SPLIT {
            if !offload {
                return Err(RejectReason::Policy(format!(
                    "model '{arch}' is not served for offload: use split mode"
                )));
            }
            if config.codec.scheme != JPEG_CODEC {
                return Err(RejectReason::UnsupportedCodec {
                    scheme: config.codec.scheme.clone(),
                    supported: vec![JPEG_CODEC.to_owned()],
                });
            }
            return Ok(());
        }
        if !entry.splits.contains(&config.split) {
            return Err(RejectReason::UnsupportedSplit {
                split: config.split.clone(),
                supported: entry.splits.iter().cloned().collect(),
            });
        }
        if !entry.codecs.contains(&config.codec.scheme) {
            return Err(RejectReason::UnsupportedCodec {
                scheme: config.codec.scheme.clone(),
                supported: entry.codecs.iter().cloned().collect(),
            });
        }
        Ok(())
    }
}

fn config_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame on its way through the batcher.
struct Job {
    payload: Bytes,
    responder: Responder,
    priority: Priority,
    /// The session's model state, for a stateful model.
    state: Option<StateHandle>,
}

/// What every session task shares.
#[derive(Clone)]
struct SessionShared {
    batches: BatchHandle<Job>,
    models: Arc<HashMap<Arc<str>, ServedModel>>,
    metrics: Arc<EdgeMetrics>,
    power: watch::Receiver<PowerState>,
    load: Arc<LoadTracker>,
    low_priority: Arc<[String]>,
    state: Arc<StateStore>,
}

/// A running edge. Dropping it without [`RunningEdge::shutdown`] aborts it.
pub struct RunningEdge {
    local_addr: std::net::SocketAddr,
    fingerprint: Fingerprint,
    metrics: Arc<EdgeMetrics>,
    counters: Arc<EdgeCounters>,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<Option<Server>>>,
    batch_handle: BatchHandle<Job>,
    loop_task: Option<JoinHandle<()>>,
    worker_done: Option<oneshot::Receiver<()>>,
    close_grace: Duration,
    power: watch::Receiver<PowerState>,
    /// Keeps an ungoverned edge's state channel open (the governor owns it otherwise).
    _ungoverned: Option<watch::Sender<PowerState>>,
    governor_stop: watch::Sender<bool>,
    governor_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEdge")
            .field("local_addr", &self.local_addr)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl RunningEdge {
    /// An in-process edge on 127.0.0.1 (a free port) with a fresh self-signed
    /// certificate for `localhost`, serving `models` to the devices in `tokens`: what
    /// the demo, the benches and the end-to-end tests run (devices pin its
    /// [`RunningEdge::fingerprint`]). Call from a tokio runtime.
    pub fn loopback(
        models: Vec<ServedModel>,
        tokens: TokenStore,
        options: EdgeOptions,
        metrics: Arc<EdgeMetrics>,
    ) -> Result<Self, StartEdgeError> {
        let identity =
            ServerIdentity::self_signed(&["localhost"]).map_err(StartEdgeError::Certificate)?;
        let server = ServerConfig::new(([127, 0, 0, 1], 0).into(), identity, tokens);
        Self::start(server, models, options, metrics)
    }

    /// Binds the QUIC endpoint and starts serving `models`. Call from a tokio runtime.
    pub fn start(
        server: ServerConfig,
        models: Vec<ServedModel>,
        options: EdgeOptions,
        metrics: Arc<EdgeMetrics>,
    ) -> Result<Self, StartEdgeError> {
        // The governor first: a bad [power] table or an unreadable source stops the
        // start before anything listens.
        let (governor_stop, governor_stop_rx) = watch::channel(false);
        let (power, ungoverned, governor_task, low_priority) = match &options.power {
            Some(pc) => {
                pc.validate().map_err(StartEdgeError::Power)?;
                let source =
                    governor::open_source(pc).map_err(|e| StartEdgeError::Power(e.to_string()))?;
                let gpu = governor::open_gpu_cap(pc).map_err(StartEdgeError::Power)?;
                metrics.power_budget(pc.budget_w);
                let observer: Arc<dyn GovernorObserver> = metrics.clone();
                let (mut driver, rx) = GovernorDriver::new(pc.governor(), source, pc.interval());
                driver = driver.with_observer(observer);
                if let Some(gpu) = gpu {
                    driver = driver.with_gpu(gpu);
                }
                let task = driver.spawn(governor_stop_rx);
                (rx, None, Some(task), Arc::from(pc.low_priority.clone()))
            }
            None => {
                let (tx, rx) = watch::channel(PowerState::ungoverned());
                (rx, Some(tx), None, Arc::from(Vec::new()))
            }
        };
        let load = Arc::new(LoadTracker::new());
        let state = Arc::new(StateStore::new(options.state));
        let mut registry = Registry {
            models: HashMap::new(),
            state_sizes: HashMap::new(),
            state: state.clone(),
        };
        let mut table: HashMap<Arc<str>, ServedModel> = HashMap::new();
        for m in models {
            let name = m.id.arch.clone();
            let entry = ModelEntry {
                weights_sha256: m.id.weights_sha256,
                splits: m.served_split_names().into_iter().collect(),
                codecs: CodecChoice::ALL
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect(),
            };
            if registry
                .models
                .insert(name.clone(), (entry, m.offload && m.transform().is_some()))
                .is_some()
            {
                return Err(StartEdgeError::DuplicateModel(name));
            }
            if let Some(need) = m.net.state_size() {
                registry.state_sizes.insert(name.clone(), need);
            }
            table.insert(Arc::from(name.as_str()), m);
        }
        let table = Arc::new(table);
        let server = Server::bind(server, registry)?;
        let local_addr = server.local_addr();
        let fingerprint = server.fingerprint();
        let counters = Arc::new(EdgeCounters::default());

        let (batch_tx, batch_rx) = mpsc::channel(1);
        let m = metrics.clone();
        let c = counters.clone();
        let (batch_handle, loop_task) =
            spawn_batch_loop(options.batcher.clone(), batch_tx, move |d: Dropped<Job>| {
                m.dropped(d.reason);
                c.dropped.fetch_add(1, Ordering::Relaxed);
                let _ = d.item.payload.responder.drop_frame(wire_reason(d.reason));
            });

        let (done_tx, done_rx) = oneshot::channel();
        let worker = Worker {
            models: table.clone(),
            metrics: metrics.clone(),
            counters: counters.clone(),
            max_jpeg_side: options.max_jpeg_side,
            power: power.clone(),
            load: load.clone(),
        };
        std::thread::Builder::new()
            .name("splitstream-tail".into())
            .spawn(move || {
                worker.run(batch_rx);
                let _ = done_tx.send(());
            })
            .map_err(StartEdgeError::Worker)?;

        let (stop, stop_rx) = watch::channel(false);
        let shared = SessionShared {
            batches: batch_handle.clone(),
            models: table,
            metrics: metrics.clone(),
            power: power.clone(),
            load,
            low_priority,
            state,
        };
        let accept_task = tokio::spawn(accept_loop(server, stop_rx, shared));
        Ok(Self {
            local_addr,
            fingerprint,
            metrics,
            counters,
            stop,
            accept_task: Some(accept_task),
            batch_handle,
            loop_task: Some(loop_task),
            worker_done: Some(done_rx),
            close_grace: options.close_grace,
            power,
            _ungoverned: ungoverned,
            governor_stop,
            governor_task,
        })
    }

    /// The power governor's state now (level, power, headroom); an edge without a
    /// governor is always [`PowerState::ungoverned`].
    pub fn power_state(&self) -> PowerState {
        self.power.borrow().clone()
    }

    /// The UDP address it listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// The certificate fingerprint devices pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.metrics
    }

    /// Plain counters (batches, largest batch, answered, dropped).
    pub fn counters(&self) -> &Arc<EdgeCounters> {
        &self.counters
    }

    /// Graceful shutdown: stop accepting sessions and frames, compute or answer
    /// everything queued, then close the connections.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let server = match self.accept_task.take() {
            Some(t) => t.await.ok().flatten(),
            None => None,
        };
        let _ = self.batch_handle.shutdown().await;
        if let Some(t) = self.loop_task.take() {
            let _ = t.await;
        }
        if let Some(done) = self.worker_done.take() {
            let _ = done.await;
        }
        // Everything is computed: the GPU gets its own setting back.
        let _ = self.governor_stop.send(true);
        if let Some(t) = self.governor_task.take() {
            let _ = t.await;
        }
        if let Some(server) = server {
            server.shutdown(self.close_grace).await;
        }
    }

    /// Stops abruptly, as a crash would: tasks are aborted, nothing in flight is
    /// answered, the endpoint goes away.
    pub fn kill(mut self) {
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
        if let Some(t) = self.loop_task.take() {
            t.abort();
        }
    }
}

impl Drop for RunningEdge {
    fn drop(&mut self) {
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
        if let Some(t) = self.loop_task.take() {
            t.abort();
        }
        // Dropping the driver drops its GPU cap, which restores the GPU.
        if let Some(t) = self.governor_task.take() {
            t.abort();
        }
    }
}

fn wire_reason(reason: DropReason) -> WireDrop {
    match reason {
        DropReason::Deadline => WireDrop::DeadlineExpired,
        DropReason::QueueFull | DropReason::Shed => WireDrop::Overloaded,
        DropReason::Overtaken => WireDrop::Other("overtaken by a newer frame".into()),
        DropReason::BadFrame => WireDrop::Undecodable,
        DropReason::Error => WireDrop::Other("the tail failed on the edge".into()),
        DropReason::SessionClosed => WireDrop::Abandoned,
        DropReason::Shutdown => WireDrop::ShuttingDown,
    }
}

async fn accept_loop(
    mut server: Server,
    mut stop: watch::Receiver<bool>,
    shared: SessionShared,
) -> Option<Server> {
    let mut sessions = Vec::new();
    let session_stop = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            session = server.accept() => match session {
                Some(session) => {
                    shared.metrics.session_opened();
                    sessions.push(tokio::spawn(serve_session(
                        session,
                        session_stop.clone(),
                        shared.clone(),
                    )));
                }
                None => break,
            },
        }
    }
    // Frames already read are submitted (and answered) before the batch loop drains.
    for s in sessions {
        let _ = s.await;
    }
    Some(server)
}

async fn serve_session(
    mut session: Session,
    mut stop: watch::Receiver<bool>,
    shared: SessionShared,
) {
    let SessionShared {
        batches,
        models,
        metrics,
        mut power,
        load,
        low_priority,
        state,
    } = shared;
    let id = SessionId(session.info().session_id);
    let priority = Priority::of(
        &session.info().device_id,
        &session.info().capabilities.extensions,
        &low_priority,
    );
    let mut gate = SessionGate::new(priority);
    tracing::info!(
        device = %session.info().device_id,
        session = id.0,
        priority = priority.as_str(),
        "session opened"
    );
    let status = session.status_handle();
    let push_status = |power: &PowerState, draining: bool| {
        let now = Instant::now();
        status.push(governor::gate::status(
            power,
            load.load(now),
            load.queue_delay(now),
            draining,
        ));
    };
    push_status(&power.borrow_and_update(), false);
    let mut refresh = tokio::time::interval(STATUS_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut power_open = true;
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                push_status(&power.borrow(), true);
                break;
            }
            changed = power.changed(), if power_open => {
                match changed {
                    Ok(()) => push_status(&power.borrow_and_update(), false),
                    Err(_) => power_open = false,
                }
                continue;
            }
            _ = refresh.tick() => {
                push_status(&power.borrow(), false);
                continue;
            }
            f = session.next_frame() => match f { Some(f) => f, None => break },
        };
        let config = &frame.meta.config;
        let Some(model) = models.get(config.model.arch.as_str()) else {
            let _ = frame.responder.drop_frame(WireDrop::StaleConfig);
            continue;
        };
        let Some(route) = model.route(&config.split) else {
            metrics.dropped(DropReason::BadFrame);
            let _ = frame.responder.drop_frame(WireDrop::StaleConfig);
            continue;
        };
        let admitted = gate.admit(&power.borrow(), route == Route::Full, Instant::now());
        if let Err(why) = admitted {
            metrics.dropped(DropReason::Shed);
            metrics.governor_shed(why);
            tracing::debug!(session = id.0, reason = why.as_str(), "frame shed");
            let _ = frame
                .responder
                .drop_frame(WireDrop::Other(why.message().to_owned()));
            continue;
        }
        // A stateful model's frames run with this session's state, one session per
        // batch; its state is created (and reserved) on the session's first frame.
        let name: Arc<str> = Arc::from(model.id.arch.as_str());
        let mut key = BatchKey::routed(name.clone(), route);
        let session_state = match state.open(id, &name, model.net.as_ref()) {
            Ok(s) => s,
            Err(why) => {
                metrics.dropped(DropReason::Shed);
                tracing::debug!(session = id.0, "frame refused: {why}");
                let _ = frame.responder.drop_frame(WireDrop::Other(why.to_string()));
                continue;
            }
        };
        // An LLM's steps batch across sessions (continuous batching, `llm.rs`); other
        // stateful models run one session per batch.
        if session_state.is_some() && !model.is_llm() {
            key = key.for_session(id);
        }
        let item = Item {
            session: id,
            key,
            deadline: Some(frame.meta.deadline),
            payload: Job {
                payload: frame.payload,
                responder: frame.responder,
                priority,
                state: session_state,
            },
        };
        if let Err((item, _)) = batches.submit(item).await {
            metrics.dropped(DropReason::Shutdown);
            let _ = item.payload.responder.drop_frame(WireDrop::ShuttingDown);
        }
    }
    let _ = batches.end_session(id).await;
    // Frames still queued hold their own handle to the state; the store lets go.
    state.close_session(id);
    metrics.session_closed();
    tracing::info!(session = id.0, "session closed");
}

struct Worker {
    models: Arc<HashMap<Arc<str>, ServedModel>>,
    metrics: Arc<EdgeMetrics>,
    counters: Arc<EdgeCounters>,
    max_jpeg_side: u32,
    power: watch::Receiver<PowerState>,
    load: Arc<LoadTracker>,
}

impl Worker {
    fn run(self, mut batches: mpsc::Receiver<Batch<Job>>) {
        while let Some(batch) = batches.blocking_recv() {
            self.compute(batch);
        }
    }

    fn drop_job(&self, job: Job, reason: DropReason) {
        self.metrics.dropped(reason);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let _ = job.responder.drop_frame(wire_reason(reason));
    }

    fn compute(&self, mut batch: Batch<Job>) {
        self.metrics.batch_formed(&batch);
        let now = Instant::now();
        for late in batch.take_expired(now) {
            self.drop_job(late.item.payload, DropReason::Deadline);
        }
        let key = batch.key.clone();
        let Some(model) = self.models.get(&key.model) else {
            for q in batch.items {
                self.drop_job(q.item.payload, DropReason::Error);
            }
            return;
        };
        if model.is_llm() {
            let jobs = batch
                .items
                .into_iter()
                .map(|q| {
                    self.metrics.queue_delay(&key, q.waited(now));
                    self.load.waited(q.waited(now), now);
                    (q.item.session, q.item.payload)
                })
                .collect();
            self.compute_llm(model, &key, jobs);
            return;
        }
        let Some(shape_tail) = model.input_shape(key.route) else {
            for q in batch.items {
                self.drop_job(q.item.payload, DropReason::Error);
            }
            return;
        };
        // Decode every payload into one row of the batch; bad ones are answered now.
        let per_item: usize = shape_tail.iter().product();
        let limits = DecodeLimits {
            max_elements: per_item,
            max_bytes: per_item.saturating_mul(4),
        };
        let transform = model.transform();
        let recorder = splitstream_power::record::global();
        let mut data = Vec::with_capacity(per_item * batch.items.len());
        let mut jobs = Vec::with_capacity(batch.items.len());
        for q in batch.items {
            self.metrics.queue_delay(&key, q.waited(now));
            self.load.waited(q.waited(now), now);
            let job = q.item.payload;
            if job.responder.is_cancelled() {
                self.drop_job(job, DropReason::Overtaken);
                continue;
            }
            let decode_started = Instant::now();
            let row = if key.route == Route::Full {
                transform.and_then(|t| {
                    decode_jpeg(&job.payload, self.max_jpeg_side)
                        .ok()
                        .map(|img| t.apply(&img))
                })
            } else {
                splitstream_codec::decode(&job.payload, &limits)
                    .ok()
                    // [1, N, D] or [N, D]: the element count is what must match.
                    .filter(|t| t.shape.iter().product::<usize>() == per_item)
                    .map(|t| t.to_f32())
            };
            if let Some(rec) = &recorder {
                rec.stage("decode", decode_started, decode_started.elapsed(), None);
            }
            match row {
                Some(row) if row.len() == per_item => {
                    data.extend_from_slice(&row);
                    jobs.push(job);
                }
                _ => self.drop_job(job, DropReason::BadFrame),
            }
        }
        if jobs.is_empty() {
            return;
        }
        // Above T1 the low-priority frames run in smaller groups after the rest (the
        // governor's batch cap); otherwise the batch runs whole.
        let priorities: Vec<Priority> = jobs.iter().map(|j| j.priority).collect();
        let groups = plan_batch(&priorities, self.power.borrow().low_priority_cap);
        let mut jobs: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
        for group in groups {
            let mut rows = Vec::with_capacity(per_item * group.len());
            let mut group_jobs = Vec::with_capacity(group.len());
            for i in group {
                let (Some(job), Some(row)) = (
                    jobs.get_mut(i).and_then(Option::take),
                    data.get(i * per_item..(i + 1) * per_item),
                ) else {
                    continue;
                };
                rows.extend_from_slice(row);
                group_jobs.push(job);
            }
            self.run_group(model, &key, &shape_tail, rows, group_jobs);
        }
    }

    fn drop_llm(&self, job: Job, why: String) {
        tracing::debug!("llm step refused: {why}");
        self.metrics.dropped(DropReason::BadFrame);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let _ = job.responder.drop_frame(WireDrop::Other(why));
    }

    /// An LLM's batch: steps parsed and checked against each session's KV cache, then
    /// run in waves (`llm::waves`): one step per session per wave, the decode steps of
    /// a wave as one batch through the tail layers, a prefill alone.
    fn compute_llm(&self, model: &ServedModel, key: &BatchKey, jobs: Vec<(SessionId, Job)>) {
        let (Route::Split(k), Some(context)) = (key.route, model.context()) else {
            for (_, job) in jobs {
                self.drop_job(job, DropReason::Error);
            }
            return;
        };
        let Some(point) = model
            .served_points()
            .into_iter()
            .find(|p| u32::try_from(p.depth).ok() == Some(k))
            .map(|p| p.name.clone())
        else {
            for (_, job) in jobs {
                self.drop_job(job, DropReason::Error);
            }
            return;
        };
        let d = model
            .net
            .split_points()
            .first()
            .and_then(|p| p.shape.last().copied());
        let mut parsed: Vec<Option<(Job, llm::Step)>> = Vec::with_capacity(jobs.len());
        let mut sessions = Vec::with_capacity(jobs.len());
        for (session, job) in jobs {
            if job.responder.is_cancelled() {
                self.drop_job(job, DropReason::Overtaken);
                continue;
            }
            match llm::parse_step(&job.payload, d.unwrap_or(0), context) {
                Ok(step) if job.state.is_some() => {
                    parsed.push(Some((job, step)));
                    sessions.push(session);
                }
                Ok(_) => self.drop_job(job, DropReason::Error),
                Err(why) => self.drop_llm(job, format!("not a step frame: {why}")),
            }
        }
        for wave in llm::waves(&sessions) {
            let mut decode = Vec::new();
            for i in wave {
                let Some((job, step)) = parsed.get_mut(i).and_then(Option::take) else {
                    continue;
                };
                if step.positions() == 1 {
                    decode.push((job, step));
                } else {
                    self.run_llm(model, key, &point, context, vec![(job, step)]);
                }
            }
            if !decode.is_empty() {
                self.run_llm(model, key, &point, context, decode);
            }
        }
    }

    /// Runs steps of distinct sessions together (several only when each is one
    /// position) and answers each.
    fn run_llm(
        &self,
        model: &ServedModel,
        key: &BatchKey,
        point: &str,
        context: usize,
        steps: Vec<(Job, llm::Step)>,
    ) {
        let handles: Vec<StateHandle> = steps.iter().filter_map(|(j, _)| j.state.clone()).collect();
        if handles.len() != steps.len() {
            for (job, _) in steps {
                self.drop_job(job, DropReason::Error);
            }
            return;
        }
        let mut guards: Vec<_> = handles.iter().map(state::lock).collect();
        let mut ready = Vec::with_capacity(steps.len());
        let mut ready_guards = Vec::with_capacity(steps.len());
        for ((job, step), mut guard) in steps.into_iter().zip(guards.drain(..)) {
            match llm::check_position(&mut **guard, &step, context) {
                Ok(()) => {
                    ready.push((job, step));
                    ready_guards.push(guard);
                }
                Err(why) => self.drop_llm(job, why),
            }
        }
        let n = ready.len();
        if n == 0 {
            return;
        }
        let started = Instant::now();
        let result = {
            let inputs: Vec<&HostTensor> = ready.iter().map(|(_, s)| &s.hidden).collect();
            let mut states: Vec<&mut dyn NetState> = ready_guards
                .iter_mut()
                .map(|g| &mut ***g as &mut dyn NetState)
                .collect();
            model.net.tail_batch(&inputs, point, &mut states)
        };
        drop(ready_guards);
        self.load.busy(started.elapsed(), Instant::now());
        let outputs = match result {
            Ok(out) if out.len() == n => out,
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(out) => format!("{} outputs for {n} steps", out.len()),
                };
                tracing::error!("tail of {} failed: {why}", key.model);
                for (job, _) in ready {
                    self.drop_job(job, DropReason::Error);
                }
                return;
            }
        };
        self.metrics.batch_computed(key, n, started.elapsed());
        self.metrics.frames_done(key, n as u64);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.largest_batch.fetch_max(n, Ordering::Relaxed);
        if n > 1 {
            self.counters
                .multi_frame_batches
                .fetch_add(1, Ordering::Relaxed);
        }
        for ((job, step), out) in ready.into_iter().zip(outputs) {
            match llm::answer(out, step.header.reply) {
                Some(a) => {
                    self.counters.answered.fetch_add(1, Ordering::Relaxed);
                    let _ = job.responder.answer(Bytes::from(a.encode()));
                }
                None => self.drop_job(job, DropReason::Error),
            }
        }
    }

    /// Runs one group of decoded rows through the model and answers each job.
    fn run_group(
        &self,
        model: &ServedModel,
        key: &BatchKey,
        shape_tail: &[usize],
        data: Vec<f32>,
        jobs: Vec<Job>,
    ) {
        if jobs.is_empty() {
            return;
        }
        if key.session.is_some() && jobs.len() > 1 {
            // A session's state moves frame by frame: its frames run one at a time, in
            // the order they came.
            let per_item: usize = shape_tail.iter().product();
            for (job, row) in jobs.into_iter().zip(data.chunks(per_item.max(1))) {
                self.run_group(model, key, shape_tail, row.to_vec(), vec![job]);
            }
            return;
        }
        let n = jobs.len();
        let mut shape = vec![n];
        shape.extend_from_slice(shape_tail);
        let started = Instant::now();
        let session_state = jobs.first().and_then(|j| j.state.clone());
        let result = HostTensor::new(shape, data)
            .map_err(|e| e.to_string())
            .and_then(|x| {
                let mut guard = session_state.as_ref().map(state::lock);
                let state = guard.as_deref_mut().map(|b| &mut **b as &mut dyn NetState);
                model.run(key.route, &x, state).map_err(|e| e.to_string())
            });
        self.load.busy(started.elapsed(), Instant::now());
        let output = match result {
            Ok(out) if out.len() == n => out,
            Ok(out) => {
                tracing::error!("tail of {} answered {} items for {n}", key.model, out.len());
                for job in jobs {
                    self.drop_job(job, DropReason::Error);
                }
                return;
            }
            Err(e) => {
                tracing::error!("tail of {} failed: {e}", key.model);
                for job in jobs {
                    self.drop_job(job, DropReason::Error);
                }
                return;
            }
        };
        let computed = started.elapsed();
        self.metrics.batch_computed(key, n, computed);
        if let Some(rec) = splitstream_power::record::global() {
            let mut span = splitstream_power::record::Stage::new(
                "tail",
                rec.seconds(started),
                computed.as_secs_f64() * 1e3,
            );
            span.items = u32::try_from(n).ok();
            rec.stage_line(span);
            // Frames are counted by whoever owns the record (the edge binary counts
            // what it answered), so a device and an edge sharing one record in one
            // process (the demo) do not count each frame twice.
        }
        self.metrics.frames_done(key, n as u64);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.largest_batch.fetch_max(n, Ordering::Relaxed);
        if n > 1 {
            self.counters
                .multi_frame_batches
                .fetch_add(1, Ordering::Relaxed);
        }
        // One typed answer per frame (logits, detections, a token), as the device
        // decodes it.
        for (job, answer) in jobs.into_iter().zip(output.into_answers()) {
            self.counters.answered.fetch_add(1, Ordering::Relaxed);
            let _ = job.responder.answer(Bytes::from(answer.encode()));
        }
    }
}
