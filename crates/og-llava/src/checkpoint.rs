//! Our checkpoint format: what training produces, small and loadable back.
//!
//! A directory holding
//! - `og_llava.json`: format version, the base llava-hf directory it builds on (path as given),
//!   the fusion configuration, segment-aware RoPE, and whether a LoRA adapter is present;
//! - `connector.safetensors`: the connector in llava-hf names (`multi_modal_projector.*`, plus
//!   the delimiter and learned PE when configured) — transformers can load the projector part;
//! - `adapter/`: the LoRA adapter as a PEFT adapter directory (loadable by python peft on the
//!   base language model), when the model has one.
//!
//! The frozen vision tower and the base LLM are not copied: they are read from the base.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use og_fusion::OgFusionConfig;
use og_llm::LoraConfig;
use serde_json::{Value, json};

use crate::model::{ModelError, OgLlava};

const FORMAT: &str = "og-llava/1";

type R<T> = std::result::Result<T, ModelError>;

fn config_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl<B: Backend> OgLlava<B> {
    /// Writes the trainable parts and a reference to `base` (a llava-hf directory) into `dir`.
    /// `lora` describes the adapters the language model carries, if any.
    pub fn save_checkpoint(
        &mut self,
        dir: impl AsRef<Path>,
        base: impl AsRef<Path>,
        lora: Option<&LoraConfig>,
    ) -> R<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| config_error(dir, e.to_string()))?;
        self.connector
            .save_safetensors(dir.join("connector.safetensors"))?;
        if let Some(cfg) = lora {
            self.llm.save_peft_adapter(
                dir.join("adapter"),
                cfg,
                &base.as_ref().display().to_string(),
            )?;
        }
        let fusion = serde_json::to_value(self.connector.config())
            .map_err(|e| config_error(dir, e.to_string()))?;
        let meta = json!({
            "format": FORMAT,
            "base_llava": base.as_ref().display().to_string(),
            "fusion": fusion,
            "segment_rope": self.segment_rope,
            "lora": lora.is_some(),
        });
        let path = dir.join("og_llava.json");
        let text = serde_json::to_string_pretty(&meta).expect("json");
        og_segment::write_atomic(&path, text.as_bytes())
            .map_err(|e| config_error(&path, e.to_string()))
    }

    /// Loads a checkpoint written by [`OgLlava::save_checkpoint`]; `base` overrides the base
    /// directory it records (for checkpoints moved between machines).
    pub fn load_checkpoint(
        dir: impl AsRef<Path>,
        base: Option<&Path>,
        device: &B::Device,
    ) -> R<Self> {
        let dir = dir.as_ref();
        let path = dir.join("og_llava.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| config_error(&path, e.to_string()))?;
        let meta: Value = serde_json::from_str(&text)
            .map_err(|e| config_error(&path, format!("malformed JSON: {e}")))?;
        if meta.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(config_error(&path, format!("not an {FORMAT} checkpoint")));
        }
        let base: PathBuf = match base {
            Some(b) => b.to_path_buf(),
            None => meta
                .get("base_llava")
                .and_then(Value::as_str)
                .map(PathBuf::from)
                .ok_or_else(|| config_error(&path, "no base_llava"))?,
        };
        let fusion: OgFusionConfig = serde_json::from_value(meta["fusion"].clone())
            .map_err(|e| config_error(&path, format!("fusion: {e}")))?;
        let mut model = OgLlava::load_llava_hf(&base, Some(fusion), device)?;
        model.connector = model
            .connector
            .load_safetensors(dir.join("connector.safetensors"))?;
        model.segment_rope = meta
            .get("segment_rope")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if meta.get("lora").and_then(Value::as_bool) == Some(true) {
            model.llm = model.llm.load_peft_adapter(dir.join("adapter"))?;
        }
        Ok(model)
    }
}
