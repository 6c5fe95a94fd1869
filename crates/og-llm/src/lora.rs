//! LoRA (Hu et al.): `y = x·W + s·(dropout(x)·A)·B` with `W` frozen, `A` [in, r], `B` [r, out]
//! initialised to zero, `s = α / r` (paper: r = 128, α = 256, dropout 0.05 in SFT). The update
//! `W + s·A·B` is never materialised in the forward; [`LoraLinear::merge`] folds it in for
//! inference.
//!
//! Adapters are PEFT-compatible both ways: `adapter_config.json` + `adapter_model.safetensors`
//! with PEFT's names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, A as
//! `[r, in]`, B as `[out, r]`).

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use og_fs::SplitMix64;
use og_weights::{ParamMut, SaveTensor, Weights};
use serde_json::{Value, json};

use crate::error::{LlmError, Result};
use crate::model::LlamaForCausalLM;

/// The projections LoRA can adapt (PEFT's `target_modules` names).
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Which projections get adapters, and how large.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// The paper's SFT adapters: r = 128, α = 256, dropout 0.05 on every projection.
    pub fn paper() -> Self {
        Self {
            r: 128,
            alpha: 256.0,
            dropout: 0.05,
            target_modules: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    fn validate(&self) -> Result<()> {
        if self.r == 0 || !self.alpha.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(LlmError::Config(format!(
                "LoRA needs r > 0, a finite alpha and dropout in [0, 1) (got r={}, alpha={}, dropout={})",
                self.r, self.alpha, self.dropout
            )));
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(LlmError::Config(format!(
                "LoRA target {t:?} is not one of {LORA_TARGETS:?}"
            )));
        }
        Ok(())
    }

    /// Reads PEFT's `adapter_config.json` (through the [`PeftAdapterConfig`] mirror).
    pub fn from_peft_json(value: &Value) -> Result<Self> {
        let bad = |m: String| LlmError::Config(format!("adapter_config.json: {m}"));
        let peft: PeftAdapterConfig = og_weights::mirror(value).map_err(bad)?;
        Self::try_from(peft).map_err(|e| match e {
            LlmError::Config(m) => bad(m),
            other => other,
        })
    }

    /// PEFT's `adapter_config.json` for this configuration.
    pub fn to_peft_json(&self, base_model: &str) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
        })
    }
}

/// The low-rank pair of one projection.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[in, r]` (PEFT stores its transpose as `lora_A.weight`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, out]` (PEFT: `lora_B.weight`, transposed), zero at initialisation.
    pub lora_b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    scale: f64,
}

/// A linear projection with an optional LoRA adapter; the base weights are frozen once an
/// adapter is attached.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub base: Linear<B>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> LoraLinear<B> {
    pub fn new(base: Linear<B>) -> Self {
        Self { base, lora: None }
    }

    /// # Shapes
    /// `[n, in]` → `[n, out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = og_kernels::linear(
            x.clone(),
            self.base.weight.val(),
            self.base.bias.as_ref().map(|b| b.val()),
        );
        match &self.lora {
            Some(l) => {
                let dropped = match host_dropout(x.clone(), l.dropout.prob) {
                    Some(d) => d,
                    None => l.dropout.forward(x),
                };
                y + dropped.matmul(l.lora_a.val()).matmul(l.lora_b.val()) * l.scale
            }
            None => y,
        }
    }

    /// Attaches a fresh adapter (A Kaiming-uniform as PEFT, B zero) and freezes the base.
    pub fn attach(self, cfg: &LoraConfig) -> Self {
        let [d_in, d_out] = self.base.weight.dims();
        let device = self.base.weight.device();
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            base: self.base.no_grad(),
            lora: Some(LoraAdapter {
                lora_a: Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init([d_in, cfg.r], &device),
                lora_b: Initializer::Zeros.init([cfg.r, d_out], &device),
                dropout: DropoutConfig::new(cfg.dropout).init(),
                scale: cfg.scale(),
            }),
        }
    }

    /// Folds `s·A·B` into `W` and drops the adapter (inference).
    pub fn merge(self) -> Self {
        match self.lora {
            None => self,
            Some(l) => {
                let delta = l.lora_a.val().matmul(l.lora_b.val()) * l.scale;
                let mut base = self.base;
                base.weight = Param::from_tensor(base.weight.val() + delta);
                Self { base, lora: None }
            }
        }
    }
}

