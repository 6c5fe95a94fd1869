//! Our checkpoint format: what training produces, small and loadable back.
//!
//! A directory holding
//! - `og_llava.json`: format version, the base it builds on ([`BaseModel`]: a llava-hf
//!   directory, or a CLIP tower and a Llama directory; paths as given), the fusion
//!   configuration, segment-aware RoPE, and whether a LoRA adapter is present;
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

/// What a checkpoint of ours builds on (never copied into it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BaseModel {
    /// A llava-hf `LlavaForConditionalGeneration` directory.
    LlavaHf { path: PathBuf },
    /// A CLIP tower and a Llama directory ([`OgLlava::from_parts`]).
    Parts {
        vision: PathBuf,
        llm: PathBuf,
        select_layer: i64,
    },
}

impl BaseModel {
    /// Loads the base with `fusion` for its connector (projector from a llava-hf base, fresh
    /// otherwise).
    pub fn load<B: Backend>(
        &self,
        fusion: Option<OgFusionConfig>,
        device: &B::Device,
    ) -> R<OgLlava<B>> {
        match self {
            BaseModel::LlavaHf { path } => OgLlava::load_llava_hf(path, fusion, device),
            BaseModel::Parts {
                vision,
                llm,
                select_layer,
            } => OgLlava::from_parts(vision, llm, fusion, *select_layer, device),
        }
    }

    /// The directory holding the tokenizer (the llava-hf directory or the Llama one).
    pub fn tokenizer_dir(&self) -> &Path {
        match self {
            BaseModel::LlavaHf { path } => path,
            BaseModel::Parts { llm, .. } => llm,
        }
    }

    /// The directory whose `preprocessor_config.json` describes the images (the llava-hf
    /// directory or the CLIP one).
    pub fn processor_dir(&self) -> &Path {
        match self {
            BaseModel::LlavaHf { path } => path,
            BaseModel::Parts { vision, .. } => vision,
        }
    }
}

type R<T> = std::result::Result<T, ModelError>;

fn config_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl<B: Backend> OgLlava<B> {
    /// Writes the trainable parts and a reference to `base` into `dir`. `lora` describes the
    /// adapters the language model carries, if any.
    pub fn save_checkpoint(
        &mut self,
        dir: impl AsRef<Path>,
        base: &BaseModel,
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
                &base.tokenizer_dir().display().to_string(),
            )?;
        }
        let fusion = serde_json::to_value(self.connector.config())
            .map_err(|e| config_error(dir, e.to_string()))?;
        let meta = json!({
            "format": FORMAT,
            "base": serde_json::to_value(base).expect("json"),
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
    /// it records (for checkpoints moved between machines).
    pub fn load_checkpoint(
        dir: impl AsRef<Path>,
        base: Option<&BaseModel>,
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
        let base: BaseModel = match base {
            Some(b) => b.clone(),
            None => serde_json::from_value(meta["base"].clone())
                .map_err(|e| config_error(&path, format!("base: {e}")))?,
        };
        let fusion: OgFusionConfig = serde_json::from_value(meta["fusion"].clone())
            .map_err(|e| config_error(&path, format!("fusion: {e}")))?;
        let mut model = base.load(Some(fusion), device)?;
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
