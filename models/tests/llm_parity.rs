//! Parity with Hugging Face transformers on the random-weight Llama and Qwen2
//! references in `../shared/reference/llm`: the hidden state after the embedding and
//! after every layer, the logits at every position (1e-4 of the reference's largest
//! |value|), the greedy continuation (identical) and the logits of every generated step
//! (1e-4: checks the KV cache). Then the same checkpoints written as GGUF files (Llama's
//! Q/K rows permuted as llama.cpp's converter does) in F32, F16, Q8_0, Q4_0 and Q4_1,
//! and the split: `head(layer k)` then `tail` equals the whole model bit for bit.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::llama::{argmax, LlamaNet};
use splitstream_models::llm::config::LlmArch;
use splitstream_models::llm::gguf::{write_gguf, GgufFile, GgufValue};
use splitstream_models::llm::quant::{quantize, GgmlType};
use splitstream_models::llm::{gguf_name, permute_rows, LlmWeights};
use splitstream_models::net::{NetState, Output, SplitNet};
use splitstream_models::HostTensor;
use splitstream_testkit::{max_rel_diff, shared_file};

const TOLERANCE: f32 = 1e-4;

fn model_dir(test: &str, name: &str) -> Option<PathBuf> {
    shared_file(test, &format!("reference/llm/{name}/model.safetensors"))
        .and_then(|f| f.parent().map(Path::to_path_buf))
}

struct Expected {
    ids: Vec<u32>,
    batch: usize,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    generated: Vec<u32>,
}

impl Expected {
    fn read(dir: &Path) -> Self {
        let path = dir.with_extension("expected.safetensors");
        let buf = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&buf).unwrap();
        let ints = |name: &str| -> (Vec<usize>, Vec<u32>) {
            let v = st.tensor(name).unwrap();
            assert_eq!(v.dtype(), Dtype::I64);
            let data = v
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                .collect();
            (v.shape().to_vec(), data)
        };
        let (shape, ids) = ints("input_ids");
        let (_, generated) = ints("generated");
        let tensors = st
            .iter()
            .filter(|(_, v)| v.dtype() == Dtype::F32)
            .map(|(n, v)| {
                let data = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (n.to_string(), v.shape().to_vec(), data)
            })
            .collect();
        Self {
            ids,
            batch: shape[0],
            tensors,
            generated,
        }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self
            .tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .2
    }
}

fn load(weights: &LlmWeights) -> LlamaNet<CpuBackend> {
    LlamaNet::load(CpuBackend::new(2).unwrap(), weights, Some(64)).unwrap()
}

/// Greedy continuation of the reference prompt: (generated [B, T+N], logits [B, N, V]).
fn greedy(net: &LlamaNet<CpuBackend>, e: &Expected, new: usize) -> (Vec<u32>, Vec<f32>) {
    let t = e.ids.len() / e.batch;
    let mut rows: Vec<Vec<u32>> = e.ids.chunks(t).map(<[u32]>::to_vec).collect();
    let logits = net
        .generate(&e.ids, e.batch, new, argmax, |_, next| {
            rows.iter_mut().zip(next).for_each(|(r, &n)| r.push(n));
            true
        })
        .unwrap();
    (rows.concat(), logits)
}

fn check_reference(test: &str, name: &str, arch: LlmArch) {
    let Some(dir) = model_dir(test, name) else {
        return;
    };
    let e = Expected::read(&dir);
    let weights = LlmWeights::open(&dir).unwrap();
    assert_eq!(weights.config().arch, arch);
    let net = load(&weights);
    let layers = net.config().layers;
    let trace = net.trace(&e.ids, e.batch).unwrap();
    for (i, got) in trace.iter().enumerate() {
        let key = if i <= layers {
            format!("hidden.{i}")
        } else {
            "logits".to_string()
        };
        let d = max_rel_diff(got.data(), e.get(&key));
        println!("{name} {key}: max rel diff {d:.2e}");
        assert!(d < TOLERANCE, "{name} {key}: {d}");
    }
    let new = e.generated.len() / e.batch - e.ids.len() / e.batch;
    let (generated, logits) = greedy(&net, &e, new);
    assert_eq!(generated, e.generated, "{name}: greedy continuation");
    let d = max_rel_diff(&logits, e.get("generated_logits"));
    println!("{name} generated_logits: max rel diff {d:.2e}");
    assert!(d < TOLERANCE, "{name} generated_logits: {d}");
}

