//! `splitstream-bench llm-split`: what a split LLM's hidden states cost on the link and
//! in quality, per codec and split point: bytes per token (one decode step's frame, as
//! the device sends it: step header + codec frame of one position), bytes of the
//! prefill, and the perplexity on a committed text with the hidden states passed
//! through the codec, beside the unsplit model's.
//!
//! Perplexity does not depend on the link, so this runs without one: the device's
//! layers `[0, k)` on the text, each position encoded alone (as decode steps are) and
//! decoded, then the edge's layers `[k, L)` on the decoded states.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use splitstream_codec::DecodeLimits;
use splitstream_head::device::encode_activation;
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::llama::LlamaNet;
use splitstream_models::llm::split::{StepHeader, StepReply};
use splitstream_models::llm::LlmWeights;
use splitstream_models::HostTensor;
use splitstream_transport::CodecChoice;

/// Arguments of `splitstream-bench llm-split`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  splitstream-bench llm-split --weights ~/.cache/splitstream/SmolLM2-135M-Instruct.Q4_1.gguf
  splitstream-bench llm-split --weights model_dir --splits 1,2 --max-tokens 128 --json")]
pub(crate) struct Args {
    /// The LLM: a GGUF file or a Hugging Face folder (with a tokenizer).
    #[arg(long, value_name = "PATH")]
    weights: PathBuf,
    /// The text to measure perplexity on [default: bench/data/llm_split_text.txt].
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Split points (layers on the device).
    #[arg(long, value_delimiter = ',', default_value = "10,20")]
    splits: Vec<usize>,
    /// Hidden-state codecs.
    #[arg(long, value_delimiter = ',', value_parser = super::codec_parser(),
          default_value = "lossless,f16,u8-token,u8-token-zstd,u4-token")]
    codecs: Vec<CodecChoice>,
    /// Tokens of the text used (from its start).
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_tokens: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2, value_name = "N")]
    threads: usize,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    split: usize,
    codec: String,
    /// One decode step's payload: step header + codec frame of one position.
    bytes_per_token: f64,
    /// The prefill of the whole text as one frame.
    prefill_bytes: usize,
    perplexity: f64,
    /// Against the unsplit model's perplexity.
    perplexity_change: f64,
    seconds: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    tokens: usize,
    hidden: usize,
    perplexity_unsplit: f64,
    rows: Vec<Row>,
}

/// Mean negative log-likelihood of `ids[1..]` under `logits` `[1, T, V]`.
fn perplexity(logits: &HostTensor, ids: &[u32]) -> f64 {
    let v = logits.shape().last().copied().unwrap_or(1);
    let mut nll = 0.0;
    let mut n = 0usize;
    for (row, &next) in logits.data().chunks_exact(v).zip(&ids[1..]) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
        nll += sum.ln() - f64::from(row[next as usize] - max);
        n += 1;
    }
    (nll / n.max(1) as f64).exp()
}

pub(crate) fn run(args: Args) -> Result<()> {
    let text_path = args.text.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/llm_split_text.txt")
    });
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let weights = LlmWeights::open(&args.weights)
        .with_context(|| format!("loading {}", args.weights.display()))?;
    let tok = weights
        .tokenizer()?
        .context("the model has no tokenizer: perplexity needs the text's tokens")?;
    let mut ids = tok.encode_with(&text, true, false);
    ids.truncate(args.max_tokens);
    if ids.len() < 2 {
        bail!("the text gives fewer than 2 tokens");
    }
    let net = LlamaNet::load(CpuBackend::new(args.threads)?, &weights, Some(ids.len()))?;
    let c = net.config().clone();
    let d = c.hidden;
    if let Some(bad) = args.splits.iter().find(|&&k| k == 0 || k >= c.layers) {
        bail!("split {bad} is not between 1 and {}", c.layers - 1);
    }
    let t = ids.len();
    let unsplit = perplexity(&net.logits(&ids, 1, &mut net.state())?, &ids);
    let limits = DecodeLimits {
        max_elements: t * d,
        max_bytes: t * d * 4,
    };
    let mut rows = Vec::new();
    for &k in &args.splits {
        let h = net.head_hidden(&ids, 1, k, &mut net.state())?;
        for &codec in &args.codecs {
            let t0 = Instant::now();
            let mut step_bytes = 0usize;
            let mut decoded = Vec::with_capacity(t * d);
            for row in h.data().chunks_exact(d) {
                let frame = encode_activation(codec, &[1, d], row).map_err(anyhow::Error::msg)?;
                step_bytes += StepHeader {
                    reply: StepReply::Token,
                    position: 0,
                }
                .frame(&frame)
                .len();
                decoded.extend(splitstream_codec::decode(&frame, &limits)?.to_f32());
            }
            let prefill =
                encode_activation(codec, &[t, d], h.data()).map_err(anyhow::Error::msg)?;
            let x = HostTensor::new([1, t, d], decoded)?;
            let ppl = perplexity(&net.tail_logits(&x, k, &mut net.state())?, &ids);
            rows.push(Row {
                split: k,
                codec: codec.name().to_owned(),
                bytes_per_token: step_bytes as f64 / t as f64,
                prefill_bytes: prefill.len() + 6,
                perplexity: ppl,
                perplexity_change: ppl - unsplit,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
    }
    let report = Report {
        model: format!("{} ({} layers, d {d})", args.weights.display(), c.layers),
        tokens: t,
        hidden: d,
        perplexity_unsplit: unsplit,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} tokens of {}, unsplit perplexity {:.4}",
        report.model,
        t,
        text_path.display(),
        unsplit
    );
    println!("| split | codec | bytes/token | prefill bytes | perplexity | change |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &report.rows {
        println!(
            "| layer{} | {} | {:.1} | {} | {:.4} | {:+.4} |",
            r.split, r.codec, r.bytes_per_token, r.prefill_bytes, r.perplexity, r.perplexity_change
        );
    }
    Ok(())
}
