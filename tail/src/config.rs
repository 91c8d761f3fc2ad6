//! The edge's configuration file (TOML), with defaults and the reasons for them.
//!
//! `tail/edge.example.toml` is the documented example; a test parses it and checks
//! that the defaults it shows are the defaults in force. Unknown keys are errors (a
//! misspelt `max_wait_ms` must not silently fall back to the default). Relative paths
//! are relative to the config file's folder, so a config and its weights can move
//! together. Command-line flags override fields after loading (the fields are public).
//!
//! `[power]` (optional) configures the power governor; its keys, defaults and
//! reasons are in [`crate::governor::PowerConfig`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use splitstream_transport::CongestionControl;

use crate::batcher::{BatcherConfig, Overflow};
use crate::governor::PowerConfig;

/// The whole edge configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// UDP address for QUIC. Default `0.0.0.0:4433`: every interface (devices are on
    /// the network, not on this host); 4433 is the customary QUIC test port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The server certificate.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Device tokens, one `DEVICE_ID TOKEN` per line (the transport's token file
    /// format). No default: without it no device can authenticate, so the edge
    /// binary refuses to start unless it comes here or from `--tokens`.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// The models served (`[[model]]` tables), at least one.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// Dynamic batching.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// What one device, and all of them, may make the edge hold.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The power governor; absent: none.
    #[serde(default)]
    pub power: Option<PowerConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4433))
}

/// Where the server certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key`; without both, a self-signed certificate is
    /// made at start and its SHA-256 fingerprint printed for devices to pin.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Names a self-signed certificate is made for. Default `["localhost"]`: devices
    /// pin the fingerprint, so the name only has to match what they dial.
    #[serde(default = "default_self_signed_names")]
    pub self_signed_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            self_signed_names: default_self_signed_names(),
        }
    }
}

fn default_self_signed_names() -> Vec<String> {
    vec!["localhost".to_owned()]
}

impl TlsConfig {
    /// Whether the edge makes its own certificate.
    pub fn self_signed(&self) -> bool {
        self.cert.is_none() && self.key.is_none()
    }
}

/// Which backend runs a model's tail (`auto`, `cpu`, `wgpu`; default `auto`): the
/// one definition every binary and config shares.
pub use splitstream_models::BackendChoice;

/// One model the edge serves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name devices ask for, and the `model` label in metrics: letters, digits,
    /// `.`, `_`, `-`.
    pub name: String,
    /// The model's weights (safetensors, names as in timm / Hugging Face; or an LLM:
    /// a GGUF file or a Hugging Face folder with config.json). A file
    /// with `bottleneck.*` tensors (and `split`, `rank` metadata) carries a learned
    /// bottleneck: devices then split at its point and send its code.
    pub weights: PathBuf,
    /// Split points devices may use (how many head stages run on the device). Default
    /// empty: every split point the model has.
    #[serde(default)]
    pub splits: Vec<u32>,
    /// Whether devices may offload whole frames (JPEG) for this model. Default true.
    #[serde(default = "yes")]
    pub offload: bool,
    /// Which backend runs the tail. Default `auto`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Attention heads, when neither the file's `num_heads` metadata nor the
    /// `D / 64` default is right.
    #[serde(default)]
    pub heads: Option<usize>,
    /// An LLM's KV-cache positions per session (at most the model's own). Default
    /// 1024. Each session reserves its whole cache against the edge's state caps.
    #[serde(default)]
    pub context: Option<usize>,
}

fn yes() -> bool {
    true
}

/// What the device sees as the edge's batching.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most frames computed together. Default 8: on a CPU the tail's matmuls stop
    /// gaining from larger batches around there, and a batch of 8 ViT-Ti tails stays
    /// within a few milliseconds; raise it for a GPU.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest a frame waits for others, in milliseconds. Default 5: a small share of
    /// a 33 ms (30 fps) frame budget, and at 8+ devices enough for batches to fill.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// A batch is formed this many milliseconds before the earliest deadline in it,
    /// whatever its size. Default 2: about one batch's compute on a CPU.
    #[serde(default = "default_dispatch_slack_ms")]
    pub dispatch_slack_ms: u64,
    /// When a device's queue is full: `reject_new` (default: the device learns it is
    /// sending too fast) or `drop_oldest` (latest frame wins).
    #[serde(default)]
    pub overflow: OverflowChoice,
}

