//! `splitstream infer` and `splitstream generate` on an LLM, end to end: the binary on
//! the Llama reference folder, its outputs against transformers' (`logits` within 1e-4
//! of the largest |logit|, `generated` identical, `generated_logits` within 1e-4), and
//! token ids printed as they come.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::{Dtype, SafeTensors};
use splitstream_testkit::{max_rel_diff, shared_file};

fn llama_micro(test: &str) -> Option<PathBuf> {
    shared_file(test, "reference/llm/llama_micro/model.safetensors")
        .and_then(|f| f.parent().map(Path::to_path_buf))
}

fn run(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitstream-llm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn floats(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::F32);
    v.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn ints(st: &SafeTensors<'_>, name: &str) -> Vec<i64> {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::I64);
    v.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn infer_and_generate_write_the_reference_outputs() {
    let Some(dir) = llama_micro("llm_cli_reference") else {
        return;
    };
    let expected_path = dir.with_extension("expected.safetensors");
    let expected_buf = std::fs::read(&expected_path).unwrap();
    let expected = SafeTensors::deserialize(&expected_buf).unwrap();

    let logits_path = tmp("logits.safetensors");
    let o = run(&[
        "infer".as_ref(),
        "--weights".as_ref(),
        dir.as_os_str(),
        "--input".as_ref(),
        expected_path.as_os_str(),
        "--output".as_ref(),
        logits_path.as_os_str(),
        "--backend".as_ref(),
        "cpu".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let buf = std::fs::read(&logits_path).unwrap();
    let got = SafeTensors::deserialize(&buf).unwrap();
    assert_eq!(got.tensor("logits").unwrap().shape(), [2, 24, 1024]);
    let d = max_rel_diff(&floats(&got, "logits"), &floats(&expected, "logits"));
    assert!(d < 1e-4, "logits: {d}");

    let out_path = tmp("generated.safetensors");
    let o = run(&[
        "generate".as_ref(),
        "--weights".as_ref(),
        dir.as_os_str(),
        "--input".as_ref(),
        expected_path.as_os_str(),
        "--max-tokens".as_ref(),
        "16".as_ref(),
        "--output".as_ref(),
        out_path.as_os_str(),
        "--backend".as_ref(),
        "cpu".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let buf = std::fs::read(&out_path).unwrap();
    let got = SafeTensors::deserialize(&buf).unwrap();
    assert_eq!(ints(&got, "generated"), ints(&expected, "generated"));
    let d = max_rel_diff(
        &floats(&got, "generated_logits"),
        &floats(&expected, "generated_logits"),
    );
    assert!(d < 1e-4, "generated_logits: {d}");
    std::fs::remove_dir_all(out_path.parent().unwrap()).ok();
}

#[test]
fn generate_prints_tokens_and_refuses_bad_input() {
    let Some(dir) = llama_micro("llm_cli_print") else {
        return;
    };
    // The reference's second row: its greedy continuation starts 405 870 746.
    let o = run(&[
        "generate".as_ref(),
        "--weights".as_ref(),
        dir.as_os_str(),
        "--prompt-ids".as_ref(),
        "630,206,45,60,674,691,224,764,736,933,454,836,616,284,109,911,794,260,263,652,428,716,609,245".as_ref(),
        "--max-tokens".as_ref(),
        "3".as_ref(),
        "--backend".as_ref(),
        "cpu".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "405\n870\n746\n");
    // A sampled run is repeatable with its seed.
    let sampled = |seed: &str| {
        run(&[
            "generate".as_ref(),
            "--weights".as_ref(),
            dir.as_os_str(),
            "--prompt-ids".as_ref(),
            "1,2,3".as_ref(),
            "--temperature".as_ref(),
            "1.0".as_ref(),
            "--top-p".as_ref(),
            "0.9".as_ref(),
            "--seed".as_ref(),
            seed.as_ref(),
            "--max-tokens".as_ref(),
            "8".as_ref(),
            "--backend".as_ref(),
            "cpu".as_ref(),
        ])
        .stdout
    };
    assert_eq!(sampled("5"), sampled("5"));
    let o = run(&[
        "generate".as_ref(),
        "--weights".as_ref(),
        dir.as_os_str(),
        "--prompt-ids".as_ref(),
        "99999".as_ref(),
        "--backend".as_ref(),
        "cpu".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the vocabulary"));
}
