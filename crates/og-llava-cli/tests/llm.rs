//! `og-llava inspect llm` equals transformers' logits; `og-llava generate` streams the greedy
//! continuation the library computes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use og_weights::Weights;

fn llm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llm")
}

fn og() -> Command {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
}

#[test]
fn inspect_llm_matches_transformers() {
    let io = Weights::open(llm().join("gqa_io.safetensors")).unwrap();
    let (ids, _) = io.i64("input_ids").unwrap();
    let row: Vec<String> = ids[..10].iter().map(|i| i.to_string()).collect();
    let (want, _) = io.f32("logits").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let o = og()
        .args(["inspect", "llm", "--device", "flex", "--model"])
        .arg(llm().join("gqa"))
        .args(["--token-ids", &row.join(",")])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (got, shape) = Weights::open(&out).unwrap().f32("logits").unwrap();
    assert_eq!(shape, vec![1, 10, 64]);
    let d = got
        .iter()
        .zip(&want[..640])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "logits differ by {d}");
    let o = og()
        .args(["inspect", "llm", "--model"])
        .arg(llm().join("gqa"))
        .args(["--token-ids", "1,2,999", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("999"), "{err}");
}

#[test]
fn generate_streams_greedy_text() {
    // The gqa model with a word-level tokenizer over its 64 ids.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(llm().join("gqa").join(f), dir.path().join(f)).unwrap();
    }
    common::write_word_tokenizer(dir.path(), false);
    let o = og()
        .args(["generate", "--raw", "--max-new-tokens", "6", "--model"])
        .arg(dir.path())
        .arg("w5 w9 w17")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();

    use burn::backend::Flex;
    let device = Default::default();
    let model = og_llm::LlamaForCausalLM::<Flex<f32>>::load_hf(dir.path(), &device).unwrap();
    let cfg = og_llm::GenerationConfig {
        max_new_tokens: 6,
        eos_token_ids: vec![2],
        ..Default::default()
    };
    let ids = model.generate(&[1, 5, 9, 17], &cfg, |_| {}).unwrap();
    let want: Vec<String> = ids
        .iter()
        .filter(|&&i| i > 2)
        .map(|i| format!("w{i}"))
        .collect();
    assert!(!want.is_empty(), "the continuation has words");
    assert_eq!(text, want.join(" "));
}
