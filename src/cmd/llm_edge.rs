//! `--edge ADDR --split K` for `splitstream generate` and `chat`: the flags, and the
//! session to the edge that runs an LLM's layers `[K, L)` (see `splitstream_head::llm`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use splitstream_head::llm::{EdgeLink, SplitStats};
use splitstream_transport::{
    Client, ClientConfig, CodecChoice, ModelId, ServerTrust, StreamConfig,
};

fn codec_parser() -> impl TypedValueParser<Value = CodecChoice> {
    PossibleValuesParser::new(CodecChoice::ALL.map(CodecChoice::name))
        .map(|s| CodecChoice::parse(&s).expect("clap admits only listed names"))
}

/// Where the model's later layers run.
#[derive(clap::Args)]
pub(crate) struct EdgeArgs {
    /// An edge (host:port) serving this model: the device runs layers [0, K) and the
    /// edge the rest, token by token. Without it everything runs here. If the edge
    /// fails mid-answer, the device finishes the answer itself.
    #[arg(long, value_name = "ADDR", requires = "split")]
    edge: Option<String>,
    /// Layers run on the device with --edge (1 .. layers - 1).
    #[arg(long, value_name = "K", requires = "edge")]
    split: Option<usize>,
    /// Codec of the hidden states sent to the edge (lossless and f16 keep the answer
    /// the local one; u8-token quantizes each position to 8 bits).
    #[arg(long, value_name = "NAME", default_value = "lossless", value_parser = codec_parser())]
    codec: CodecChoice,
    /// The model's name on the edge (default: the weights' file or folder name
    /// without extension, as the edge names it).
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// Pin the edge's certificate SHA-256 fingerprint (as it prints at start).
    #[arg(long, value_name = "HEX", conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust edge certificates signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Name on the edge's certificate (with --ca).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    server_name: String,
    /// Device id, as in the edge's token file.
    #[arg(long, value_name = "ID", default_value = "device")]
    device_id: String,
    /// A file holding the device's token (else the SPLITSTREAM_TOKEN variable).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Most time one step may take at the edge before the device computes it, ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    step_timeout_ms: u64,
}

impl EdgeArgs {
    /// Whether an edge was given.
    pub(crate) fn wanted(&self) -> bool {
        self.edge.is_some()
    }

    fn token(&self) -> anyhow::Result<String> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}: cannot read it", path.display()))?,
            None => std::env::var("SPLITSTREAM_TOKEN")
                .context("give --token-file FILE or set SPLITSTREAM_TOKEN for the edge")?,
        };
        let token = token.trim();
        if token.is_empty() {
            bail!("the device token is empty");
        }
        Ok(token.to_owned())
    }

    /// The session to the edge, or `None` without `--edge` or when it cannot be
    /// reached (then everything runs here, with a warning).
    pub(crate) async fn connect(&self, weights: &Path) -> anyhow::Result<Option<EdgeLink>> {
        let (Some(edge), Some(k)) = (&self.edge, self.split) else {
            return Ok(None);
        };
        let addr: SocketAddr = edge
            .to_socket_addrs()
            .with_context(|| format!("--edge {edge}: not a host:port"))?
            .next()
            .with_context(|| format!("--edge {edge}: no address"))?;
        let trust = match (&self.fingerprint, &self.ca) {
            (Some(fp), _) => ServerTrust::Pinned(fp.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--fingerprint {fp}: expected 64 hex digits (colons allowed), as the edge prints"
                )
            })?),
            (None, Some(ca)) => ServerTrust::CaFile(ca.clone()),
            (None, None) => {
                bail!("give --fingerprint HEX (printed by the edge) or --ca FILE to trust the edge")
            }
        };
        let name = match &self.model_name {
            Some(n) => n.clone(),
            None => weights
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .to_owned(),
        };
        // The edge names the weights by the SHA-256 of the GGUF file or the folder's
        // model.safetensors.
        let file = if weights.is_dir() {
            weights.join("model.safetensors")
        } else {
            weights.to_path_buf()
        };
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let stream = StreamConfig {
            model: ModelId::from_weights_bytes(name, &bytes),
            split: format!("layer{k}"),
            codec: self.codec.spec(),
        };
        drop(bytes);
        let mut cfg = ClientConfig::new(addr, trust, self.device_id.clone(), self.token()?, stream);
        cfg.server_name = self.server_name.clone();
        match Client::connect(cfg).await {
            Ok(client) => Ok(Some(EdgeLink {
                client: Arc::new(client),
                codec: self.codec,
                budget: Duration::from_millis(self.step_timeout_ms),
            })),
            Err(e) => {
                eprintln!("warning: {e}; generating on this device");
                Ok(None)
            }
        }
    }

    /// Layers on the device (`None`: no edge).
    pub(crate) fn split(&self) -> Option<usize> {
        self.split
    }
}

/// One stderr line on what the edge did.
pub(crate) fn report(stats: &SplitStats) {
    eprintln!(
        "split: {} steps on the edge, {} on the device, {} frames, {} bytes sent{}",
        stats.edge_steps,
        stats.local_steps,
        stats.frames,
        stats.bytes_sent,
        if stats.fallbacks.is_empty() {
            String::new()
        } else {
            format!(
                "; finished on the device after: {} ({} positions recomputed)",
                stats.fallbacks.join("; "),
                stats.recomputed
            )
        }
    );
}
