//! Loading a Llama from HF checkpoints: `LlamaForCausalLM` (`model.*`, `lm_head`), the language
//! model inside llava-hf checkpoints (`language_model.model.*` on the hub,
//! `model.language_model.*` as newer transformers writes it) and original LLaVA (`model.*`).
//! Single-file or sharded safetensors, f32/f16/bf16.

use std::path::Path;

use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;
use og_weights::{SaveTensor, Weights};

use crate::config::LlamaConfig;
use crate::error::{LlmError, Result};
use crate::model::LlamaForCausalLM;

/// Decoder prefixes, probed with `embed_tokens.weight`.
pub const DECODER_PREFIXES: &[&str] = &[
    "model.",
    "language_model.model.",
    "model.language_model.",
    "language_model.",
    "",
];
/// Head names, tried in order.
pub const HEAD_NAMES: &[&str] = &["lm_head.weight", "language_model.lm_head.weight"];

fn rms<B: Backend>(w: &Weights, name: &str, n: &mut RmsNorm<B>) -> Result<()> {
    let [d] = n.gamma.lazy_shape().dims::<1>();
    let device = n.gamma.lazy_device();
    n.gamma = Param::from_tensor(w.tensor(&format!("{name}.weight"), [d], &device)?);
    Ok(())
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// Loads weights from an opened checkpoint (layout detected, see [`DECODER_PREFIXES`]).
    pub fn load_weights(mut self, w: &Weights) -> Result<Self> {
        let p = w
            .detect_prefix(DECODER_PREFIXES, "embed_tokens.weight")
            .ok_or_else(|| {
                LlmError::Config(format!(
                    "{}: no Llama decoder found (looked for embed_tokens.weight under {DECODER_PREFIXES:?})",
                    w.origin().display()
                ))
            })?;
        let device = self.model.embed_tokens.weight.lazy_device();
        let dims = self.model.embed_tokens.weight.lazy_shape().dims::<2>();
        self.model.embed_tokens.weight =
            Param::from_tensor(w.tensor(&format!("{p}embed_tokens.weight"), dims, &device)?);
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let l = format!("{p}layers.{i}");
            let a = &mut layer.self_attn;
            w.load_linear(&format!("{l}.self_attn.q_proj"), &mut a.q_proj.base)?;
            w.load_linear(&format!("{l}.self_attn.k_proj"), &mut a.k_proj.base)?;
            w.load_linear(&format!("{l}.self_attn.v_proj"), &mut a.v_proj.base)?;
            w.load_linear(&format!("{l}.self_attn.o_proj"), &mut a.o_proj.base)?;
            let m = &mut layer.mlp;
            w.load_linear(&format!("{l}.mlp.gate_proj"), &mut m.gate_proj.base)?;
            w.load_linear(&format!("{l}.mlp.up_proj"), &mut m.up_proj.base)?;
            w.load_linear(&format!("{l}.mlp.down_proj"), &mut m.down_proj.base)?;
            rms(
                w,
                &format!("{l}.input_layernorm"),
                &mut layer.input_layernorm,
            )?;
            rms(
                w,
                &format!("{l}.post_attention_layernorm"),
                &mut layer.post_attention_layernorm,
            )?;
        }
        rms(w, &format!("{p}norm"), &mut self.model.norm)?;
        let extra = format!("{p}layers.{}.input_layernorm.weight", self.num_layers());
        if w.contains(&extra) {
            return Err(LlmError::Config(format!(
                "{}: the checkpoint has more than the {} layers its config declares",
                w.origin().display(),
                self.num_layers()
            )));
        }
        if let Some(head) = &mut self.lm_head {
            let name = w.first_of(HEAD_NAMES)?;
            let [d_in, d_out] = head.weight.lazy_shape().dims::<2>();
            let weight = w.tensor::<B, 2>(name, [d_out, d_in], &device)?;
            head.weight = Param::from_tensor(weight.transpose());
        }
        Ok(self)
    }

    /// Writes a `save_pretrained` directory transformers' `LlamaForCausalLM` loads:
    /// `config.json` (from `config`) and `model.safetensors` (`model.*`, `lm_head.weight` when
    /// untied). Adapters must be merged first (`merge_lora`).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, config: &LlamaConfig) -> Result<()> {
        if self.has_lora() {
            return Err(LlmError::Config(
                "the model carries LoRA adapters: merge them (merge_lora) or save them with \
                 save_peft_adapter"
                    .into(),
            ));
        }
        let mut t = vec![SaveTensor::from_tensor(
            "model.embed_tokens.weight",
            self.model.embed_tokens.weight.val(),
        )];
        for (i, layer) in self.model.layers.iter().enumerate() {
            let l = format!("model.layers.{i}");
            let (a, m) = (&layer.self_attn, &layer.mlp);
            for (name, lin) in [
                ("self_attn.q_proj", &a.q_proj.base),
                ("self_attn.k_proj", &a.k_proj.base),
                ("self_attn.v_proj", &a.v_proj.base),
                ("self_attn.o_proj", &a.o_proj.base),
                ("mlp.gate_proj", &m.gate_proj.base),
                ("mlp.up_proj", &m.up_proj.base),
                ("mlp.down_proj", &m.down_proj.base),
            ] {
                t.extend(SaveTensor::linear(&format!("{l}.{name}"), lin));
            }
            t.push(SaveTensor::from_tensor(
                format!("{l}.input_layernorm.weight"),
                layer.input_layernorm.gamma.val(),
            ));
            t.push(SaveTensor::from_tensor(
                format!("{l}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.gamma.val(),
            ));
        }
        t.push(SaveTensor::from_tensor(
            "model.norm.weight",
            self.model.norm.gamma.val(),
        ));
        if let Some(head) = &self.lm_head {
            t.extend(SaveTensor::linear("lm_head", head));
        }
        Ok(og_weights::save_pretrained(dir, &config.to_hf_value(), &t)?)
    }

    /// Builds the model of a `save_pretrained` directory: `config.json` plus safetensors.
    pub fn load_hf(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = LlamaConfig::from_hf_dir(dir)?;
        let weights = Weights::open(dir)?;
        config.init::<B>(device)?.load_weights(&weights)
    }
}
