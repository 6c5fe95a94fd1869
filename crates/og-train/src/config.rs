//! One configuration file per run (TOML or JSON), presets, command-line overrides, validation.
//!
//! Resolution order: a preset ([`preset`]), then the file, then `key.path=value` overrides;
//! the resolved configuration is saved with the run (`config.json` in the output directory).

use std::path::{Path, PathBuf};

use og_llava::BaseModel;
use og_llava::og_fusion::{
    Delimiter, GlobalView, OgFusionConfig, PositionalEncoding, SelectionConfig,
};
use og_llava::og_llm::LoraConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Result, TrainError};

/// Which tensors train (paper Section 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Stage 1, alignment: only the connector (MLP, delimiter, learned PE) trains.
    Align,
    /// Stage 2, SFT: the connector and LoRA adapters on the LLM.
    Sft,
}

/// The dtype the model computes in while training (`precision` in the configuration): `f32`,
/// `bf16` or `auto` (the default: bf16 where the device has accelerated bf16 matmul, f32 on
/// the CPU backends). bf16 is mixed precision: the model's tensors (frozen weights,
/// activations, gradients) are bf16, while the optimiser keeps f32 master copies of the
/// trainable tensors and f32 AdamW moments, so updates smaller than bf16's resolution still
/// accumulate (the released scripts' `--bf16 True`).
pub use og_llava::Precision;

/// Where the examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// LLaVA conversation JSON (`[{"id", "image", "conversations": [...]}]`).
    pub json: PathBuf,
    /// Folder the rows' `image` paths are relative to.
    pub images: PathBuf,
    /// Folder of masks: `<image path without extension>.json` (COCO RLE) or a folder
    /// `<image path without extension>/` of `mask_<k>.npy`; without it every row takes the
    /// plain path.
    #[serde(default)]
    pub masks: Option<PathBuf>,
    /// What an image without masks in the mask folder does.
    #[serde(default)]
    pub missing_masks: MissingMasks,
    /// How masks become groups of patches (Φ, order, caps).
    #[serde(default)]
    pub selection: SelectionConfig,
    /// Group every image by sliding windows instead of masks (the paper's mask-free
    /// comparison); `masks` is then ignored.
    #[serde(default)]
    pub windows: Option<og_llava::og_fusion::Windows>,
    /// Segment every image on the fly with Felzenszwalb (`[data.felzenszwalb]`: `scale`,
    /// `sigma`, `min_size`, `max_pixels`; scikit-image's defaults where absent) instead of
    /// reading the mask folder, which is then ignored. Segmenting costs tens of milliseconds
    /// an image each epoch; `og-llava segment --images` once is cheaper for long runs.
    #[serde(default)]
    pub felzenszwalb: Option<og_llava::og_segment::FelzenszwalbConfig>,
    /// Segment every image on the fly with SAM 2's automatic mask generator (`[data.sam2]`:
    /// `weights`, and `[data.sam2.generator]` with `og_sam2::AmgConfig`'s fields) instead of
    /// reading the mask folder. A SAM 2 pass costs seconds an image on a CPU, every epoch:
    /// `og-llava segment --segmenter sam2 --images` once is far cheaper for real runs.
    #[serde(default)]
    pub sam2: Option<Sam2Data>,
    /// Pad images to square with the CLIP mean colour (LLaVA-1.5's `expand2square`); else
    /// CLIP's resize and centre crop.
    #[serde(default = "yes")]
    pub pad_to_square: bool,
    /// Stop at the first bad row instead of skipping and counting it.
    #[serde(default)]
    pub fail_on_bad_rows: bool,
    /// Loader threads (decode, preprocess, Φ, tokenise).
    #[serde(default = "two")]
    pub workers: usize,
    /// Batch examples of similar length together (within windows of 50 batches), as LLaVA's
    /// `group_by_modality_length`.
    #[serde(default)]
    pub group_by_length: bool,
}

/// An image without masks in the mask folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingMasks {
    /// Its row is a bad row ("missing masks"), skipped and counted (or fatal with
    /// `fail_on_bad_rows`).
    #[default]
    BadRow,
    /// The image takes the plain path (a mixed OG/plain dataset, by choice).
    Plain,
}

fn yes() -> bool {
    true
}
fn two() -> usize {
    2
}

/// The connector's variants (paper 5.4); its widths come from the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionSpec {
    #[serde(default)]
    pub global_view: GlobalView,
    #[serde(default)]
    pub delimiter: Delimiter,
    #[serde(default)]
    pub positional: PositionalEncoding,
}

impl FusionSpec {
    pub fn to_config(&self) -> OgFusionConfig {
        OgFusionConfig {
            global_view: self.global_view,
            delimiter: self.delimiter,
            positional: self.positional,
            ..OgFusionConfig::new(0, 0)
        }
    }
}

