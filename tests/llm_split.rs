//! Split LLM generation over real QUIC (issue 17): the device runs the embedding and
//! layers [0, k), an edge layers [k, L) with a per-session KV cache, on the small
//! random-weight Llama and Qwen2 references.
//!
//! - With the lossless codec the split answer equals local generation token for token
//!   (greedy, and sampled: the edge answers logits and the device draws).
//! - The edge process SIGKILLed while a step is on its way: the device recomputes the
//!   edge's layers for the context so far and finishes; no token lost or repeated.
//! - `splitstream generate --edge --split` (the binary) prints the local tokens.
//! - Several sessions at once on one edge: their decode steps run together as batches
//!   (continuous batching), each answer equal to its solo run, batch sizes on /metrics.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use splitstream_head::llm::{EdgeLink, SplitGenerator};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::llama::LlamaNet;
use splitstream_models::llm::sample::Sampler;
use splitstream_models::llm::LlmWeights;
use splitstream_tail::batcher::BatcherConfig;
use splitstream_tail::config::BackendChoice;
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_transport::{
    Client, ClientConfig, CodecChoice, Fingerprint, ModelId, ServerTrust, StreamConfig, TokenStore,
};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const CONTEXT: usize = 64;

fn reference(test: &str, name: &str) -> Option<PathBuf> {
    splitstream_testkit::shared_file(test, &format!("reference/llm/{name}/model.safetensors"))
        .and_then(|f| f.parent().map(Path::to_path_buf))
}

fn net(dir: &Path) -> LlamaNet<CpuBackend> {
    let w = LlmWeights::open(dir).expect("reference loads");
    LlamaNet::load(CpuBackend::new(1).expect("cpu"), &w, Some(CONTEXT)).expect("model builds")
}

fn model_id(name: &str, dir: &Path) -> ModelId {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
    ModelId::from_weights_bytes(name, &bytes)
}

/// Local generation: the model's own loop, prefill then one token per step.
fn local(net: &LlamaNet<CpuBackend>, prompt: &[u32], n: usize, mut sampler: Sampler) -> Vec<u32> {
    let mut out = Vec::new();
    net.generate(
        prompt,
        1,
        n,
        |row| sampler.choose(row),
        |_, next| {
            out.push(next[0]);
            true
        },
    )
    .expect("local generation");
    out
}

fn edge_with(models: Vec<ServedModel>, devices: usize, batcher: BatcherConfig) -> RunningEdge {
    let mut tokens = TokenStore::new();
    for i in 0..devices {
        tokens.insert(format!("dev-{i}"), TOKEN);
    }
    let options = EdgeOptions {
        batcher,
        ..EdgeOptions::default()
    };
    RunningEdge::loopback(models, tokens, options, Arc::new(EdgeMetrics::new()))
        .expect("edge starts")
}

async fn link(
    addr: std::net::SocketAddr,
    fp: Fingerprint,
    device: &str,
    id: ModelId,
    k: usize,
    codec: CodecChoice,
    budget: Duration,
) -> EdgeLink {
    let stream = StreamConfig {
        model: id,
        split: format!("layer{k}"),
        codec: codec.spec(),
    };
    let mut cfg = ClientConfig::new(addr, ServerTrust::Pinned(fp), device, TOKEN, stream);
    cfg.idle_timeout = Duration::from_secs(2);
    let client = Client::connect(cfg).await.expect("connects");
    EdgeLink {
        client: Arc::new(client),
        codec,
        budget,
    }
}

