//! [`ClipVisionConfig`]: transformers' `CLIPVisionConfig`, read from any `config.json` that
//! holds one (bare, inside `CLIPConfig`, inside `LlavaConfig`; old `vision_config_dict`
//! spelling too), with HF's defaults for every absent field.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, VisionError};

/// The activation of the encoder MLP (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x·σ(1.702x)`, CLIP's default.
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
}

/// Which tokens of the selected layer are the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectFeature {
    /// Patch tokens only (CLS dropped): LLaVA's `default` / `patch`.
    #[serde(alias = "default")]
    Patch,
    /// CLS and patch tokens: LLaVA's `full` / `cls_patch`.
    #[serde(alias = "full")]
    ClsPatch,
}

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_act() -> ClipActivation {
    ClipActivation::QuickGelu
}
fn d_eps() -> f64 {
    1e-5
}
fn d_select_layer() -> i64 {
    -2
}
fn d_select_feature() -> SelectFeature {
    SelectFeature::Patch
}

/// The vision tower's hyper-parameters. Field names and defaults are transformers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: ClipActivation,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Hidden state whose features are used (negative: from the end; −2 in LLaVA). Read from
    /// `vision_feature_layer` / `mm_vision_select_layer` when the config has one.
    #[serde(default = "d_select_layer")]
    pub select_layer: i64,
    /// Read from `vision_feature_select_strategy` / `mm_vision_select_feature`.
    #[serde(default = "d_select_feature")]
    pub select_feature: SelectFeature,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise")
    }
}

/// The parts of a `config.json` that say where the vision config is and which features LLaVA
/// selects: llava-hf's `vision_feature_layer` / `vision_feature_select_strategy`, original
/// LLaVA's `mm_vision_select_layer` / `mm_vision_select_feature` (the llava-hf names win when
/// both are present). The vision config itself mirrors into [`ClipVisionConfig`] directly.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HfClipFile {
    pub model_type: Option<String>,
    /// A bare `CLIPVisionConfig` has one.
    pub patch_size: Option<Value>,
    pub vision_config: Option<Value>,
    /// The spelling of older `CLIPConfig`s.
    pub vision_config_dict: Option<Value>,
    pub vision_feature_layer: Option<i64>,
    pub mm_vision_select_layer: Option<i64>,
    pub vision_feature_select_strategy: Option<SelectFeature>,
    pub mm_vision_select_feature: Option<SelectFeature>,
}

/// The largest encoder input side, in pixels, a config may ask for.
pub const MAX_IMAGE_SIZE: usize = 4096;

