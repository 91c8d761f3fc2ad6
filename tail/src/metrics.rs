//! The edge's Prometheus metrics and the small HTTP server that exposes them.
//!
//! Metrics (OpenMetrics text at `/metrics`, all prefixed `splitstream_`):
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `frames_total` | counter | model, split | frames answered with a result |
//! | `drops_total` | counter | reason | frames answered `Dropped` (see [`DropReason`]) |
//! | `queue_seconds` | histogram | model, split | time from arrival to batch formation |
//! | `compute_seconds` | histogram | model, split | time to run one batch's tail |
//! | `batch_size` | histogram | model, split | items per batch |
//! | `sessions` | gauge | | device sessions open now |
//! | `sessions_opened_total` | counter | | sessions accepted since start |
//! | `sessions_refused_total` | counter | reason | handshakes refused (bad token, full, ...) |
//! | `power_watts` | gauge | | the governor's latest power reading, W |
//! | `power_budget_watts` | gauge | | the governor's budget, W |
//! | `governor_level` | gauge | | 0 normal, 1 capped (over T1), 2 shedding (over T2) |
//! | `governor_transitions_total` | counter | from, to | level changes |
//! | `governor_shed_total` | counter | reason | frames the governor shed (`over_budget_offload`, `over_budget_low_priority`, `rate_capped`) |
//! | `power_source_errors_total` | counter | | failed power readings |
//!
//! `/healthz` answers 200 `ok` while the edge accepts work and 503 `draining` once a
//! graceful shutdown has begun, so a load balancer stops sending devices here.
//!
//! Why `prometheus-client`: it is the Prometheus project's own Rust client, keeps
//! label sets typed (a misspelt label is a compile error), has no global registry
//! (tests run several edges in one process), and writes OpenMetrics text without a
//! protobuf dependency. Why hyper without a framework: two fixed routes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::batcher::{Batch, BatchKey};
use crate::governor::{GovernorObserver, ShedReason, Transition};
use crate::reason::DropReason;

/// Labels of per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    split: String,
}

