//! `splitstream generate`: text (or token ids) in, tokens out as they come, from a GGUF
//! file or a Hugging Face folder (Llama, Qwen2). Also the check forms in the reference
//! files' layout: `input_ids` [B,T] (int64) in a safetensors file, `generated`
//! [B,T+N] (int64) and `generated_logits` [B,N,V] out; and [`infer_llm`], which
//! `splitstream infer` calls for an LLM: `logits` [B,T,V].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::cli::{BackendArgs, ThreadsArgs};
use splitstream_models::llama::LlamaNet;
use splitstream_models::llm::sample::Sampler;
use splitstream_models::llm::tokenizer::{StreamDecoder, Tokenizer};
use splitstream_models::llm::LlmWeights;
use splitstream_models::Backend;
use splitstream_power::record::{RecordOptions, Recorder, Stage};

use splitstream_head::llm::SplitGenerator;

use super::llm_edge::{report, EdgeArgs};

/// Longest id list read from a safetensors `input_ids` (1 Mi ids).
const MAX_IDS: usize = 1 << 20;

/// Arguments of `splitstream generate`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # greedy continuation of token ids, printed as they come
  splitstream generate --weights SmolLM2-135M-Instruct.Q4_1.gguf --prompt-ids 1,504,3458 \\
      --max-tokens 16

  # sampled: temperature 0.8, nucleus 0.95, repeatable with a seed
  splitstream generate --weights model_dir --prompt-ids 1,2,3 --temperature 0.8 \\
      --top-p 0.95 --seed 7

  # prefill and decode recorded with power and memory, then the report
  splitstream generate --weights model.gguf --prompt-ids 1,2,3 --record gen.jsonl
  splitstream report gen.jsonl
  # split with an edge serving the model: layers 0..4 here, the rest there
  splitstream generate --weights model_dir --prompt-ids 1,2,3 --edge 10.0.0.5:4433 \
      --split 4 --codec f16 --fingerprint AB:CD:...:EF --token-file token

  # the check form: input_ids [B,T] in, generated [B,T+N] and generated_logits out
  splitstream generate --weights llama_micro --input ids.safetensors --max-tokens 16 \\
      --output out.safetensors")]
pub(crate) struct Args {
    /// A GGUF file, or a Hugging Face folder (config.json + model.safetensors).
    #[arg(long, value_name = "PATH")]
    weights: PathBuf,
    /// The prompt as text (needs the model's tokenizer).
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["prompt_ids", "input"])]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids.
    #[arg(
        long,
        value_name = "IDS",
        value_delimiter = ',',
        conflicts_with = "input"
    )]
    prompt_ids: Option<Vec<u32>>,
    /// A safetensors file with `input_ids` [B,T] (int64): every row is continued.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Write `generated` [B,T+N] (int64) and `generated_logits` [B,N,V] here.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// New tokens to generate.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Positions of KV cache per session (at most the model's context).
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
    /// Write a run record here: the prefill and each decode step as stages (with their
    /// tokens) joined with power, memory, temperatures and CPU frequency over time;
    /// `splitstream report FILE` gives tokens/s and energy per token. Watts come from
    /// the first meter found, else a CPU-time model (the record says which).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    #[command(flatten)]
    edge: EdgeArgs,
}

/// How the next token is drawn: the flags `generate` and `chat` share.
#[derive(clap::Args)]
pub(crate) struct SamplingArgs {
    /// Sampling temperature; 0 (the default) is greedy.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
}

impl SamplingArgs {
    pub(crate) fn sampler(&self) -> Sampler {
        // Sampling stays on the device (the edge answers logits when it samples), so
        // the seed gives the same draws whoever computed them.
        Sampler::new(self.temperature, self.top_p, self.seed)
    }
}

/// Whether `path` is an LLM checkpoint: a GGUF file or a folder with `config.json`.
pub(crate) fn is_llm(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("config.json").is_file();
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == b"GGUF")
}