/// A training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub stage: Stage,
    /// The frozen parts (and, for a llava-hf base, the starting projector).
    pub base: BaseModel,
    /// Start from a checkpoint of ours (a previous stage's output): its connector, and its
    /// adapter when it has one.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// The connector's variants.
    #[serde(default)]
    pub fusion: FusionSpec,
    /// Segment-aware 1-D RoPE for the visual tokens.
    #[serde(default)]
    pub segment_rope: bool,
    /// LoRA adapters (stage 2 only).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    pub data: DataConfig,
    pub output_dir: PathBuf,
    /// Positions per example after image expansion; longer conversations are cut, never
    /// through an image.
    pub model_max_length: usize,
    pub epochs: usize,
    /// Stop after this many optimiser steps (default: `epochs` over the data).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step; the loss is the token mean over all of them.
    pub grad_accumulation: usize,
    pub lr_connector: f64,
    pub lr_lora: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub adam_betas: (f64, f64),
    pub adam_eps: f64,
    /// Clip by the global L2 norm of all trainable gradients (PyTorch `clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Write a resumable checkpoint every this many optimiser steps (and at the end).
    pub checkpoint_every: usize,
    /// Completed checkpoints kept (oldest removed first).
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Print progress every this many steps.
    #[serde(default = "one")]
    pub log_every: usize,
    /// f32, bf16 mixed precision, or `auto` (bf16 on accelerators with bf16 matmul units).
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> usize {
    1
}

/// Preset names for [`preset`].
pub const PRESETS: &[&str] = &[
    "paper-3b-align",
    "paper-3b-sft",
    "paper-8b-align",
    "paper-8b-sft",
];

/// The hyper-parameters of a preset as a partial configuration (paths stay to be given):
/// the paper's Table 2 and released scripts — AdamW (weight decay 0, PyTorch's β and ε),
/// cosine schedule, warm-up 0.03 (alignment, lr 1e-3) / 0.06 (SFT, lr 1e-4 for connector and
/// LoRA), global-norm clip 0.3, batch 8×4 (alignment) and 4×4 (SFT), 1 epoch, LoRA r=128 α=256
/// dropout 0.05, model_max_length 2048. The 3B and 8B setups differ only in the base model.
pub fn preset(name: &str) -> Result<Value> {
    let common = json!({
        "epochs": 1,
        "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999],
        "adam_eps": 1e-8,
        "max_grad_norm": 0.3,
        "model_max_length": 2048,
        "seed": 42,
        "checkpoint_every": 500,
    });
    let stage = match name {
        "paper-3b-align" | "paper-8b-align" => json!({
            "stage": "align", "lr_connector": 1e-3, "lr_lora": 0.0, "warmup_ratio": 0.03,
            "batch_size": 8, "grad_accumulation": 4,
        }),
        "paper-3b-sft" | "paper-8b-sft" => json!({
            "stage": "sft", "lr_connector": 1e-4, "lr_lora": 1e-4, "warmup_ratio": 0.06,
            "batch_size": 4, "grad_accumulation": 4,
            "lora": serde_json::to_value(LoraConfig::paper()).expect("json"),
        }),
        other => {
            return Err(TrainError::Invalid(format!(
                "unknown preset {other:?} (known: {})",
                PRESETS.join(", ")
            )));
        }
    };
    let mut v = common;
    merge(&mut v, stage);
    Ok(v)
}

/// Deep-merges `over` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// Reads a TOML (`.toml`) or JSON configuration file as a JSON value.
pub fn read_file(path: &Path) -> Result<Value> {
    let text = og_fs::read_text(path, og_fs::MAX_CONFIG_BYTES).map_err(crate::error::io(path))?;
    let bad = |message: String| TrainError::Config {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        serde_json::to_value(t).map_err(|e| bad(e.to_string()))
    } else {
        serde_json::from_str(&text).map_err(|e| bad(format!("malformed JSON: {e}")))
    }
}

/// Applies `a.b.c=value` overrides; the value is parsed as JSON when it parses (numbers,
/// booleans, arrays), else taken as a string.
pub fn apply_overrides(v: &mut Value, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (key, raw) = o
            .split_once('=')
            .ok_or_else(|| TrainError::Invalid(format!("override {o:?} is not key=value")))?;
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
        let mut patch = value;
        for part in key.rsplit('.') {
            patch = json!({ part: patch });
        }
        merge(v, patch);
    }
    Ok(())
}