impl From<&BatchKey> for ModelLabels {
    fn from(k: &BatchKey) -> Self {
        Self {
            model: k.model.to_string(),
            split: k.route.label(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: String,
}

type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// Latency buckets: 0.25 ms to about 4 s, doubling. Split-computing tails take
/// milliseconds; anything past seconds is a fault, and the +Inf bucket catches it.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Batch-size buckets: 1, 2, 4, ... 256.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

/// Every metric of one edge. Cheap to update from many tasks (atomics inside); share
/// it in an `Arc`.
#[derive(Debug)]
pub struct EdgeMetrics {
    registry: Registry,
    frames: Family<ModelLabels, Counter>,
    drops: Family<DropLabels, Counter>,
    queue: HistogramFamily,
    compute: HistogramFamily,
    batch_size: HistogramFamily,
    sessions: Gauge,
    sessions_opened: Counter,
    sessions_refused: Family<RefusedLabels, Counter>,
    power_watts: Gauge<f64, AtomicU64>,
    power_budget: Gauge<f64, AtomicU64>,
    governor_level: Gauge,
    governor_transitions: Family<TransitionLabels, Counter>,
    governor_shed: Family<ShedLabels, Counter>,
    power_errors: Counter,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeMetrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("splitstream");
        let frames = Family::<ModelLabels, Counter>::default();
        let drops = Family::<DropLabels, Counter>::default();
        let queue: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let compute: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let batch_size: HistogramFamily = Family::new_with_constructor(batch_histogram);
        let sessions = Gauge::default();
        let sessions_opened = Counter::default();
        let sessions_refused = Family::<RefusedLabels, Counter>::default();
        registry.register("frames", "Frames answered with a result", frames.clone());
        registry.register("drops", "Frames answered Dropped, by reason", drops.clone());
        registry.register_with_unit(
            "queue",
            "Time from a frame's arrival to its batch's formation",
            Unit::Seconds,
            queue.clone(),
        );
        registry.register_with_unit(
            "compute",
            "Time to run one batch's tail",
            Unit::Seconds,
            compute.clone(),
        );
        registry.register("batch_size", "Frames per batch", batch_size.clone());
        registry.register("sessions", "Device sessions open now", sessions.clone());
        registry.register(
            "sessions_opened",
            "Device sessions accepted since start",
            sessions_opened.clone(),
        );
        registry.register(
            "sessions_refused",
            "Device handshakes refused, by reason",
            sessions_refused.clone(),
        );
        let power_watts = Gauge::<f64, AtomicU64>::default();
        let power_budget = Gauge::<f64, AtomicU64>::default();
        let governor_level = Gauge::default();
        let governor_transitions = Family::<TransitionLabels, Counter>::default();
        let governor_shed = Family::<ShedLabels, Counter>::default();
        let power_errors = Counter::default();
        registry.register(
            "power_watts",
            "The power governor's latest reading, W",
            power_watts.clone(),
        );
        registry.register(
            "power_budget_watts",
            "The power governor's budget, W",
            power_budget.clone(),
        );
        registry.register(
            "governor_level",
            "Power governor level: 0 normal, 1 capped (over T1), 2 shedding (over T2)",
            governor_level.clone(),
        );
        registry.register(
            "governor_transitions",
            "Power governor level changes",
            governor_transitions.clone(),
        );
        registry.register(
            "governor_shed",
            "Frames the power governor shed, by reason",
            governor_shed.clone(),
        );
        registry.register(
            "power_source_errors",
            "Power readings that failed",
            power_errors.clone(),
        );
        Self {
            registry,
            frames,
            drops,
            queue,
            compute,
            batch_size,
            sessions,
            sessions_opened,
            sessions_refused,
            power_watts,
            power_budget,
            governor_level,
            governor_transitions,
            governor_shed,
            power_errors,
        }
    }

    /// Records the governor's budget.
    pub fn power_budget(&self, watts: f64) {
        self.power_budget.set(watts);
    }

    /// Counts one frame shed by the governor (also count it with [`Self::dropped`]).
    pub fn governor_shed(&self, reason: ShedReason) {
        self.governor_shed
            .get_or_create(&ShedLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts `n` frames of `key` answered with a result.
    pub fn frames_done(&self, key: &BatchKey, n: u64) {
        self.frames.get_or_create(&key.into()).inc_by(n);
    }

    /// Counts one frame answered `Dropped`.
    pub fn dropped(&self, reason: DropReason) {
        self.drops.get_or_create(&DropLabels { reason }).inc();
    }

    /// Records how long a frame of `key` waited for its batch.
    pub fn queue_delay(&self, key: &BatchKey, waited: Duration) {
        self.queue
            .get_or_create(&key.into())
            .observe(waited.as_secs_f64());
    }

    /// Records how long each item of a just-formed batch waited for it.
    pub fn batch_formed<T>(&self, batch: &Batch<T>) {
        let queue = self.queue.get_or_create(&ModelLabels::from(&batch.key));
        for q in &batch.items {
            queue.observe(q.waited(batch.formed).as_secs_f64());
        }
    }

    /// Records one batch of `key`: its size and how long its tail took.
    pub fn batch_computed(&self, key: &BatchKey, size: usize, compute: Duration) {
        let labels = ModelLabels::from(key);
        self.batch_size.get_or_create(&labels).observe(size as f64);
        self.compute
            .get_or_create(&labels)
            .observe(compute.as_secs_f64());
    }

    /// A session was accepted.
    pub fn session_opened(&self) {
        self.sessions.inc();
        self.sessions_opened.inc();
    }

    /// A session ended.
    pub fn session_closed(&self) {
        self.sessions.dec();
    }

    /// A handshake was refused; `reason` is a short snake_case word (`bad_token`,
    /// `full`, `unknown_model`, ...). Keep the set small: each is a series.
    pub fn session_refused(&self, reason: &str) {
        self.sessions_refused
            .get_or_create(&RefusedLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> i64 {
        self.sessions.get()
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl GovernorObserver for EdgeMetrics {
    fn sampled(&self, watts: Option<f64>) {
        if let Some(w) = watts {
            self.power_watts.set(w);
        }
    }

    fn sample_failed(&self, _err: &splitstream_power::PowerError) {
        self.power_errors.inc();
    }

    fn transition(&self, t: &Transition) {
        self.governor_level.set(t.to.gauge());
        self.governor_transitions
            .get_or_create(&TransitionLabels {
                from: t.from.as_str().to_owned(),
                to: t.to.as_str().to_owned(),
            })
            .inc();
    }
}

/// Whether the edge is accepting work, for `/healthz`. Clones share the flag.
#[derive(Clone, Debug)]
pub struct Health(Arc<AtomicBool>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Health {
    /// Healthy (accepting work).
    pub fn new() -> Self {
        Self::default()
    }

    /// A graceful shutdown has begun: `/healthz` now answers 503.
    pub fn set_draining(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Whether the edge accepts work.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The metrics HTTP server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source} (pick another address with --metrics or metrics_listen in the config)")]
pub struct MetricsBindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Connections served at once; more wait. Scrapers are few.
const MAX_CONNECTIONS: usize = 32;

/// How long a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/metrics` and `/healthz` HTTP server (HTTP/1.1).
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<EdgeMetrics>,
    health: Health,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port; see [`MetricsServer::local_addr`]).
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<EdgeMetrics>,
        health: Health,
    ) -> Result<Self, MetricsBindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsBindError { addr, source })?;
        Ok(Self {
            listener,
            metrics,
            health,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes. Connections in progress finish on their own.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!("metrics server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let metrics = self.metrics.clone();
            let health = self.health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&req, &metrics, &health);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "metrics connection: {e}");
                }
                drop(permit);
            });
        }
        tracing::debug!("metrics server stopped");
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &EdgeMetrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        r
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" if health.is_ready() => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/healthz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 GET over a TCP socket: (status, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    #[test]
    fn governor_actions_appear_in_the_exposition() {
        use crate::governor::Level;
        let m = EdgeMetrics::new();
        m.power_budget(250.0);
        m.sampled(Some(240.5));
        m.transition(&Transition {
            at: Duration::from_secs(3),
            from: Level::Normal,
            to: Level::Shedding,
            watts: 240.5,
            actions: Vec::new(),
        });
        m.governor_shed(ShedReason::OverBudgetOffload);
        let text = m.encode();
        assert_eq!(
            sample_value(&text, "splitstream_governor_level"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(sample_value(&text, "splitstream_power_watts"), Some(240.5));
        assert_eq!(
            sample_value(&text, "splitstream_power_budget_watts"),
            Some(250.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_governor_transitions_total{from="normal",to="shedding"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_governor_shed_total{reason="over_budget_offload"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        let m = EdgeMetrics::new();
        let key = BatchKey::new("vit", 4);
        m.frames_done(&key, 3);
        m.dropped(DropReason::Deadline);
        m.dropped(DropReason::Deadline);
        m.dropped(DropReason::QueueFull);
        m.queue_delay(&key, Duration::from_millis(3));
        m.batch_computed(&key, 3, Duration::from_millis(12));
        m.session_opened();
        m.session_opened();
        m.session_closed();
        m.session_refused("bad_token");
        let text = m.encode();
        assert_eq!(
            sample_value(&text, r#"splitstream_frames_total{model="vit",split="4"}"#),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample_value(&text, r#"splitstream_drops_total{reason="deadline"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample_value(&text, r#"splitstream_drops_total{reason="queue_full"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_batch_size_count{model="vit",split="4"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_batch_size_sum{model="vit",split="4"}"#
            ),
            Some(3.0)
        );
        // 3 ms falls in the 4 ms bucket (0.25 ms doubling) and not in the 2 ms one.
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_queue_seconds_bucket{le="0.002",model="vit",split="4"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_queue_seconds_bucket{le="0.004",model="vit",split="4"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_compute_seconds_count{model="vit",split="4"}"#
            ),
            Some(1.0)
        );
        assert_eq!(sample_value(&text, "splitstream_sessions"), Some(1.0));
        assert_eq!(
            sample_value(&text, "splitstream_sessions_opened_total"),
            Some(2.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_sessions_refused_total{reason="bad_token"}"#
            ),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.open_sessions(), 1);
    }

    #[test]
    fn formed_batch_records_each_items_queue_delay() {
        use crate::batcher::{Batcher, BatcherConfig, Item, Polled, SessionId};
        let m = EdgeMetrics::new();
        let mut b = Batcher::new(BatcherConfig {
            max_batch: 2,
            ..BatcherConfig::default()
        });
        let t0 = std::time::Instant::now();
        for (s, at) in [(1, 0), (2, 3)] {
            let item = Item {
                session: SessionId(s),
                key: BatchKey::new("vit", 4),
                deadline: None,
                payload: (),
            };
            b.push(item, t0 + Duration::from_millis(at)).unwrap();
        }
        let Some(Polled::Batch(batch)) = b.poll(t0 + Duration::from_millis(3)) else {
            panic!("no batch")
        };
        m.batch_formed(&batch);
        let text = m.encode();
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_queue_seconds_count{model="vit",split="4"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample_value(
                &text,
                r#"splitstream_queue_seconds_sum{model="vit",split="4"}"#
            ),
            Some(0.003)
        );
    }

    #[tokio::test]
    async fn server_answers_metrics_and_health_on_an_ephemeral_port() {
        let metrics = Arc::new(EdgeMetrics::new());
        let health = Health::new();
        let server = MetricsServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stop_rx.await;
        }));

        metrics.frames_done(&BatchKey::new("deit", 0), 5);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            sample_value(&body, r#"splitstream_frames_total{model="deit",split="0"}"#),
            Some(5.0),
            "{body}"
        );

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
        health.set_draining();
        assert_eq!(get(addr, "/healthz").await, (503, "draining\n".to_owned()));
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop_tx.send(()).unwrap();
        task.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed after shutdown"
        );
    }

    #[tokio::test]
    async fn taken_port_is_a_clear_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = MetricsServer::bind(addr, Arc::new(EdgeMetrics::new()), Health::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