#[test]
fn llama_micro_matches_transformers() {
    check_reference(
        "llama_micro_matches_transformers",
        "llama_micro",
        LlmArch::Llama,
    );
}

#[test]
fn qwen2_micro_matches_transformers() {
    check_reference(
        "qwen2_micro_matches_transformers",
        "qwen2_micro",
        LlmArch::Qwen2,
    );
}

/// The checkpoint as a GGUF file in `ty` (2-D weights; norms and biases stay F32), and
/// the same values dequantized, as an F32 GGUF file.
fn to_gguf(dir: &Path, ty: GgmlType) -> (Vec<u8>, Vec<u8>) {
    let weights = LlmWeights::open(dir).unwrap();
    let c = weights.config().clone();
    let buf = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    let a = c.arch.name();
    let metadata = vec![
        ("general.architecture", GgufValue::String(a.into())),
        ("general.alignment", GgufValue::U32(32)),
    ];
    let mut owned_meta: Vec<(String, GgufValue)> = vec![
        (
            format!("{a}.embedding_length"),
            GgufValue::U32(c.hidden as u32),
        ),
        (format!("{a}.block_count"), GgufValue::U32(c.layers as u32)),
        (
            format!("{a}.feed_forward_length"),
            GgufValue::U32(c.intermediate as u32),
        ),
        (
            format!("{a}.attention.head_count"),
            GgufValue::U32(c.heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            GgufValue::U32(c.kv_heads as u32),
        ),
        (
            format!("{a}.rope.freq_base"),
            GgufValue::F32(c.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_eps as f32),
        ),
        (
            format!("{a}.context_length"),
            GgufValue::U32(c.max_positions as u32),
        ),
    ];
    owned_meta.extend(metadata.into_iter().map(|(k, v)| (k.to_string(), v)));
    let mut quant = Vec::new();
    let mut dequant = Vec::new();
    for (name, view) in st.iter() {
        let mut data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let shape = view.shape().to_vec();
        // llama.cpp's converter permutes Llama's q and k rows (and biases) to interleaved.
        let heads = if c.arch == LlmArch::Llama && name.contains("q_proj") {
            Some(c.heads)
        } else if c.arch == LlmArch::Llama && name.contains("k_proj") {
            Some(c.kv_heads)
        } else {
            None
        };
        if let Some(h) = heads {
            let cols = data.len() / shape[0];
            let perm = permute_rows(h, c.head_dim);
            data = perm
                .iter()
                .flat_map(|&p| data[p * cols..(p + 1) * cols].to_vec())
                .collect();
        }
        // llama.cpp falls back to F16 where rows are not whole blocks (688 = 21.5 x 32).
        let t = match shape[..] {
            [_, cols] if cols % ty.block_values() == 0 => ty,
            [_, _] => GgmlType::F16,
            _ => GgmlType::F32,
        };
        let q = quantize(t, &data).unwrap();
        let mut back = vec![0f32; data.len()];
        t.dequantize(&q, &mut back);
        let g = gguf_name(name).unwrap();
        dequant.push((
            g.clone(),
            shape.clone(),
            quantize(GgmlType::F32, &back).unwrap(),
        ));
        quant.push((g, t, shape, q));
    }
    let meta: Vec<(&str, GgufValue)> = owned_meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let q: Vec<(&str, GgmlType, &[usize], &[u8])> = quant
        .iter()
        .map(|(n, t, s, d)| (n.as_str(), *t, s.as_slice(), d.as_slice()))
        .collect();
    let f: Vec<(&str, GgmlType, &[usize], &[u8])> = dequant
        .iter()
        .map(|(n, s, d)| (n.as_str(), GgmlType::F32, s.as_slice(), d.as_slice()))
        .collect();
    (write_gguf(&meta, &q), write_gguf(&meta, &f))
}

fn gguf_net(bytes: Vec<u8>) -> LlamaNet<CpuBackend> {
    load(&LlmWeights::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap())
}

/// F32 GGUF equals the reference (so the Q/K permutation is undone right); every
/// quantized type equals its own dequantized F32 file (so the block products are
/// right) and stays near the reference.
fn check_gguf(test: &str, name: &str) {
    let Some(dir) = model_dir(test, name) else {
        return;
    };
    let e = Expected::read(&dir);
    let reference = e.get("logits");
    for (ty, near) in [
        (GgmlType::F32, TOLERANCE),
        (GgmlType::F16, 1e-2),
        (GgmlType::Q8_0, 3e-2),
        (GgmlType::Q4_1, 0.5),
        (GgmlType::Q4_0, 0.5),
    ] {
        let (q, f) = to_gguf(&dir, ty);
        let logits =
            |net: &LlamaNet<CpuBackend>| net.logits(&e.ids, e.batch, &mut net.state()).unwrap();
        let quantized = logits(&gguf_net(q));
        let dequantized = logits(&gguf_net(f));
        let same = max_rel_diff(quantized.data(), dequantized.data());
        let off = max_rel_diff(quantized.data(), reference);
        println!("{name} {ty:?}: vs dequantized {same:.2e}, vs reference {off:.2e}");
        assert!(same < TOLERANCE, "{name} {ty:?}: {same}");
        assert!(off < near, "{name} {ty:?}: {off}");
    }
}

#[test]
fn llama_micro_gguf_files_match() {
    check_gguf("llama_micro_gguf_files_match", "llama_micro");
}

#[test]
fn qwen2_micro_gguf_files_match() {
    check_gguf("qwen2_micro_gguf_files_match", "qwen2_micro");
}

/// `tail(head(x, layer k), layer k)` equals `forward(x)` bit for bit at every split
/// point, for the prompt and for decode steps that continue both sessions' caches.
#[test]
fn split_generation_equals_local() {
    let test = "split_generation_equals_local";
    let Some(dir) = model_dir(test, "llama_micro") else {
        return;
    };
    let e = Expected::read(&dir);
    let net = load(&LlmWeights::open(&dir).unwrap());
    let t = e.ids.len() / e.batch;
    let ids = |v: &[u32], n: usize| {
        HostTensor::new([e.batch, n], v.iter().map(|&i| i as f32).collect()).unwrap()
    };
    let next_of = |o: Output| -> Vec<u32> {
        let Output::NextToken(l) = o else {
            panic!("not next-token logits")
        };
        l.data().chunks(net.config().vocab).map(argmax).collect()
    };
    let mut local = net.new_state().unwrap();
    let mut want = vec![next_of(
        net.forward(&ids(&e.ids, t), Some(local.as_mut())).unwrap(),
    )];
    for _ in 0..4 {
        let last = want.last().unwrap().clone();
        want.push(next_of(
            net.forward(&ids(&last, 1), Some(local.as_mut())).unwrap(),
        ));
    }
    for point in net.split_points().to_vec() {
        let mut device: Box<dyn NetState> = net.new_state().unwrap();
        let mut edge: Box<dyn NetState> = net.new_state().unwrap();
        let mut input = ids(&e.ids, t);
        let mut got = Vec::new();
        for _ in 0..5 {
            let h = net
                .head(&input, &point.name, Some(device.as_mut()))
                .unwrap();
            assert_eq!(h.shape()[2], point.shape[1]);
            let out = net.tail(&h, &point.name, Some(edge.as_mut())).unwrap();
            let next = next_of(out);
            input = ids(&next, 1);
            got.push(next);
        }
        assert_eq!(got, want, "split at {}", point.name);
    }
    // And the logits themselves are bit-identical at a split.
    let whole = net.logits(&e.ids, e.batch, &mut net.state()).unwrap();
    let h = net
        .head_hidden(&e.ids, e.batch, 2, &mut net.state())
        .unwrap();
    let split = net.tail_logits(&h, 2, &mut net.state()).unwrap();
    assert_eq!(whole.data(), split.data());
}

#[test]
fn bad_inputs_are_errors() {
    let test = "bad_inputs_are_errors";
    let Some(dir) = model_dir(test, "qwen2_micro") else {
        return;
    };
    let net = load(&LlmWeights::open(&dir).unwrap());
    let mut s = net.state();
    assert!(
        net.logits(&[5000], 1, &mut s).is_err(),
        "id past the vocabulary"
    );
    assert!(net.logits(&[1, 2, 3], 2, &mut s).is_err(), "ragged batch");
    let long = vec![1u32; 65];
    assert!(net.logits(&long, 1, &mut s).is_err(), "past the context");
    assert!(net
        .forward(&HostTensor::new([1, 1], vec![0.5]).unwrap(), None)
        .is_err());
}

/// Continuous batching on the edge: one decode step of several sessions, each at its
/// own position in its own KV cache, run as one batch (`tail_batch`), gives each
/// session the logits of its step run alone, over several steps.
#[test]
fn batched_decode_steps_of_sessions_at_different_positions_equal_their_solo_steps() {
    let Some(dir) = model_dir("llm_batched_decode", "llama_micro") else {
        return;
    };
    let net = load(&LlmWeights::open(&dir).unwrap());
    let k = 2;
    let at = format!("layer{k}");
    let prompts: [&[u32]; 3] = [&[1, 2], &[1, 40, 7, 300, 9], &[5, 6, 7, 8, 9, 10, 11]];
    // Device side (layers [0, k)) and two edge sides: sessions run alone, and batched.
    let mut heads: Vec<_> = prompts.iter().map(|_| net.state()).collect();
    let mut solo: Vec<_> = prompts.iter().map(|_| net.state()).collect();
    let mut batched: Vec<_> = prompts.iter().map(|_| net.state()).collect();
    let mut next = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let h = net.head_hidden(p, 1, k, &mut heads[i]).unwrap();
        let a = net.tail_logits(&h, k, &mut solo[i]).unwrap();
        let b = net.tail_logits(&h, k, &mut batched[i]).unwrap();
        assert_eq!(a, b);
        next.push(argmax(&a.data()[a.data().len() - net.config().vocab..]));
    }
    for step in 0..4 {
        let hs: Vec<HostTensor> = next
            .iter()
            .enumerate()
            .map(|(i, &t)| net.head_hidden(&[t], 1, k, &mut heads[i]).unwrap())
            .collect();
        let alone: Vec<HostTensor> = hs
            .iter()
            .zip(solo.iter_mut())
            .map(|(h, s)| net.tail_logits(h, k, s).unwrap())
            .collect();
        let inputs: Vec<&HostTensor> = hs.iter().collect();
        let mut states: Vec<&mut dyn NetState> =
            batched.iter_mut().map(|s| s as &mut dyn NetState).collect();
        let together = net.tail_batch(&inputs, &at, &mut states).unwrap();
        assert_eq!(together.len(), prompts.len());
        for (i, (a, b)) in alone.iter().zip(together).enumerate() {
            let Output::NextToken(b) = b else {
                panic!("next-token logits")
            };
            let diff = max_rel_diff(a.data(), b.data());
            assert!(diff < 1e-5, "step {step} session {i}: {diff}");
            next[i] = argmax(b.data());
            assert_eq!(next[i], argmax(a.data()), "step {step} session {i}");
        }
    }
    assert_eq!(
        batched.iter().map(|s| s.positions()).collect::<Vec<_>>(),
        [Some(6), Some(9), Some(11)]
    );
}
