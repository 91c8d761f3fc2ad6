//! `splitstream chat`: a conversation with an LLM on stdin/stdout, one user message per
//! line, rendered with the model's chat template (ChatML) and answered as the tokens
//! come. The conversation is kept in the KV cache: each turn the whole chat is
//! rendered and encoded again, and only the tokens after those already in the cache
//! are run; when the new encoding does not extend the cached one (a different split at
//! a turn's boundary), the cache is dropped and the whole chat is run again.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::cli::{BackendArgs, ThreadsArgs};
use splitstream_models::llm::chat::{ChatMessage, ChatTemplate};
use splitstream_models::llm::tokenizer::StreamDecoder;
use splitstream_models::Backend;

use splitstream_head::llm::SplitGenerator;
use splitstream_models::llama::LlamaNet;
use splitstream_models::llm::tokenizer::Tokenizer;

use super::generate::{load, SamplingArgs};
use super::llm_edge::{report, EdgeArgs};

/// Longest user line read (64 KiB).
const MAX_LINE: usize = 64 << 10;

/// Arguments of `splitstream chat`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # one question, piped
  echo 'What is 2+2?' | splitstream chat --weights SmolLM2-135M-Instruct.Q4_1.gguf

  # layers 0..10 here, the rest on an edge that serves the model
  splitstream chat --weights SmolLM2-135M-Instruct.Q4_1.gguf --edge 10.0.0.5:4433 --split 10 \
      --fingerprint AB:CD:...:EF --token-file token")]
pub(crate) struct Args {
    /// A GGUF file, or a Hugging Face folder (config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json).
    #[arg(long, value_name = "PATH")]
    weights: PathBuf,
    /// A system message (else the template's default, if it has one).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Positions of KV cache (the whole conversation must fit).
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
    #[command(flatten)]
    edge: EdgeArgs,
}

fn chat_on<B: Backend>(be: B, args: &Args) -> anyhow::Result<()> {
    let (net, tokenizer, weights) = load(be, &args.weights, args.context)?;
    let tok = tokenizer?;
    let template = match weights.chat_template()? {
        Some(jinja) => ChatTemplate::detect(&jinja)?,
        None => ChatTemplate::chatml(),
    };
    let end_of_turn = tok.token_id(template.end_of_turn());
    let stops: Vec<u32> = [end_of_turn, tok.eos(), net.config().eos]
        .into_iter()
        .flatten()
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let link = args.edge.connect(&args.weights).await?;
        let generator = SplitGenerator::new(&net, args.edge.split().unwrap_or(0), link)?;
        converse(&net, &tok, &template, stops, generator, args).await
    })
}

/// The conversation loop: a line in, the answer out as it comes.
async fn converse<B: Backend>(
    net: &LlamaNet<B>,
    tok: &Tokenizer,
    template: &ChatTemplate,
    stops: Vec<u32>,
    mut generator: SplitGenerator<'_, B>,
    args: &Args,
) -> anyhow::Result<()> {
    let mut sampler = args.sampling.sampler();
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.clone()));
    }
    let mut cached: Vec<u32> = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::Read::take(&mut stdin, MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .context("reading stdin")?;
        if n == 0 {
            if args.edge.wanted() {
                report(generator.stats());
            }
            return Ok(());
        }
        if line.len() > MAX_LINE {
            bail!("a line of more than {MAX_LINE} bytes");
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", text));
        let ids = tok.encode_with(&template.render(&messages, true), true, true);
        let mut feed = match ids.strip_prefix(cached.as_slice()) {
            Some(rest) if !rest.is_empty() => rest.to_vec(),
            _ => {
                tracing::debug!("the chat re-encodes differently: KV cache dropped");
                generator.clear();
                cached.clear();
                ids.clone()
            }
        };
        // A new turn tries the edge again if it failed the last one (the whole
        // context is sent again from position 0).
        generator.retry_edge();
        let mut answer = Vec::new();
        let mut stream = StreamDecoder::new();
        for _ in 0..args.max_tokens {
            if cached.len() + feed.len() > net.context() {
                bail!(
                    "the conversation needs more than the {} positions of --context",
                    net.context()
                );
            }
            let (next, _) = generator.step(&feed, &mut sampler).await?;
            cached.extend_from_slice(&feed);
            if stops.contains(&next) {
                break;
            }
            answer.push(next);
            if !tok.is_added(next) {
                write!(stdout, "{}", stream.push(tok, next))
                    .and_then(|()| stdout.flush())
                    .context("writing to stdout")?;
            }
            feed = vec![next];
        }
        writeln!(stdout, "{}", stream.finish()).context("writing to stdout")?;
        messages.push(ChatMessage::new("assistant", tok.decode(&answer, true)));
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.backend.choice.open_wgpu()? {
        Some(gpu) => chat_on(gpu, &args),
        None => chat_on(CpuBackend::new(args.threads.count)?, &args),
    }
}
