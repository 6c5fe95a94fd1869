//! Shared by the training tests: the tiny world's run configuration.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use og_train::{Metrics, Stage, TrainConfig, read_metrics};
use serde_json::json;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A temporary directory holding the tiny world (the tiny llava-hf model, LLaVA JSON, images,
/// masks).
pub fn tiny_world() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    og_train::testing::tiny_world(dir.path(), &fixtures().join("vision/llava_tiny"));
    dir
}

/// The tiny world's SFT configuration writing to `root/out`, with `key=value` overrides.
pub fn sft(root: &Path, out: &str, overrides: &[String]) -> TrainConfig {
    config(root, Stage::Sft, out, overrides)
}

pub fn config(root: &Path, stage: Stage, out: &str, extra: &[String]) -> TrainConfig {
    let file = root.join(format!("{out}.json"));
    let mut v = json!({
        "stage": stage,
        "base": {"kind": "llava_hf", "path": root.join("model")},
        "fusion": {"delimiter": "before_mask"},
        "data": {"json": root.join("data.json"), "images": root.join("images"),
                 "masks": root.join("masks"), "missing_masks": "plain", "workers": 2},
        "output_dir": root.join(out),
        "model_max_length": 64,
        "epochs": 3,
        "batch_size": 2,
        "grad_accumulation": 2,
        "lr_connector": 1e-2,
        "lr_lora": 1e-2,
        "warmup_ratio": 0.1,
        "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999],
        "adam_eps": 1e-8,
        "max_grad_norm": 1.0,
        "seed": 7,
        "checkpoint_every": 2,
    });
    if stage == Stage::Sft {
        v["lora"] = json!({"r": 4, "alpha": 8.0, "dropout": 0.05,
                           "target_modules": ["q_proj", "v_proj", "down_proj"]});
    }
    std::fs::write(&file, v.to_string()).unwrap();
    TrainConfig::resolve(None, Some(&file), extra).unwrap()
}

pub fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Asserts that every step's loss of the run in `root/b` is within `rel` (relative, to a
/// loss of at least 1) of the run in `root/a`, which took as many steps; returns both metrics.
pub fn losses_agree(root: &Path, a: &str, b: &str, rel: f64) -> (Vec<Metrics>, Vec<Metrics>) {
    let (ma, mb) = (
        read_metrics(&root.join(a)).unwrap(),
        read_metrics(&root.join(b)).unwrap(),
    );
    assert_eq!(
        ma.len(),
        mb.len(),
        "{a} and {b} took different numbers of steps"
    );
    for (x, y) in ma.iter().zip(&mb) {
        assert!(
            (x.loss - y.loss).abs() <= rel * x.loss.abs().max(1.0),
            "step {}: loss {} in {a}, {} in {b}",
            x.step,
            x.loss,
            y.loss
        );
    }
    (ma, mb)
}

/// Asserts that two checkpoint directories hold byte-identical trainable tensors and
/// optimiser state.
pub fn same_checkpoint(a: &Path, b: &Path) {
    for f in ["trainable.safetensors", "optimizer.safetensors"] {
        assert!(
            bytes(a.join(f)) == bytes(b.join(f)),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}