/// `input_ids` [B,T] (int64) of a safetensors file: the ids and B.
fn read_ids(path: &Path) -> anyhow::Result<(Vec<u32>, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let view = st
        .tensor("input_ids")
        .with_context(|| format!("{} has no tensor input_ids", path.display()))?;
    let &[batch, t] = view.shape() else {
        bail!("input_ids must be [B, T], got {:?}", view.shape());
    };
    if batch == 0 || t == 0 || batch.saturating_mul(t) > MAX_IDS {
        bail!("input_ids [{batch}, {t}]: empty, or more than {MAX_IDS} ids");
    }
    let ids = match view.dtype() {
        Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| {
                let v = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                u32::try_from(v).with_context(|| format!("token id {v} is negative or too large"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        Dtype::I32 => view
            .data()
            .chunks_exact(4)
            .map(|b| {
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                u32::try_from(v).with_context(|| format!("token id {v} is negative"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        other => bail!("input_ids must be int64 or int32, got {other:?}"),
    };
    Ok((ids, batch))
}

/// Writes named tensors (i64 or f32 data) as a safetensors file.
fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, Data)]) -> anyhow::Result<()> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let (dtype, b) = match data {
                Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (name.to_string(), dtype, shape.clone(), b)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing {}", path.display()))
}

enum Data {
    I64(Vec<i64>),
    F32(Vec<f32>),
}

/// The model's tokenizer: a GGUF file's `tokenizer.ggml.*` metadata, or the
/// `tokenizer.json` of a Hugging Face folder; an error saying why when there is none.
pub(crate) fn tokenizer_for(weights: &LlmWeights) -> anyhow::Result<Tokenizer> {
    weights
        .tokenizer()
        .context("reading the model's tokenizer")?
        .context(
            "the model has no tokenizer (no tokenizer.ggml.tokens in the GGUF file, no \
             tokenizer.json in the folder): give the prompt as --prompt-ids, or --input",
        )
}

/// The model and its tokenizer (or why there is none: only text prompts need it).
pub(crate) type Loaded<B> = (LlamaNet<B>, anyhow::Result<Tokenizer>, LlmWeights);

pub(crate) fn load<B: Backend>(
    be: B,
    weights: &Path,
    context: Option<usize>,
) -> anyhow::Result<Loaded<B>> {
    let w = LlmWeights::open(weights).with_context(|| format!("loading {}", weights.display()))?;
    let tokenizer = tokenizer_for(&w);
    Ok((LlamaNet::load(be, &w, context)?, tokenizer, w))
}

fn generate_on<B: Backend>(be: B, args: &Args) -> anyhow::Result<()> {
    let (net, tokenizer, _) = load(be, &args.weights, args.context)?;
    tracing::info!("{}", splitstream_models::SplitNet::describe(&net));
    // Text in, text out: the prompt encoded (bos prepended where the model asks for it),
    // the answer decoded as it comes.
    let text_tokenizer = match &args.prompt {
        Some(_) => Some(tokenizer.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?),
        None => None,
    };
    let (ids, batch) = match (&args.input, &args.prompt_ids, &args.prompt, text_tokenizer) {
        (Some(input), _, _, _) => read_ids(input)?,
        (None, Some(ids), _, _) if !ids.is_empty() => (ids.clone(), 1),
        (None, _, Some(text), Some(tok)) => (tok.encode_with(text, true, true), 1),
        _ => bail!("give a prompt: --prompt-ids, --input or --prompt"),
    };
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let t = ids.len() / batch;
    if args.edge.wanted() {
        if batch != 1 || args.output.is_some() {
            bail!("--edge generates one prompt and prints it (no --input rows or --output)");
        }
        return generate_split(&net, text_tokenizer, ids, args);
    }
    let mut sampler = args.sampling.sampler();
    let eos = net.config().eos;
    let mut rows: Vec<Vec<u32>> = ids.chunks(t).map(<[u32]>::to_vec).collect();
    let mut stdout = std::io::stdout().lock();
    // The check form (--output) runs every row for exactly --max-tokens steps, as the
    // references were made; a plain run of one row stops at the end-of-sequence token.
    let stop_at_eos = args.output.is_none() && batch == 1;
    let mut printed = Ok(());
    let mut stream = StreamDecoder::new();
    let recorder = match &args.record {
        Some(path) => Some(Recorder::create(path, RecordOptions::default()).context("--record")?),
        None => None,
    };
    // The first step reads the prompt (prefill); each later one makes a token per row
    // (decode). Each span runs from the previous step's end to this one's token.
    let mut step_started = std::time::Instant::now();
    let logits = net.generate(
        &ids,
        batch,
        args.max_tokens,
        |row| sampler.choose(row),
        |step, next| {
            if let Some(rec) = &recorder {
                let now = std::time::Instant::now();
                let (name, tokens) = if step == 0 {
                    ("prefill", ids.len())
                } else {
                    ("decode", next.len())
                };
                let mut span = Stage::new(
                    name,
                    rec.seconds(step_started),
                    (now - step_started).as_secs_f64() * 1e3,
                );
                span.tokens = u32::try_from(tokens).ok();
                rec.stage_line(span);
                rec.tokens(next.len() as u64);
                step_started = now;
            }
            rows.iter_mut().zip(next).for_each(|(r, &n)| r.push(n));
            if args.output.is_none() {
                printed = match text_tokenizer {
                    // Text in, text out: print what the token completes (a character
                    // split across tokens waits for its last byte); special tokens
                    // (the end of sequence) are not printed.
                    Some(tok) => {
                        let new = if tok.is_added(next[0]) {
                            String::new()
                        } else {
                            stream.push(tok, next[0])
                        };
                        write!(stdout, "{new}").and_then(|()| stdout.flush())
                    }
                    None => {
                        let line = next.iter().map(u32::to_string).collect::<Vec<_>>();
                        writeln!(stdout, "{}", line.join(" ")).and_then(|()| stdout.flush())
                    }
                };
            }
            printed.is_ok() && !(stop_at_eos && Some(next[0]) == eos)
        },
    )?;
    printed.context("writing to stdout")?;
    if text_tokenizer.is_some() {
        writeln!(stdout, "{}", stream.finish()).context("writing to stdout")?;
    }
    if let Some(rec) = recorder {
        let end = rec.finish().context("--record")?;
        eprintln!(
            "run record: {} ({} tokens, {} samples)",
            rec.path().display(),
            end.tokens,
            end.samples
        );
    }
    if let Some(out) = &args.output {
        let n = rows.first().map_or(0, Vec::len);
        let generated = rows.concat().into_iter().map(i64::from).collect();
        let v = net.config().vocab;
        write_tensors(
            out,
            &[
                ("generated", vec![batch, n], Data::I64(generated)),
                ("generated_logits", vec![batch, n - t, v], Data::F32(logits)),
            ],
        )?;
    }
    Ok(())
}

/// Generation split with the edge (or local, if it cannot be reached), printing the
/// tokens as they come.
fn generate_split<B: Backend>(
    net: &LlamaNet<B>,
    tokenizer: Option<&Tokenizer>,
    prompt: Vec<u32>,
    args: &Args,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let link = args.edge.connect(&args.weights).await?;
        let mut generator = SplitGenerator::new(net, args.edge.split().unwrap_or(0), link)?;
        let mut sampler = args.sampling.sampler();
        let eos = net.config().eos;
        let mut stdout = std::io::stdout().lock();
        let mut stream = StreamDecoder::new();
        let mut feed = prompt;
        for _ in 0..args.max_tokens {
            if generator.positions() + feed.len() > net.context() {
                break;
            }
            let (next, _) = generator.step(&feed, &mut sampler).await?;
            if Some(next) == eos {
                break;
            }
            match tokenizer {
                Some(tok) if !tok.is_added(next) => write!(stdout, "{}", stream.push(tok, next)),
                Some(_) => Ok(()),
                None => writeln!(stdout, "{next}"),
            }
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
            feed = vec![next];
        }
        if tokenizer.is_some() {
            writeln!(stdout, "{}", stream.finish()).context("writing to stdout")?;
        }
        report(generator.stats());
        Ok(())
    })
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.backend.choice.open_wgpu()? {
        Some(gpu) => generate_on(gpu, &args),
        None => generate_on(CpuBackend::new(args.threads.count)?, &args),
    }
}

fn infer_on<B: Backend>(be: B, weights: &Path, input: &Path, output: &Path) -> anyhow::Result<()> {
    let (net, _, _) = load(be, weights, None)?;
    let (ids, batch) = read_ids(input)?;
    let logits = net.logits(&ids, batch, &mut net.state())?;
    let shape = logits.shape().to_vec();
    write_tensors(output, &[("logits", shape, Data::F32(logits.into_data()))])
}

/// `splitstream infer` on an LLM: `input_ids` [B,T] in `input`, `logits` [B,T,V] to
/// `output`.
pub(crate) fn infer_llm(
    weights: &Path,
    input: &[PathBuf],
    output: Option<&Path>,
    backend: BackendArgs,
    threads: ThreadsArgs,
) -> anyhow::Result<()> {
    let ([input], Some(output)) = (input, output) else {
        bail!(
            "an LLM takes one --input safetensors file with input_ids [B,T] and an --output \
             file for the logits (or use `splitstream generate`)"
        );
    };
    match backend.choice.open_wgpu()? {
        Some(gpu) => infer_on(gpu, weights, input, output),
        None => infer_on(CpuBackend::new(threads.count)?, weights, input, output),
    }
}