std::thread_local! {
    /// The SplitMix64 state of this thread's dropout stream, when one is set.
    static DROPOUT_STREAM: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with LoRA dropout masks drawn on the host from a SplitMix64 stream seeded with
/// `seed`, on this thread only, instead of from the backend's RNG.
///
/// Burn backends keep one process-wide RNG, so replicas training on threads draw their masks
/// in scheduling order. A stream per thread (seeded, say, by step and micro-batch) makes
/// their draws independent of scheduling and of how micro-batches are dealt to replicas. The
/// masks are copied to the device, which is cheap on the CPU backends and costly on a GPU.
pub fn with_dropout_stream<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DROPOUT_STREAM.set(self.0);
        }
    }
    let _restore = Restore(DROPOUT_STREAM.replace(Some(seed)));
    f()
}

/// Inverted dropout of `x` with a mask from this thread's stream (`None` without a stream): an
/// element is kept, scaled by `1 / (1 − p)`, with probability `1 − p`. Like burn's `Dropout`,
/// it only acts while autodiff is enabled.
fn host_dropout<B: Backend>(x: Tensor<B, 2>, p: f64) -> Option<Tensor<B, 2>> {
    let mut rng = SplitMix64(DROPOUT_STREAM.get()?);
    let device = x.device();
    if p == 0.0 || !B::ad_enabled(&device) {
        return Some(x);
    }
    let [n, d] = x.dims();
    let scale = (1.0 / (1.0 - p)) as f32;
    // 24 random bits per element: a uniform on [0, 1) with f32's resolution.
    let threshold = (p * f64::from(1u32 << 24)).round() as u64;
    let mut mask = Vec::with_capacity(n * d + 1);
    while mask.len() < n * d {
        let r = rng.next_u64();
        for u in [(r >> 8) & 0xff_ffff, (r >> 40) & 0xff_ffff] {
            mask.push(if u >= threshold { scale } else { 0.0 });
        }
    }
    mask.truncate(n * d);
    DROPOUT_STREAM.set(Some(rng.0));
    let mask = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(mask, [n, d]), &device);
    Some(x * mask)
}

/// A decoder projection and its HF name.
pub type Visit<'a, B> = (String, &'a mut LoraLinear<B>);

/// Where PEFT puts the decoder layers (`layers.N…`) in an adapter's tensor names: made on a
/// Llama, on a transformers 5 / 4.x Llava, or on a LLaVA-1.5 `LlavaLlamaForCausalLM`.
const PEFT_LAYER_PREFIXES: &[&str] = &[
    "base_model.model.model.",
    "base_model.model.model.language_model.",
    "base_model.model.language_model.model.",
];