impl ClipVisionConfig {
    /// CLIP ViT-L/14 at 336 px: the encoder of LLaVA-1.5 and OG-LLaVA (V = 576, F = 1024).
    pub fn vit_l_14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            ..Self::default()
        }
    }

    /// CLIP ViT-L/14 at 224 px.
    pub fn vit_l_14() -> Self {
        Self {
            image_size: 224,
            ..Self::vit_l_14_336()
        }
    }

    /// CLIP ViT-B/16 at 224 px.
    pub fn vit_b_16() -> Self {
        Self {
            patch_size: 16,
            ..Self::default()
        }
    }

    /// A tiny tower for tests (30 px, 6 px patches, width 32, 3 layers).
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            image_size: 30,
            patch_size: 6,
            ..Self::default()
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// V, the number of patch tokens.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// The hidden state index (0 = embeddings, L = last layer) of `select_layer`.
    pub fn selected_hidden_state(&self) -> Result<usize> {
        let n = self.num_hidden_layers as i64;
        let idx = if self.select_layer < 0 {
            n + 1 + self.select_layer
        } else {
            self.select_layer
        };
        if !(0..=n).contains(&idx) {
            return Err(VisionError::Config(format!(
                "select_layer {} is outside the {} hidden states of a {n}-layer tower",
                self.select_layer,
                n + 1
            )));
        }
        Ok(idx as usize)
    }

    /// Checks the numbers describe a buildable tower.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VisionError::Config(m));
        // Bounded before anything is allocated from them (CLIP ViT-bigG is well inside).
        for (name, value, max) in [
            ("hidden_size", self.hidden_size, 1 << 14),
            ("intermediate_size", self.intermediate_size, 1 << 16),
            ("num_hidden_layers", self.num_hidden_layers, 256),
            ("num_attention_heads", self.num_attention_heads, 256),
            ("num_channels", self.num_channels, 16),
            ("image_size", self.image_size, MAX_IMAGE_SIZE),
            ("patch_size", self.patch_size, 1024),
        ] {
            if value == 0 || value > max {
                return bad(format!("{name} is {value}: it must be in 1..={max}"));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "layer_norm_eps is {}: it must be a positive number",
                self.layer_norm_eps
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        self.selected_hidden_state().map(|_| ())
    }

    /// Reads the vision config from an HF `config.json` value: a bare `CLIPVisionConfig`, or
    /// `vision_config` (or the older `vision_config_dict`) inside `CLIPConfig`/`LlavaConfig`
    /// (read through the [`HfClipFile`] mirror, then validated).
    pub fn from_hf_value(value: &Value) -> Result<Self> {
        if !value.is_object() {
            return Err(VisionError::Config(
                "config.json is not a JSON object".into(),
            ));
        }
        let file: HfClipFile = og_weights::mirror(value).map_err(VisionError::Config)?;
        let is_vision =
            file.model_type.as_deref() == Some("clip_vision_model") || file.patch_size.is_some();
        let source = match file.vision_config.or(file.vision_config_dict) {
            Some(nested) => nested,
            None if is_vision => value.clone(),
            None => {
                return Err(VisionError::Config(
                    "config.json has no vision_config and is not a CLIP vision config".into(),
                ));
            }
        };
        let mut cfg: ClipVisionConfig = og_weights::mirror(&source)
            .map_err(|e| VisionError::Config(format!("vision config: {e}")))?;
        // The selection lives on the outer (LLaVA) config.
        if let Some(layer) = file.vision_feature_layer.or(file.mm_vision_select_layer) {
            cfg.select_layer = layer;
        }
        if let Some(feature) = file
            .vision_feature_select_strategy
            .or(file.mm_vision_select_feature)
        {
            cfg.select_feature = feature;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `config.json` from a `save_pretrained` directory (or the file itself).
    pub fn from_hf_dir(path: impl AsRef<Path>) -> Result<Self> {
        let (file, value) = og_weights::read_config(path)?;
        Self::from_hf_value(&value)
            .map_err(|e| VisionError::Config(format!("{}: {e}", file.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_field() {
        for (json, needle) in [
            (
                serde_json::json!({"vision_config": {"hidden_size": "wide"}}),
                "hidden_size",
            ),
            (
                serde_json::json!({"vision_config": {}, "vision_feature_layer": [-2, -1]}),
                "vision_feature_layer",
            ),
            (
                serde_json::json!({"patch_size": 14, "mm_vision_select_feature": "mean"}),
                "mm_vision_select_feature",
            ),
        ] {
            let e = ClipVisionConfig::from_hf_value(&json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn spellings_and_defaults() {
        let llava = serde_json::json!({
            "model_type": "llava",
            "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                              "model_type": "clip_vision_model", "num_attention_heads": 16,
                              "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default"
        });
        let c = ClipVisionConfig::from_hf_value(&llava).unwrap();
        assert_eq!(c, ClipVisionConfig::vit_l_14_336());
        assert_eq!(c.num_patches(), 576);
        assert_eq!(c.selected_hidden_state().unwrap(), 23);
        let old = serde_json::json!({"vision_config_dict": {"patch_size": 16, "hidden_act": "gelu"},
                                     "text_config_dict": {}});
        let c = ClipVisionConfig::from_hf_value(&old).unwrap();
        assert_eq!((c.patch_size, c.hidden_act), (16, ClipActivation::Gelu));
        let bare = serde_json::json!({"model_type": "clip_vision_model", "hidden_act": "gelu_pytorch_tanh",
                                      "mm_vision_select_feature": "cls_patch"});
        let c = ClipVisionConfig::from_hf_value(&bare).unwrap();
        assert_eq!(c.hidden_act, ClipActivation::GeluTanh);
        let orig = serde_json::json!({"patch_size": 14, "mm_vision_select_layer": -1,
                                      "mm_vision_select_feature": "patch"});
        assert_eq!(
            ClipVisionConfig::from_hf_value(&orig).unwrap().select_layer,
            -1
        );
        assert!(
            ClipVisionConfig::from_hf_value(&serde_json::json!({"model_type": "llama"})).is_err()
        );
        let bad = serde_json::json!({"patch_size": 14, "hidden_act": "relu6"});
        assert!(ClipVisionConfig::from_hf_value(&bad).is_err());
        let bad = serde_json::json!({"patch_size": 14, "vision_feature_layer": -30});
        assert!(ClipVisionConfig::from_hf_value(&bad).is_err());
        // Numbers that would write NaN features or allocate without bound.
        for (key, value) in [
            ("layer_norm_eps", serde_json::json!(-1e-5)),
            ("layer_norm_eps", serde_json::json!(0)),
            ("num_hidden_layers", serde_json::json!(100_000)),
            ("image_size", serde_json::json!(1u64 << 20)),
            ("intermediate_size", serde_json::json!(0)),
        ] {
            let mut v = serde_json::json!({"model_type": "clip_vision_model"});
            v[key] = value;
            let e = ClipVisionConfig::from_hf_value(&v).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
