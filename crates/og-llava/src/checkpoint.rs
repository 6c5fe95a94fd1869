//! Our checkpoint format: what training produces, small and loadable back.
//!
//! A directory holding
//! - `og_llava.json`: format version, the base it builds on ([`BaseModel`]: a llava-hf
//!   directory, or a CLIP tower and a Llama directory; paths relative to the checkpoint, so a
//!   run's folder can move as a whole), the fusion
//!   configuration, segment-aware RoPE, the image settings ([`ImageSettings`]: Φ, mask order,
//!   complement, token cap, padding), and whether a LoRA adapter is present;
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
use serde_json::Value;

use crate::model::{ImageSettings, ModelError, OgLlava};

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

impl BaseModel {
    /// The same base with every path mapped by `f`.
    fn map_paths(&self, f: impl Fn(&Path) -> PathBuf) -> BaseModel {
        match self {
            BaseModel::LlavaHf { path } => BaseModel::LlavaHf { path: f(path) },
            BaseModel::Parts {
                vision,
                llm,
                select_layer,
            } => BaseModel::Parts {
                vision: f(vision),
                llm: f(llm),
                select_layer: *select_layer,
            },
        }
    }
}

/// `to` as a path relative to the directory `from` (lexically, after making both absolute);
/// `to` itself where they share no root.
fn relative_to(from: &Path, to: &Path) -> PathBuf {
    let (Ok(a), Ok(b)) = (std::path::absolute(from), std::path::absolute(to)) else {
        return to.to_path_buf();
    };
    let (a, b): (Vec<_>, Vec<_>) = (a.components().collect(), b.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return to.to_path_buf();
    }
    let mut out: PathBuf = std::iter::repeat_n("..", a.len() - common).collect();
    out.extend(&b[common..]);
    out
}

/// A base path as recorded in `dir`'s og_llava.json: relative paths are relative to the
/// checkpoint; one that does not exist there is taken as given (relative to the working
/// directory, as older checkpoints recorded them).
fn resolve_in(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let inside = dir.join(p);
    if inside.exists() || !p.exists() {
        inside
    } else {
        p.to_path_buf()
    }
}

/// `og_llava.json`: what a checkpoint of ours is and how to rebuild it. Fields added after the
/// first checkpoints were written default to what inference then used.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    /// Always [`FORMAT`].
    format: String,
    /// Paths relative to the checkpoint.
    base: BaseModel,
    fusion: OgFusionConfig,
    #[serde(default)]
    segment_rope: bool,
    #[serde(default)]
    image: ImageSettings,
    /// The language model carries PEFT adapters in `adapter/`.
    #[serde(default)]
    lora: bool,
}

/// Reads a checkpoint's og_llava.json (at most 64 MiB).
fn read_meta(dir: &Path) -> R<CheckpointMeta> {
    let path = dir.join("og_llava.json");
    let text = og_fs::read_text(&path, og_fs::MAX_CONFIG_BYTES)
        .map_err(|e| config_error(&path, e.to_string()))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| config_error(&path, format!("malformed JSON: {e}")))?;
    if value.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(config_error(&path, format!("not an {FORMAT} checkpoint")));
    }
    og_weights::mirror(&value).map_err(|e| config_error(&path, e))
}

/// The base a checkpoint of ours builds on, its paths resolved against the checkpoint.
pub fn checkpoint_base(dir: impl AsRef<Path>) -> R<BaseModel> {
    let dir = dir.as_ref();
    let meta = read_meta(dir)?;
    Ok(meta.base.map_paths(|p| resolve_in(dir, p)))
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
        let meta = CheckpointMeta {
            format: FORMAT.into(),
            base: base.map_paths(|p| relative_to(dir, p)),
            fusion: self.connector.config().clone(),
            segment_rope: self.segment_rope,
            image: self.image.clone(),
            lora: lora.is_some(),
        };
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
        let meta = read_meta(dir)?;
        let base: BaseModel = match base {
            Some(b) => b.clone(),
            None => meta.base.map_paths(|p| resolve_in(dir, p)),
        };
        let mut model = base.load(Some(meta.fusion), device)?;
        model.connector = model
            .connector
            .load_safetensors(dir.join("connector.safetensors"))?;
        model.segment_rope = meta.segment_rope;
        model.image = meta.image;
        if meta.lora {
            model.llm = model.llm.load_peft_adapter(dir.join("adapter"))?;
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint records its base relative to itself, so the run's folder can move as a
    /// whole; a path recorded relative to the working directory (older checkpoints) still
    /// resolves where the checkpoint-relative one does not exist.
    #[test]
    fn base_paths_are_relative_to_the_checkpoint() {
        assert_eq!(
            relative_to(Path::new("/r/run/final"), Path::new("/r/model")),
            PathBuf::from("../../model")
        );
        assert_eq!(
            relative_to(Path::new("/r/run"), Path::new("/r/run/base")),
            PathBuf::from("base")
        );
        let tmp = tempfile::tempdir().unwrap();
        let (ckpt, model) = (
            tmp.path().join("moved/final"),
            tmp.path().join("moved/model"),
        );
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::create_dir_all(&model).unwrap();
        let rel = relative_to(&ckpt, &model);
        assert_eq!(resolve_in(&ckpt, &rel), ckpt.join("../model"));
        assert!(resolve_in(&ckpt, &rel).is_dir());
        // Recorded relative to the working directory: found there.
        let cwd_relative = PathBuf::from("src");
        assert_eq!(resolve_in(&ckpt, &cwd_relative), cwd_relative);
        assert_eq!(resolve_in(&ckpt, &model), model);
    }
}
