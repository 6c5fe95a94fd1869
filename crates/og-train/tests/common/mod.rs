//! Shared by the training tests: the tiny world's run configuration.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use og_train::{Stage, TrainConfig};
use serde_json::json;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn config(root: &Path, stage: Stage, out: &str, extra: &[String]) -> TrainConfig {
    let file = root.join(format!("{out}.json"));
    let mut v = json!({
        "stage": stage,
        "base": {"kind": "llava_hf", "path": root.join("model")},
        "fusion": {"delimiter": "before_mask"},
        "data": {"json": root.join("data.json"), "images": root.join("images"),
                 "masks": root.join("masks"), "workers": 2},
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