fn default_max_batch() -> usize {
    8
}
fn default_max_wait_ms() -> u64 {
    5
}
fn default_dispatch_slack_ms() -> u64 {
    2
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_wait_ms: default_max_wait_ms(),
            dispatch_slack_ms: default_dispatch_slack_ms(),
            overflow: OverflowChoice::default(),
        }
    }
}

/// [`Overflow`] as written in the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowChoice {
    /// Refuse the new frame.
    #[default]
    RejectNew,
    /// Drop the device's oldest queued frame.
    DropOldest,
}

/// Bounds on what devices can make the edge hold.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Devices connected at once. Default 64: far above a demo, and what one edge can
    /// batch for without queue delay swamping the gain.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Frames one device may have in flight. Default 8: a pipelined device needs 2-3;
    /// more only queues frames latest-frame-wins would discard (the transport's
    /// default too).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Frames one device may have waiting for a batch. Default 8, matching
    /// `max_in_flight`.
    #[serde(default = "default_max_queued_per_session")]
    pub max_queued_per_session: usize,
    /// Frames waiting for a batch in all. Default 512 (64 devices x 8).
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// Largest frame payload in bytes. Default 4 MiB: a ViT-B/16 token tensor in f32
    /// is 605 KB and an offloaded JPEG well under 1 MB.
    #[serde(default = "default_max_frame_payload")]
    pub max_frame_payload: u32,
    /// Congestion controller for the answers the edge sends: `bbr` (default) or
    /// `cubic` (see `splitstream_transport::CongestionControl`).
    #[serde(default)]
    pub congestion: CongestionControl,
}