impl TrainConfig {
    /// Preset, then file, then overrides; validated.
    pub fn resolve(
        preset_name: Option<&str>,
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self> {
        let mut v = match preset_name {
            Some(p) => preset(p)?,
            None => json!({}),
        };
        if let Some(f) = file {
            merge(&mut v, read_file(f)?);
        }
        apply_overrides(&mut v, overrides)?;
        let origin = file.map_or_else(|| PathBuf::from("<preset/overrides>"), Path::to_path_buf);
        let cfg: TrainConfig = serde_json::from_value(v).map_err(|e| TrainError::Config {
            path: origin.clone(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| TrainError::Config {
            path: origin,
            message,
        })?;
        Ok(cfg)
    }

    /// Checks values a run cannot use, naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accumulation", self.grad_accumulation),
            ("model_max_length", self.model_max_length),
            ("checkpoint_every", self.checkpoint_every),
            ("log_every", self.log_every),
            ("keep_checkpoints", self.keep_checkpoints),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_steps == Some(0) {
            return Err("max_steps must be at least 1".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err("epochs must be at least 1 (or give max_steps)".into());
        }
        for (name, v) in [
            ("lr_connector", self.lr_connector),
            ("lr_lora", self.lr_lora),
            ("weight_decay", self.weight_decay),
            ("adam_eps", self.adam_eps),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be finite and ≥ 0 (got {v})"));
            }
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(format!(
                "warmup_ratio must be in [0, 1) (got {})",
                self.warmup_ratio
            ));
        }
        let (b1, b2) = self.adam_betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            return Err(format!("adam_betas must be in [0, 1) (got {b1}, {b2})"));
        }
        if let Some(c) = self.max_grad_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(format!("max_grad_norm must be > 0 (got {c})"));
        }
        if let Some(f) = &self.data.felzenszwalb {
            f.validate().map_err(|e| format!("data.{e}"))?;
        }
        let sources = [
            self.data.windows.is_some(),
            self.data.felzenszwalb.is_some(),
            self.data.sam2.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() > 1 {
            return Err(
                "data.windows, data.felzenszwalb and data.sam2 are alternatives: set one".into(),
            );
        }
        match (self.stage, &self.lora) {
            (Stage::Align, Some(_)) => {
                return Err("stage align trains no LoRA: remove [lora] or use stage sft".into());
            }
            (Stage::Sft, None) => return Err("stage sft needs a [lora] configuration".into()),
            _ => {}
        }
        Ok(())
    }
}

/// `[data.sam2]`: SAM 2 weights (a transformers `Sam2Model` folder or an original `.pt`) and
/// the mask generator's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sam2Data {
    pub weights: PathBuf,
    #[serde(default)]
    pub generator: og_sam2::AmgConfig,
}

impl Sam2Data {
    /// The generator on its model, loaded on `device`.
    pub fn segmenter<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<og_llava::og_segment::SharedSegmenter> {
        let model =
            og_sam2::Sam2Model::<B>::open(&self.weights, device).map_err(|e| TrainError::Data {
                path: self.weights.clone(),
                message: format!("data.sam2.weights: {e}"),
            })?;
        Ok(std::sync::Arc::new(std::sync::Mutex::new(Box::new(
            og_sam2::Sam2Segmenter {
                model,
                config: self.generator.clone(),
                progress: None,
            },
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Value {
        json!({
            "base": {"kind": "parts", "vision": "v", "llm": "l", "select_layer": -2},
            "data": {"json": "d.json", "images": "img"},
            "output_dir": "out",
        })
    }

    #[test]
    fn preset_file_overrides_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        let toml_text = r#"
            output_dir = "runs/a"
            [base]
            kind = "parts"
            vision = "clip"
            llm = "llama"
            select_layer = -2
            [fusion]
            delimiter = "before_mask"
            [data]
            json = "train.json"
            images = "images"
        "#;
        std::fs::write(&file, toml_text).unwrap();
        let cfg = TrainConfig::resolve(
            Some("paper-3b-sft"),
            Some(&file),
            &[
                "lr_lora=2e-4".into(),
                "lora.r=8".into(),
                "data.workers=3".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.stage, Stage::Sft);
        assert_eq!(cfg.lr_lora, 2e-4);
        assert_eq!(cfg.lr_connector, 1e-4);
        assert_eq!(cfg.lora.as_ref().unwrap().r, 8);
        assert_eq!(cfg.lora.as_ref().unwrap().alpha, 256.0);
        assert_eq!(cfg.data.workers, 3);
        assert_eq!(cfg.max_grad_norm, Some(0.3));
        assert_eq!(cfg.output_dir, PathBuf::from("runs/a"));
        // The resolved config round-trips through JSON.
        let json = serde_json::to_value(&cfg).unwrap();
        let back: TrainConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);

        // Stage and LoRA must agree; unknown keys and bad values name the field.
        let mut v = preset("paper-3b-align").unwrap();
        merge(&mut v, paths());
        merge(
            &mut v,
            json!({"lora": serde_json::to_value(LoraConfig::paper()).unwrap()}),
        );
        let cfg: TrainConfig = serde_json::from_value(v).unwrap();
        assert!(cfg.validate().unwrap_err().contains("no LoRA"));
        let e = TrainConfig::resolve(
            Some("paper-3b-align"),
            Some(&file),
            &["batch_size=0".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = TrainConfig::resolve(Some("paper-3b-align"), Some(&file), &["bogus=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(preset("paper-1b").is_err());
        std::fs::write(&file, "[[[").unwrap();
        let e = TrainConfig::resolve(None, Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.toml"), "{e}");
    }
}