async fn split_run(
    gen: &mut SplitGenerator<'_, CpuBackend>,
    prompt: &[u32],
    n: usize,
    sampler: &mut Sampler,
) -> Vec<u32> {
    let mut out = Vec::new();
    let mut feed = prompt.to_vec();
    for _ in 0..n {
        let (t, _) = gen.step(&feed, sampler).await.expect("step");
        out.push(t);
        feed = vec![t];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_generation_over_quic_equals_local_token_for_token() {
    let (Some(llama), Some(qwen)) = (
        reference("llm_split_equal", "llama_micro"),
        reference("llm_split_equal", "qwen2_micro"),
    ) else {
        return;
    };
    let served = |name: &str, dir: &Path| {
        ServedModel::from_llm(name, dir, BackendChoice::Cpu, 1, Some(CONTEXT)).expect("edge loads")
    };
    let edge = edge_with(
        vec![served("llama_micro", &llama), served("qwen2_micro", &qwen)],
        1,
        BatcherConfig::default(),
    );
    let prompt = [1u32, 17, 300, 42, 999, 5, 64];
    let n = 20;
    for (name, dir, k, codec) in [
        ("llama_micro", &llama, 2, CodecChoice::Lossless),
        ("llama_micro", &llama, 1, CodecChoice::LosslessZstd),
        ("qwen2_micro", &qwen, 2, CodecChoice::Lossless),
    ] {
        let net = net(dir);
        let l = link(
            edge.local_addr(),
            edge.fingerprint(),
            "dev-0",
            model_id(name, dir),
            k,
            codec,
            Duration::from_secs(10),
        )
        .await;
        // Greedy: the edge answers tokens.
        let want = local(&net, &prompt, n, Sampler::greedy());
        let mut gen = SplitGenerator::new(&net, k, Some(l.clone())).expect("generator");
        let got = split_run(&mut gen, &prompt, n, &mut Sampler::greedy()).await;
        assert_eq!(got, want, "{name} split at {k} with {codec}");
        let stats = gen.stats().clone();
        assert_eq!(
            (stats.edge_steps, stats.local_steps),
            (n as u64, 0),
            "{stats:?}"
        );
        // Sampled: the edge answers logits and the device draws with its seed; a new
        // generator starts at position 0, which resets the edge's cache.
        let want = local(&net, &prompt, n, Sampler::new(0.9, 0.95, 7));
        let mut gen = SplitGenerator::new(&net, k, Some(l.clone())).expect("generator");
        let got = split_run(&mut gen, &prompt, n, &mut Sampler::new(0.9, 0.95, 7)).await;
        assert_eq!(got, want, "{name} sampled, split at {k}");
        assert_eq!(gen.stats().edge_steps, n as u64);
    }
    // The f16 and per-token 8-bit codecs run too (their tokens may differ from the
    // lossless ones on random weights: no equality asserted, every step on the edge).
    let net = net(&llama);
    for codec in [CodecChoice::F16, CodecChoice::U8Token] {
        let l = link(
            edge.local_addr(),
            edge.fingerprint(),
            "dev-0",
            model_id("llama_micro", &llama),
            2,
            codec,
            Duration::from_secs(10),
        )
        .await;
        let mut gen = SplitGenerator::new(&net, 2, Some(l)).expect("generator");
        let got = split_run(&mut gen, &prompt, 8, &mut Sampler::greedy()).await;
        assert_eq!(got.len(), 8);
        assert_eq!(gen.stats().edge_steps, 8, "{codec}: {:?}", gen.stats());
    }
    edge.shutdown().await;
}

/// `target/<profile>/splitstream-edge`, built for this test's profile.
fn edge_binary() -> PathBuf {
    splitstream_testkit::build_binaries(&["splitstream-tail"])
        .join(format!("splitstream-edge{}", std::env::consts::EXE_SUFFIX))
}

struct EdgeProcess {
    child: Child,
    addr: std::net::SocketAddr,
    fingerprint: Fingerprint,
    dir: PathBuf,
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_edge(weights: &Path, name: &str) -> EdgeProcess {
    let dir = std::env::temp_dir().join(format!("splitstream-llm-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("tokens.txt");
    std::fs::write(&tokens, format!("dev-0 {TOKEN}\n")).expect("writes tokens");
    let mut child = Command::new(edge_binary())
        .arg("--weights")
        .arg(weights)
        .arg("--tokens")
        .arg(&tokens)
        .args(["--name", name, "--listen", "127.0.0.1:0", "--no-metrics"])
        .args(["--backend", "cpu", "--threads", "1", "--context", "64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts splitstream-edge");
    let stdout = child.stdout.take().expect("stdout");
    let (mut addr, mut fingerprint) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("edge stdout");
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(fp) = line.strip_prefix("certificate fingerprint ") {
            fingerprint = fp.trim().parse().ok();
            break;
        }
    }
    EdgeProcess {
        child,
        addr: addr.expect("the edge printed its address"),
        fingerprint: fingerprint.expect("the edge printed its fingerprint"),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_killed_mid_answer_the_device_finishes_it_locally() {
    let Some(llama) = reference("llm_split_kill", "llama_micro") else {
        return;
    };
    let net = net(&llama);
    let prompt = [1u32, 500, 3, 77, 12];
    let n = 16;
    let killed_at = 6;
    for (sampler, label) in [
        (Sampler::greedy(), "greedy"),
        (Sampler::new(0.8, 0.9, 11), "sampled"),
    ] {
        let want = local(&net, &prompt, n, sampler.clone());
        let mut edge = spawn_edge(&llama, "llama_micro");
        // A short step budget: a SIGKILLed edge says nothing, the deadline tells.
        let l = link(
            edge.addr,
            edge.fingerprint,
            "dev-0",
            model_id("llama_micro", &llama),
            2,
            CodecChoice::Lossless,
            Duration::from_millis(800),
        )
        .await;
        let mut gen = SplitGenerator::new(&net, 2, Some(l)).expect("generator");
        let mut sampler = sampler;
        let mut got = split_run(&mut gen, &prompt, killed_at, &mut sampler).await;
        // SIGKILL while the next step is on its way: no answer, no goodbye.
        let feed = [got[killed_at - 1]];
        let t0 = Instant::now();
        let (step, _) = tokio::join!(gen.step(&feed, &mut sampler), async {
            edge.child.kill().expect("SIGKILL the edge");
            edge.child.wait().expect("reaps the edge")
        });
        let (token, on_edge) = step.expect("the step is finished locally");
        assert!(!on_edge);
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        got.push(token);
        let mut feed = vec![token];
        while got.len() < n {
            let (t, on_edge) = gen.step(&feed, &mut sampler).await.expect("local step");
            assert!(!on_edge, "the edge is not asked again in this answer");
            got.push(t);
            feed = vec![t];
        }
        assert_eq!(got, want, "{label}: no token lost, repeated or changed");
        let stats = gen.stats();
        assert_eq!(stats.edge_steps, killed_at as u64, "{stats:?}");
        assert_eq!(stats.local_steps, (n - killed_at) as u64, "{stats:?}");
        assert_eq!(stats.fallbacks.len(), 1, "{stats:?}");
        // The edge's layers were recomputed for the whole context before the step.
        assert_eq!(
            stats.recomputed,
            (prompt.len() + killed_at - 1) as u64,
            "{stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_decode_in_shared_batches_and_equal_their_solo_runs() {
    let Some(llama) = reference("llm_split_batch", "llama_micro") else {
        return;
    };
    let sessions = 4;
    let served = ServedModel::from_llm("llama_micro", &llama, BackendChoice::Cpu, 1, Some(CONTEXT))
        .expect("edge loads");
    // A short wait gathers the sessions' decode steps that arrive together.
    let batcher = BatcherConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(15),
        ..BatcherConfig::default()
    };
    let edge = edge_with(vec![served], sessions, batcher);
    let id = model_id("llama_micro", &llama);
    let n = 16;
    let prompts: Vec<Vec<u32>> = (0..sessions as u32)
        .map(|i| (0..3 + i).map(|j| 1 + (i * 97 + j * 31) % 1000).collect())
        .collect();
    let net = Arc::new(net(&llama));
    let mut tasks = Vec::new();
    for (i, prompt) in prompts.iter().cloned().enumerate() {
        let l = link(
            edge.local_addr(),
            edge.fingerprint(),
            &format!("dev-{i}"),
            id.clone(),
            2,
            CodecChoice::Lossless,
            Duration::from_secs(10),
        )
        .await;
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            let mut gen = SplitGenerator::new(&net, 2, Some(l)).expect("generator");
            let got = split_run(&mut gen, &prompt, n, &mut Sampler::greedy()).await;
            (got, gen.stats().clone())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (got, stats) = t.await.expect("session task");
        assert_eq!(
            got,
            local(&net, &prompts[i], n, Sampler::greedy()),
            "session {i}"
        );
        assert_eq!(stats.edge_steps, n as u64, "session {i}: {stats:?}");
    }
    let c = edge.counters();
    let multi = c
        .multi_frame_batches
        .load(std::sync::atomic::Ordering::Relaxed);
    let largest = c.largest_batch.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        multi > 0 && largest >= 2,
        "decode steps shared batches: {multi}, largest {largest}"
    );
    let text = edge.metrics().encode();
    let count_line = text
        .lines()
        .find(|l| l.starts_with("splitstream_batch_size_count{") && l.contains("llama_micro"))
        .expect("batch size histogram on /metrics");
    let batches: f64 = count_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    // Fewer batches than steps: some ran together.
    assert!(batches < (sessions * n) as f64, "{count_line}");
    eprintln!("{sessions} sessions x {n} steps in {batches} batches, largest {largest}");
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_cli_with_edge_prints_the_local_tokens() {
    let Some(llama) = reference("llm_split_cli", "llama_micro") else {
        return;
    };
    let served = ServedModel::from_llm("llama_micro", &llama, BackendChoice::Cpu, 1, None)
        .expect("edge loads");
    let edge = edge_with(vec![served], 1, BatcherConfig::default());
    let dir =
        std::env::temp_dir().join(format!("splitstream-llm-split-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    // The child runs on a blocking thread: the edge keeps this runtime's workers.
    let generate = |extra: Vec<String>| {
        let llama = llama.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_splitstream"))
                .arg("generate")
                .arg("--weights")
                .arg(&llama)
                .args([
                    "--prompt-ids",
                    "1,5,7,9",
                    "--max-tokens",
                    "10",
                    "--threads",
                    "1",
                ])
                .args(extra)
                .output()
                .expect("runs splitstream")
        })
    };
    let local = generate(Vec::new()).await.expect("runs");
    let split = generate(vec![
        "--edge".into(),
        edge.local_addr().to_string(),
        "--split".into(),
        "2".into(),
        "--fingerprint".into(),
        edge.fingerprint().to_string(),
        "--device-id".into(),
        "dev-0".into(),
        "--token-file".into(),
        token.display().to_string(),
    ])
    .await
    .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&split.stderr);
    assert!(local.status.success() && split.status.success(), "{stderr}");
    let tokens = String::from_utf8_lossy(&split.stdout);
    assert_eq!(tokens, String::from_utf8_lossy(&local.stdout));
    assert_eq!(tokens.lines().count(), 10, "{tokens}");
    assert!(
        stderr.contains("split: 10 steps on the edge, 0 on the device"),
        "{stderr}"
    );
    edge.shutdown().await;
}