impl<B: Backend> LlamaForCausalLM<B> {
    /// Every adaptable projection with its PEFT module path (`model.layers.N.self_attn.q_proj`).
    /// Every projection of every decoder layer with its HF name (`model.layers.N.self_attn.q_proj`, …).
    pub fn projections(&mut self) -> Vec<Visit<'_, B>> {
        let mut v = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let p = format!("model.layers.{i}");
            v.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            v.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            v.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            v.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            v.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        v
    }

    /// Attaches fresh adapters to the configured projections and freezes every base weight
    /// (embeddings, norms and head included): only LoRA trains.
    pub fn with_lora(mut self, cfg: &LoraConfig) -> Result<Self> {
        cfg.validate()?;
        for (name, proj) in self.projections() {
            let target = name.rsplit('.').next().unwrap_or_default();
            // Module clones share tensor storage: this moves no weights.
            let current = proj.clone();
            *proj = if cfg.target_modules.iter().any(|t| t == target) {
                current.attach(cfg)
            } else {
                LoraLinear {
                    base: current.base.no_grad(),
                    lora: current.lora,
                }
            };
        }
        self.model.embed_tokens = self.model.embed_tokens.no_grad();
        self.model.norm = self.model.norm.no_grad();
        for layer in &mut self.model.layers {
            layer.input_layernorm = layer.input_layernorm.clone().no_grad();
            layer.post_attention_layernorm = layer.post_attention_layernorm.clone().no_grad();
        }
        self.lm_head = self.lm_head.map(|h| h.no_grad());
        Ok(self)
    }

    /// Loads a PEFT LoRA adapter directory (`adapter_config.json` and
    /// `adapter_model.safetensors`, or `adapter_model.bin` as older PEFT and the LLaVA trainers
    /// write it). The adapter may have been made on the bare Llama (`base_model.model.model.
    /// layers.*`) or on a LLaVA model (`…language_model…` layouts). A tensor of the adapter
    /// that no projection of this model takes (say, LoRA on a vision tower) is an error.
    pub fn load_peft_adapter(self, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("adapter_config.json");
        let text = og_fs::read_text(&cfg_path, og_fs::MAX_CONFIG_BYTES).map_err(|source| {
            LlmError::Io {
                path: cfg_path.clone(),
                source,
            }
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            LlmError::Config(format!("{}: malformed JSON: {e}", cfg_path.display()))
        })?;
        let cfg = LoraConfig::from_peft_json(&value)?;
        let file = ["adapter_model.safetensors", "adapter_model.bin"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .unwrap_or_else(|| dir.join("adapter_model.safetensors"));
        let weights = Weights::open(&file)?;
        let mut model = self.with_lora(&cfg)?;
        // Where the decoder layers sit in the adapter's names.
        let first = model
            .projections()
            .into_iter()
            .find(|(_, p)| p.lora.is_some())
            .map(|(n, _)| n.trim_start_matches("model.").to_string())
            .ok_or_else(|| LlmError::Config("adapter_config.json targets no projection".into()))?;
        let prefix = weights
            .detect_prefix(PEFT_LAYER_PREFIXES, &format!("{first}.lora_A.weight"))
            .ok_or_else(|| {
                LlmError::Config(format!(
                    "{}: no LoRA tensor for {first} under any of {PEFT_LAYER_PREFIXES:?}",
                    file.display()
                ))
            })?;
        let mut used = std::collections::HashSet::new();
        for (name, proj) in model.projections() {
            let Some(l) = proj.lora.as_mut() else {
                continue;
            };
            let [d_in, r] = l.lora_a.dims();
            let [_, d_out] = l.lora_b.dims();
            let device = l.lora_a.device();
            let layer = name.trim_start_matches("model.");
            let key = |m: &str| format!("{prefix}{layer}.{m}.weight");
            let a: Tensor<B, 2> = weights.tensor(&key("lora_A"), [r, d_in], &device)?;
            let b: Tensor<B, 2> = weights.tensor(&key("lora_B"), [d_out, r], &device)?;
            l.lora_a = Param::from_tensor(a.transpose());
            l.lora_b = Param::from_tensor(b.transpose());
            used.insert(key("lora_A"));
            used.insert(key("lora_B"));
        }
        let names = weights.names();
        let unused: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !used.contains(*n))
            .collect();
        if !unused.is_empty() {
            return Err(LlmError::Config(format!(
                "{}: {} of {} adapter tensors match no LoRA projection of this model \
                 (e.g. {:?}); target_modules in adapter_config.json may not cover them",
                file.display(),
                unused.len(),
                names.len(),
                &unused[..unused.len().min(3)]
            )));
        }
        Ok(model)
    }

    /// The adapters' name table: every LoRA A and B under its PEFT name
    /// (`base_model.model.{projection}.lora_A.weight`, the names [`Self::save_peft_adapter`]
    /// writes), layer by layer. Ours are stored transposed (`[in, r]`, `[r, out]`).
    pub fn lora_params_mut(&mut self) -> Vec<(String, ParamMut<'_, B>)> {
        let mut v = Vec::new();
        for (name, proj) in self.projections() {
            if let Some(l) = proj.lora.as_mut() {
                v.push((
                    format!("base_model.model.{name}.lora_A.weight"),
                    ParamMut::D2(&mut l.lora_a),
                ));
                v.push((
                    format!("base_model.model.{name}.lora_B.weight"),
                    ParamMut::D2(&mut l.lora_b),
                ));
            }
        }
        v
    }

    /// Writes the adapters as a PEFT adapter directory (created if needed).
    pub fn save_peft_adapter(
        &mut self,
        dir: impl AsRef<Path>,
        cfg: &LoraConfig,
        base_model: &str,
    ) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| LlmError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let tensors: Vec<SaveTensor> = self
            .lora_params_mut()
            .into_iter()
            .filter_map(|(name, p)| match p {
                ParamMut::D2(p) => Some(SaveTensor::from_tensor(name, p.val().transpose())),
                ParamMut::D1(_) => None,
            })
            .collect();
        if tensors.is_empty() {
            return Err(LlmError::Config(
                "the model has no LoRA adapters to save".into(),
            ));
        }
        og_weights::save_safetensors(dir.join("adapter_model.safetensors"), &tensors)?;
        let text = serde_json::to_string_pretty(&cfg.to_peft_json(base_model)).expect("json");
        let path = dir.join("adapter_config.json");
        std::fs::write(&path, text).map_err(|source| LlmError::Io { path, source })
    }

    /// Whether any projection carries a LoRA adapter.
    pub fn has_lora(&self) -> bool {
        self.model.layers.iter().any(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ]
            .iter()
            .any(|p| p.lora.is_some())
        })
    }

    /// Folds every adapter into its base weight (inference; no LoRA overhead afterwards).
    pub fn merge_lora(mut self) -> Self {
        for (_, proj) in self.projections() {
            *proj = proj.clone().merge();
        }
        self
    }
}