fn default_max_sessions() -> u32 {
    64
}
fn default_max_in_flight() -> u32 {
    8
}
fn default_max_queued_per_session() -> usize {
    8
}
fn default_max_queued() -> usize {
    512
}
fn default_max_frame_payload() -> u32 {
    4 << 20
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: default_max_sessions(),
            max_in_flight: default_max_in_flight(),
            max_queued_per_session: default_max_queued_per_session(),
            max_queued: default_max_queued(),
            max_frame_payload: default_max_frame_payload(),
            congestion: CongestionControl::default(),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/healthz`. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// TCP address. Default `127.0.0.1:9464`: metrics are not for the open network
    /// unless asked; 9464 is the port registered for Prometheus exporters of this kind.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_metrics_listen(),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config (syntax, wrong type, unknown key).
    #[error("config {}: {message}(see tail/edge.example.toml for every key)", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The values do not make sense together.
    #[error("config {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Largest max_batch accepted: beyond this a batch adds latency, not throughput.
const MAX_BATCH_LIMIT: usize = 256;
/// Longest max_wait accepted: a second of batching delay is a misconfiguration.
const MAX_WAIT_LIMIT_MS: u64 = 1000;

impl EdgeConfig {
    /// Reads, parses and validates a config file; relative paths in it are taken
    /// relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and validates config text. `origin` names it in errors; relative paths
    /// are joined to `base`.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: EdgeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.resolve_paths(base);
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// The batcher's settings from `[batching]` and `[limits]`.
    pub fn batcher(&self) -> BatcherConfig {
        BatcherConfig {
            max_batch: self.batching.max_batch,
            max_wait: Duration::from_millis(self.batching.max_wait_ms),
            dispatch_slack: Duration::from_millis(self.batching.dispatch_slack_ms),
            max_queued_per_session: self.limits.max_queued_per_session,
            max_queued: self.limits.max_queued,
            overflow: match self.batching.overflow {
                OverflowChoice::RejectNew => Overflow::RejectNew,
                OverflowChoice::DropOldest => Overflow::DropOldest,
            },
        }
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.tls.cert.as_mut().map(join);
        self.tls.key.as_mut().map(join);
        self.tokens_file.as_mut().map(join);
        for m in &mut self.models {
            join(&mut m.weights);
        }
        if let Some(p) = &mut self.power {
            p.resolve_paths(base);
        }
    }

    /// Checks what types alone cannot; the message says what to change. Call again
    /// after flags have overridden fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("no models: add a [[model]] table with name and weights".into());
        }
        let mut names = HashSet::new();
        for m in &self.models {
            let ok_chars = m
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if m.name.is_empty() || m.name.len() > 64 || !ok_chars {
                return Err(format!(
                    "model name {:?}: use 1-64 letters, digits, '.', '_' or '-'",
                    m.name
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err(format!("model {:?} is listed twice", m.name));
            }
            let mut seen = HashSet::new();
            if let Some(dup) = m.splits.iter().find(|s| !seen.insert(**s)) {
                return Err(format!("model {:?}: split {dup} is listed twice", m.name));
            }
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => return Err("[tls] cert is set but key is not: give both, or neither for a self-signed certificate".into()),
            (None, Some(_)) => return Err("[tls] key is set but cert is not: give both, or neither for a self-signed certificate".into()),
            _ => {}
        }
        if self.tls.self_signed() && self.tls.self_signed_names.is_empty() {
            return Err(
                "[tls] self_signed_names is empty: name at least one host (e.g. \"localhost\")"
                    .into(),
            );
        }
        let b = &self.batching;
        if b.max_batch == 0 || b.max_batch > MAX_BATCH_LIMIT {
            return Err(format!(
                "[batching] max_batch = {}: use 1..={MAX_BATCH_LIMIT}",
                b.max_batch
            ));
        }
        if b.max_wait_ms > MAX_WAIT_LIMIT_MS {
            return Err(format!(
                "[batching] max_wait_ms = {}: at most {MAX_WAIT_LIMIT_MS} (it is added to every frame's latency)",
                b.max_wait_ms
            ));
        }
        let l = &self.limits;
        if l.max_sessions == 0
            || l.max_in_flight == 0
            || l.max_queued_per_session == 0
            || l.max_frame_payload == 0
        {
            return Err("[limits] every limit must be at least 1".into());
        }
        if l.max_queued < b.max_batch {
            return Err(format!(
                "[limits] max_queued = {} is below [batching] max_batch = {}: no batch could fill",
                l.max_queued, b.max_batch
            ));
        }
        if let Some(p) = &self.power {
            p.validate()?;
        }
        if l.max_queued_per_session > l.max_queued {
            return Err(format!(
                "[limits] max_queued_per_session = {} exceeds max_queued = {}",
                l.max_queued_per_session, l.max_queued
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../edge.example.toml");

    fn parse(text: &str) -> Result<EdgeConfig, ConfigError> {
        EdgeConfig::parse(text, Path::new("edge.toml"), Path::new("/etc/splitstream"))
    }

    const MINIMAL: &str = "[[model]]\nname = \"vit-tiny\"\nweights = \"vit.safetensors\"\n";

    #[test]
    fn example_file_parses_and_shows_the_real_defaults() {
        let cfg = parse(EXAMPLE).unwrap();
        let defaults = parse(MINIMAL).unwrap();
        // The example writes every default out: keep it true.
        assert_eq!(cfg.listen, defaults.listen);
        assert_eq!(cfg.batching, defaults.batching);
        assert_eq!(cfg.limits, defaults.limits);
        assert_eq!(cfg.metrics, defaults.metrics);
        assert_eq!(cfg.tls.self_signed_names, defaults.tls.self_signed_names);
        assert!(cfg.models.len() >= 2);
        assert_eq!(
            cfg.batcher(),
            BatcherConfig::default(),
            "config and batcher defaults agree"
        );
    }

    #[test]
    fn congestion_controller_is_chosen_by_name_and_unknown_names_are_refused() {
        let cubic = parse(&format!("{MINIMAL}[limits]\ncongestion = \"cubic\"\n")).unwrap();
        assert_eq!(cubic.limits.congestion, CongestionControl::Cubic);
        assert_eq!(
            parse(MINIMAL).unwrap().limits.congestion,
            CongestionControl::Bbr
        );
        let err = parse(&format!("{MINIMAL}[limits]\ncongestion = \"reno\"\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("reno"), "{err}");
    }

    #[test]
    fn example_power_table_uncommented_shows_the_real_defaults() {
        // The example keeps [power] commented out (a governor needs a budget for the
        // machine at hand); uncommented, it must still show the defaults in force.
        let start = EXAMPLE
            .find("#[power]")
            .expect("the example documents [power]");
        let table: String = EXAMPLE[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("# "))
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        let cfg = parse(&format!("{MINIMAL}{table}")).unwrap();
        let mut want = PowerConfig::new(300.0, "rapl");
        want.low_priority = vec!["cam-7".into()];
        assert_eq!(cfg.power, Some(want));
        assert_eq!(parse(MINIMAL).unwrap().power, None);
    }

    #[test]
    fn power_table_is_validated_and_its_trace_follows_the_config() {
        let text = format!("{MINIMAL}[power]\nbudget_w = 100\nsource = \"trace:t.csv\"\n");
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.power.unwrap().source, "trace:/etc/splitstream/t.csv");
        let err = parse(&format!("{MINIMAL}[power]\nbudget_w = 100\nt2 = 0.5\n")).unwrap_err();
        assert!(err.to_string().contains("[power] t1"), "{err}");
        let err = parse(&format!("{MINIMAL}[power]\nt1 = 0.5\n")).unwrap_err();
        assert!(err.to_string().contains("budget_w"), "{err}");
    }

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:4433".parse().unwrap());
        assert!(cfg.tls.self_signed());
        assert_eq!(cfg.tokens_file, None);
        assert_eq!(cfg.batching.max_batch, 8);
        assert_eq!(cfg.batching.max_wait_ms, 5);
        assert_eq!(cfg.metrics.listen, "127.0.0.1:9464".parse().unwrap());
        let m = &cfg.models[0];
        assert_eq!(
            (m.backend, m.offload, m.splits.is_empty()),
            (BackendChoice::Auto, true, true)
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_folder() {
        let text = format!("tokens_file = \"tokens.txt\"\n[tls]\ncert = \"/abs/cert.pem\"\nkey = \"key.pem\"\n{MINIMAL}");
        let cfg = parse(&text).unwrap();
        assert_eq!(
            cfg.tokens_file.unwrap(),
            Path::new("/etc/splitstream/tokens.txt")
        );
        assert_eq!(cfg.tls.cert.unwrap(), Path::new("/abs/cert.pem"));
        assert_eq!(cfg.tls.key.unwrap(), Path::new("/etc/splitstream/key.pem"));
        assert_eq!(
            cfg.models[0].weights,
            Path::new("/etc/splitstream/vit.safetensors")
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it_and_its_line() {
        let text = format!("{MINIMAL}[batching]\nmax_wait = 5\n");
        let err = parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(
            msg.contains("max_wait") && msg.contains("max_wait_ms") && msg.contains("line 5"),
            "{msg}"
        );
        let err = parse(&format!("power_budget = 300\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("power_budget"), "{err}");
    }

    #[test]
    fn wrong_types_and_values_are_errors() {
        let err = parse(&format!("{MINIMAL}backend = \"tpu\"\n")).unwrap_err();
        assert!(err.to_string().contains("tpu"), "{err}");
        let err = parse(&format!("listen = \"nowhere\"\n{MINIMAL}")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn inconsistent_values_are_explained() {
        let cases = [
            ("listen = \"127.0.0.1:1\"\n", "no models"),
            (&format!("{MINIMAL}{MINIMAL}") as &str, "listed twice"),
            (
                &format!("{MINIMAL}splits = [2, 4, 2]\n"),
                "split 2 is listed twice",
            ),
            (&MINIMAL.replace("vit-tiny", "vit tiny"), "model name"),
            (&format!("[tls]\ncert = \"c.pem\"\n{MINIMAL}"), "key is not"),
            (
                &format!("{MINIMAL}[batching]\nmax_batch = 0\n"),
                "max_batch = 0",
            ),
            (
                &format!("{MINIMAL}[batching]\nmax_wait_ms = 5000\n"),
                "max_wait_ms = 5000",
            ),
            (
                &format!("{MINIMAL}[limits]\nmax_queued = 4\n"),
                "no batch could fill",
            ),
            (
                &format!("{MINIMAL}[limits]\nmax_in_flight = 0\n"),
                "at least 1",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{text}: {err}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn missing_file_is_a_read_error_naming_it() {
        let err = EdgeConfig::load(Path::new("/nonexistent/edge.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/edge.toml"));
    }

    #[test]
    fn load_reads_a_file_from_disk() {
        let dir =
            std::env::temp_dir().join(format!("splitstream-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let cfg = EdgeConfig::load(&path).unwrap();
        assert_eq!(cfg.models[0].weights, dir.join("vit.safetensors"));
        assert!(cfg.model("vit-tiny").is_some() && cfg.model("other").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
