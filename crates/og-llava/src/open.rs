//! One place that tells the checkpoint layouts apart and loads any of them
//! ([`Layout::detect`], [`OgLlava::open`]).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::checkpoint::{BaseModel, checkpoint_base};
use crate::model::{ModelError, OgLlava};

type R<T> = std::result::Result<T, ModelError>;

/// A part of a model that some layouts keep outside their directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPart {
    /// The CLIP tower directory (what an original config's `mm_vision_tower` names).
    VisionTower,
    /// The base Llama directory a released OG-LLaVA adapter applies to.
    BaseLlm,
}

/// The layouts a model directory can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A checkpoint of ours (`og_llava.json`), built on its base.
    Ours(BaseModel),
    /// A released OG-LLaVA checkpoint: LLaVA-style `config.json`, a PEFT adapter and
    /// `non_lora_trainables.bin`, over a base Llama and a CLIP tower kept elsewhere.
    OgLlavaReleased,
    /// A llava-hf `LlavaForConditionalGeneration` directory.
    LlavaHf,
    /// An original LLaVA-1.5 checkpoint (`model.mm_projector.*`), its tower bundled or kept
    /// elsewhere.
    LlavaOriginal,
}

/// Where the parts a layout keeps outside its directory live.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExternalParts<'a> {
    pub vision: Option<&'a Path>,
    pub base: Option<&'a Path>,
}

impl Layout {
    /// The layout of `dir`: `og_llava.json` marks ours; otherwise `config.json` decides
    /// (`non_lora_trainables.bin` beside it: released OG-LLaVA; an image token id: llava-hf;
    /// else original LLaVA-1.5).
    pub fn detect(dir: &Path) -> R<Self> {
        if dir.join("og_llava.json").is_file() {
            return Ok(Layout::Ours(checkpoint_base(dir)?));
        }
        if !dir.join("config.json").is_file() {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                message: "holds no model: neither og_llava.json (a checkpoint of ours) nor \
                          config.json (llava-hf, original LLaVA-1.5, released OG-LLaVA)"
                    .into(),
            });
        }
        if dir.join("non_lora_trainables.bin").is_file() {
            return Ok(Layout::OgLlavaReleased);
        }
        let (_, config) = og_weights::read_config(dir)?;
        let hf =
            config.get("image_token_index").is_some() || config.get("image_token_id").is_some();
        Ok(if hf {
            Layout::LlavaHf
        } else {
            Layout::LlavaOriginal
        })
    }

    /// The layout in words, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Ours(_) => "a checkpoint of ours",
            Layout::OgLlavaReleased => "a released OG-LLaVA checkpoint",
            Layout::LlavaHf => "a llava-hf checkpoint",
            Layout::LlavaOriginal => "an original LLaVA-1.5 checkpoint",
        }
    }

    /// The parts this layout needs from outside `dir` that `parts` does not give.
    pub fn missing(&self, parts: ExternalParts<'_>) -> Vec<ModelPart> {
        let mut missing = Vec::new();
        match self {
            Layout::Ours(_) | Layout::LlavaHf => {}
            Layout::OgLlavaReleased => {
                if parts.base.is_none() {
                    missing.push(ModelPart::BaseLlm);
                }
                if parts.vision.is_none() {
                    missing.push(ModelPart::VisionTower);
                }
            }
            // The tower's config.json is read from its directory even when its weights are
            // bundled.
            Layout::LlavaOriginal if parts.vision.is_none() => missing.push(ModelPart::VisionTower),
            Layout::LlavaOriginal => {}
        }
        missing
    }

    /// The directory holding the tokenizer: the base's for a checkpoint of ours (the LLM's
    /// for a released one), `dir` otherwise.
    pub fn tokenizer_dir(&self, dir: &Path) -> PathBuf {
        match self {
            Layout::Ours(base) => base.tokenizer_dir().to_path_buf(),
            _ => dir.to_path_buf(),
        }
    }

    /// The directory whose `preprocessor_config.json` describes the images: the base's for a
    /// checkpoint of ours, the tower's for LLaVA-1.5 layouts without one of their own, `dir`
    /// otherwise.
    pub fn processor_dir(&self, dir: &Path, vision: Option<&Path>) -> PathBuf {
        match (self, vision) {
            (Layout::Ours(base), _) => base.processor_dir().to_path_buf(),
            (_, Some(v)) if !dir.join("preprocessor_config.json").is_file() => v.to_path_buf(),
            _ => dir.to_path_buf(),
        }
    }
}

impl<B: Backend> OgLlava<B> {
    /// Loads whatever layout `dir` holds ([`Layout::detect`]), with the parts it keeps
    /// elsewhere from `parts`; adapters stay unmerged (merge with `llm.merge_lora()` for
    /// inference speed). A part the layout needs and `parts` lacks is
    /// [`ModelError::MissingParts`].
    pub fn open(dir: impl AsRef<Path>, parts: ExternalParts<'_>, device: &B::Device) -> R<Self> {
        let dir = dir.as_ref();
        let layout = Layout::detect(dir)?;
        tracing::debug!(dir = %dir.display(), layout = layout.name(), "opening");
        let missing = layout.missing(parts);
        if !missing.is_empty() {
            return Err(ModelError::MissingParts {
                dir: dir.to_path_buf(),
                layout: layout.name(),
                parts: missing,
            });
        }
        match layout {
            Layout::Ours(_) => OgLlava::load_checkpoint(dir, None, device),
            Layout::OgLlavaReleased => OgLlava::load_og_llava_released(
                dir,
                parts.base.expect("checked"),
                parts.vision.expect("checked"),
                None,
                device,
            ),
            Layout::LlavaHf => OgLlava::load_llava_hf(dir, None, device),
            Layout::LlavaOriginal => {
                OgLlava::load_llava_original(dir, parts.vision.expect("checked"), None, device)
            }
        }
    }
}

/// `parts` in words ("its base Llama directory and its CLIP tower directory").
pub(crate) fn describe(parts: &[ModelPart]) -> String {
    parts
        .iter()
        .map(|p| match p {
            ModelPart::VisionTower => "its CLIP tower directory",
            ModelPart::BaseLlm => "its base Llama directory",
        })
        .collect::<Vec<_>>()
        .join(" and ")
}