/// PEFT's `adapter_config.json` as it spells it (fields LoRA inference does not need are
/// ignored). Features this implementation does not have are refused in the [`TryFrom`] into
/// [`LoraConfig`], never silently dropped.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct PeftAdapterConfig {
    pub peft_type: Option<String>,
    pub r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub target_modules: Option<TargetModules>,
    pub bias: Option<String>,
    pub use_rslora: Option<bool>,
    pub use_dora: Option<bool>,
    pub fan_in_fan_out: Option<bool>,
    pub lora_bias: Option<bool>,
    pub rank_pattern: Option<serde_json::Map<String, Value>>,
    pub alpha_pattern: Option<serde_json::Map<String, Value>>,
}

/// `target_modules`: projection names, or PEFT's `"all-linear"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Keyword(String),
}

impl TryFrom<PeftAdapterConfig> for LoraConfig {
    type Error = LlmError;

    fn try_from(peft: PeftAdapterConfig) -> Result<Self> {
        let bad = |m: String| Err(LlmError::Config(m));
        if let Some(t) = &peft.peft_type
            && t != "LORA"
        {
            return bad(format!("peft_type {t} is not LORA"));
        }
        for (flag, what) in [
            (peft.use_rslora, "rsLoRA"),
            (peft.use_dora, "DoRA"),
            (peft.fan_in_fan_out, "fan_in_fan_out"),
            (peft.lora_bias, "LoRA bias"),
        ] {
            if flag == Some(true) {
                return bad(format!("{what} adapters are not supported"));
            }
        }
        for (name, pattern) in [
            ("rank_pattern", &peft.rank_pattern),
            ("alpha_pattern", &peft.alpha_pattern),
        ] {
            if pattern.as_ref().is_some_and(|p| !p.is_empty()) {
                return bad(format!("per-module {name} is not supported"));
            }
        }
        if let Some(b) = &peft.bias
            && b != "none"
        {
            return bad(format!("bias = {b:?} is not supported (none)"));
        }
        let Some(r) = peft.r else {
            return bad("missing r".into());
        };
        let target_modules = match peft.target_modules {
            Some(TargetModules::Names(names)) => names,
            Some(TargetModules::Keyword(k)) if k == "all-linear" => {
                LORA_TARGETS.iter().map(|s| s.to_string()).collect()
            }
            other => {
                return bad(format!(
                    "target_modules {other:?} is not a list of projection names"
                ));
            }
        };
        let cfg = Self {
            r,
            alpha: peft.lora_alpha.unwrap_or(8.0),
            dropout: peft.lora_dropout.unwrap_or(0.0),
            target_modules,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    /// A host dropout stream drops about `p` of the elements, scales the rest by `1/(1−p)`,
    /// draws the same masks from the same seed and other masks from another, acts only under
    /// autodiff, and leaves the thread without a stream afterwards.
    #[test]
    fn host_dropout_streams_are_seeded_and_scaled() {
        type A = Autodiff<NdArray<f32>>;
        let device = Default::default();
        let x = Tensor::<A, 2>::ones([64, 128], &device);
        let draw = |seed| {
            with_dropout_stream(seed, || host_dropout(x.clone(), 0.25).unwrap())
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let a = draw(1);
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        // Consecutive draws in one stream differ.
        let (first, second) = with_dropout_stream(1, || {
            (
                host_dropout(x.clone(), 0.25).unwrap().into_data(),
                host_dropout(x.clone(), 0.25).unwrap().into_data(),
            )
        });
        assert_ne!(first, second);
        assert!(host_dropout(x.clone(), 0.25).is_none());
        // Without autodiff (inference) nothing is dropped.
        let plain = Tensor::<NdArray<f32>, 2>::ones([4, 4], &device);
        let out = with_dropout_stream(1, || host_dropout(plain, 0.25).unwrap());
        assert!(
            out.into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| *v == 1.0)
        );
    }
}
