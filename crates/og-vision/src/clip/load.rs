//! Loading the vision tower from HF checkpoints in every layout users have.

use std::path::Path;

use burn::module::Param;
use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use og_weights::Weights;

use super::config::ClipVisionConfig;
use super::model::ClipVisionTransformer;
use crate::error::{Result, VisionError};

/// Where the vision tower lives in the checkpoints we know, probed in this order:
/// CLIPModel / older CLIPVisionModel, newer CLIPVisionModel, llava-hf on the hub, Llava as
/// newer transformers writes it, and the original LLaVA layout.
pub const VISION_PREFIXES: &[&str] = &[
    "vision_model.",
    "",
    "vision_tower.vision_model.",
    "vision_tower.",
    "model.vision_tower.vision_model.",
    "model.vision_tower.",
    "model.vision_tower.vision_tower.vision_model.",
];

const PROBE: &str = "embeddings.patch_embedding.weight";

impl<B: Backend> ClipVisionTransformer<B> {
    /// Loads weights from an opened checkpoint; the layout is detected (see
    /// [`VISION_PREFIXES`]). Text towers, projectors and language models are ignored.
    pub fn load_weights(mut self, w: &Weights) -> Result<Self> {
        let p = w.detect_prefix(VISION_PREFIXES, PROBE).ok_or_else(|| {
            VisionError::Config(format!(
                "{}: no CLIP vision tower found (looked for {PROBE} under {VISION_PREFIXES:?})",
                w.origin().display()
            ))
        })?;
        let device = self.embeddings.class_embedding.lazy_device();
        let h = self.hidden_size();
        let e = &mut self.embeddings;
        e.class_embedding = Param::from_tensor(w.tensor(
            &format!("{p}embeddings.class_embedding"),
            [h],
            &device,
        )?);
        let conv = e.patch_embedding.weight.lazy_shape().dims::<4>();
        e.patch_embedding.weight = Param::from_tensor(w.tensor(
            &format!("{p}embeddings.patch_embedding.weight"),
            conv,
            &device,
        )?);
        let pos = e.position_embedding.weight.lazy_shape().dims::<2>();
        e.position_embedding.weight = Param::from_tensor(w.tensor(
            &format!("{p}embeddings.position_embedding.weight"),
            pos,
            &device,
        )?);
        w.load_layer_norm(&format!("{p}pre_layrnorm"), &mut self.pre_layrnorm)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let l = format!("{p}encoder.layers.{i}");
            let a = &mut layer.self_attn;
            w.load_linear(&format!("{l}.self_attn.q_proj"), &mut a.q_proj)?;
            w.load_linear(&format!("{l}.self_attn.k_proj"), &mut a.k_proj)?;
            w.load_linear(&format!("{l}.self_attn.v_proj"), &mut a.v_proj)?;
            w.load_linear(&format!("{l}.self_attn.out_proj"), &mut a.out_proj)?;
            w.load_layer_norm(&format!("{l}.layer_norm1"), &mut layer.layer_norm1)?;
            w.load_linear(&format!("{l}.mlp.fc1"), &mut layer.mlp.fc1)?;
            w.load_linear(&format!("{l}.mlp.fc2"), &mut layer.mlp.fc2)?;
            w.load_layer_norm(&format!("{l}.layer_norm2"), &mut layer.layer_norm2)?;
        }
        w.load_layer_norm(&format!("{p}post_layernorm"), &mut self.post_layernorm)?;
        // A checkpoint with more layers than the config is a mismatch worth reporting.
        let extra = format!("{p}encoder.layers.{}.layer_norm1.weight", self.num_layers());
        if w.contains(&extra) {
            return Err(VisionError::Config(format!(
                "{}: the checkpoint has more than the {} layers its config declares",
                w.origin().display(),
                self.num_layers()
            )));
        }
        Ok(self)
    }

    /// Writes a `save_pretrained` directory of a `CLIPVisionModel` (`vision_model.*` names,
    /// `config.json` from `config`), loadable by [`ClipVisionTransformer::load_hf`] and by
    /// transformers.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, config: &ClipVisionConfig) -> Result<()> {
        use og_weights::SaveTensor;
        let p = "vision_model";
        let e = &self.embeddings;
        let mut t = vec![
            SaveTensor::from_tensor(
                format!("{p}.embeddings.class_embedding"),
                e.class_embedding.val(),
            ),
            SaveTensor::from_tensor(
                format!("{p}.embeddings.patch_embedding.weight"),
                e.patch_embedding.weight.val(),
            ),
            SaveTensor::from_tensor(
                format!("{p}.embeddings.position_embedding.weight"),
                e.position_embedding.weight.val(),
            ),
        ];
        let ln = |t: &mut Vec<SaveTensor>, name: String, n: &LayerNorm<B>| {
            t.push(SaveTensor::from_tensor(
                format!("{name}.weight"),
                n.gamma.val(),
            ));
            if let Some(b) = &n.beta {
                t.push(SaveTensor::from_tensor(format!("{name}.bias"), b.val()));
            }
        };
        ln(&mut t, format!("{p}.pre_layrnorm"), &self.pre_layrnorm);
        for (i, layer) in self.layers.iter().enumerate() {
            let l = format!("{p}.encoder.layers.{i}");
            let a = &layer.self_attn;
            for (name, lin) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.out_proj", &a.out_proj),
                ("mlp.fc1", &layer.mlp.fc1),
                ("mlp.fc2", &layer.mlp.fc2),
            ] {
                t.extend(SaveTensor::linear(&format!("{l}.{name}"), lin));
            }
            ln(&mut t, format!("{l}.layer_norm1"), &layer.layer_norm1);
            ln(&mut t, format!("{l}.layer_norm2"), &layer.layer_norm2);
        }
        ln(&mut t, format!("{p}.post_layernorm"), &self.post_layernorm);
        let mut value = serde_json::to_value(config).expect("config serialises");
        value["model_type"] = "clip_vision_model".into();
        value["architectures"] = serde_json::json!(["CLIPVisionModel"]);
        Ok(og_weights::save_pretrained(dir, &value, &t)?)
    }

    /// Builds the tower of a `save_pretrained` directory (CLIPModel, CLIPVisionModel, Llava or
    /// original LLaVA with a bundled tower): `config.json` plus safetensors weights.
    pub fn load_hf(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipVisionConfig::from_hf_dir(dir)?;
        let weights = Weights::open(dir)?;
        config.init::<B>(device)?.load_weights(&weights)
    }
}
