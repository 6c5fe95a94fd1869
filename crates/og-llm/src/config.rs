//! [`LlamaConfig`]: transformers' `LlamaConfig`, from `config.json` in either spelling —
//! older (`rope_theta` + `rope_scaling`) and newer (`rope_parameters`) — or from the
//! `text_config` of a `LlavaConfig`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{LlmError, Result};

/// How RoPE frequencies are scaled (`rope_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise scaling of low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The decoder's hyper-parameters; names are transformers'.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head width; may differ from `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Generation stops on any of these (Llama 3: `<|end_of_text|>` and `<|eot_id|>`).
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    fn base(
        vocab: usize,
        hidden: usize,
        inter: usize,
        layers: usize,
        heads: usize,
        kv: usize,
    ) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
            max_position_embeddings: 131_072,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: true,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001, 128_008, 128_009],
        }
    }

    /// Llama-3.2-1B.
    pub fn llama_3_2_1b() -> Self {
        Self::base(128_256, 2048, 8192, 16, 32, 8)
    }

    /// Llama-3.2-3B (the paper's smaller LLM).
    pub fn llama_3_2_3b() -> Self {
        Self::base(128_256, 3072, 8192, 28, 24, 8)
    }

    /// Llama-3.1-8B (the paper's larger LLM).
    pub fn llama_3_1_8b() -> Self {
        Self {
            tie_word_embeddings: false,
            rope_scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
            ..Self::base(128_256, 4096, 14_336, 32, 32, 8)
        }
    }

    /// SmolLM2-135M's shape (a 135M-class Llama used by benchmarks).
    pub fn smollm2_135m() -> Self {
        Self {
            rope_theta: 100_000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 8192,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            ..Self::base(49_152, 576, 1536, 30, 9, 3)
        }
    }

    /// A tiny decoder for tests.
    pub fn tiny() -> Self {
        Self {
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 256,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            ..Self::base(64, 32, 48, 2, 4, 2)
        }
    }

    /// Checks the numbers describe a buildable decoder.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LlmError::Config(m));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 || self.head_dim == 0 {
            return bad("heads, key/value heads and head_dim must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        // Sizes are bounded before anything is allocated from them: every released Llama is
        // far inside these limits, a corrupt or hostile config.json is not.
        for (name, value, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1024),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("head_dim", self.head_dim, 4096),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ] {
            if value == 0 || value > max {
                return bad(format!("{name} is {value}: it must be in 1..={max}"));
            }
        }
        let mut positive = vec![
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ];
        match self.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => positive.push(("rope factor", factor)),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => positive.extend([
                ("rope factor", factor),
                ("rope low_freq_factor", low_freq_factor),
                ("rope high_freq_factor", high_freq_factor),
                (
                    "rope original_max_position_embeddings",
                    original_max_position_embeddings,
                ),
            ]),
        }
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} is {v}: it must be a positive number"));
            }
        }
        Ok(())
    }

    /// From a `config.json` value: a Llama config or a Llava config's `text_config` (read
    /// through the [`HfLlamaConfig`] mirror, then validated).
    pub fn from_hf_value(value: &Value) -> Result<Self> {
        if !value.is_object() {
            return Err(LlmError::Config("config.json is not a JSON object".into()));
        }
        let text = value.get("text_config").filter(|t| t.is_object());
        let mut hf: HfLlamaConfig =
            og_weights::mirror(text.unwrap_or(value)).map_err(LlmError::Config)?;
        if text.is_some() && hf.tie_word_embeddings.is_none() {
            hf.tie_word_embeddings = value.get("tie_word_embeddings").and_then(Value::as_bool);
        }
        Self::try_from(hf)
    }

    /// transformers' `config.json` for this configuration (newer `rope_parameters` spelling
    /// plus the older `rope_theta`, so both generations of transformers read it).
    pub fn to_hf_value(&self) -> Value {
        let mut rope = match self.rope_scaling {
            RopeScaling::Default => serde_json::json!({"rope_type": "default"}),
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({"rope_type": "llama3", "factor": factor,
                "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings as u64}),
        };
        rope["rope_theta"] = self.rope_theta.into();
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "torch_dtype": "float32",
        })
    }

    /// Reads `config.json` from a `save_pretrained` directory (or the file itself).
    pub fn from_hf_dir(path: impl AsRef<Path>) -> Result<Self> {
        let (file, value) = og_weights::read_config(path)?;
        Self::from_hf_value(&value)
            .map_err(|e| LlmError::Config(format!("{}: {e}", file.display())))
    }
}

/// transformers' `LlamaConfig` as `config.json` spells it: every field optional (absent ones
/// take transformers' defaults in the [`TryFrom`] into [`LlamaConfig`]), RoPE in either
/// spelling. Fields that do not concern the decoder are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HfLlamaConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub hidden_act: Option<String>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    /// Older spelling: scaling here, θ beside it.
    pub rope_scaling: Option<HfRope>,
    /// Newer spelling: scaling and θ together.
    pub rope_parameters: Option<HfRope>,
    pub max_position_embeddings: Option<usize>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
}

/// `rope_scaling` / `rope_parameters`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HfRope {
    pub rope_type: Option<String>,
    /// The oldest spelling of `rope_type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

/// A token id or a list of them (`eos_token_id` is either).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

impl TryFrom<HfRope> for RopeScaling {
    type Error = LlmError;

    fn try_from(rope: HfRope) -> Result<Self> {
        let kind = rope.rope_type.or(rope.kind);
        Ok(match kind.as_deref().unwrap_or("default") {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: rope.factor.unwrap_or(1.0),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: rope.factor.unwrap_or(8.0),
                low_freq_factor: rope.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: rope.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: rope
                    .original_max_position_embeddings
                    .unwrap_or(8192.0),
            },
            other => {
                return Err(LlmError::Config(format!(
                    "rope type {other:?} is not supported (default, linear, llama3)"
                )));
            }
        })
    }
}

impl TryFrom<HfLlamaConfig> for LlamaConfig {
    type Error = LlmError;

    /// transformers' defaults for absent fields, then [`LlamaConfig::validate`].
    fn try_from(hf: HfLlamaConfig) -> Result<Self> {
        let bad = |m: String| Err(LlmError::Config(m));
        if let Some(t) = &hf.model_type
            && !["llama", "llava_llama"].contains(&t.as_str())
        {
            return bad(format!(
                "model_type {t:?} is not a Llama decoder (llama, llava_llama)"
            ));
        }
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return bad(format!("hidden_act {act:?} is not supported (silu)"));
        }
        let hidden = hf.hidden_size.unwrap_or(4096);
        let heads = hf.num_attention_heads.unwrap_or(32);
        if heads == 0 {
            return bad("num_attention_heads is 0".into());
        }
        // θ sits inside `rope_parameters` (newer) or beside `rope_scaling` (older).
        let (rope, rope_theta) = match hf.rope_parameters {
            Some(p) => (p.clone(), p.rope_theta.unwrap_or(10_000.0)),
            None => (
                hf.rope_scaling.unwrap_or_default(),
                hf.rope_theta.unwrap_or(10_000.0),
            ),
        };
        let cfg = Self {
            vocab_size: hf.vocab_size.unwrap_or(32_000),
            hidden_size: hidden,
            intermediate_size: hf.intermediate_size.unwrap_or(11_008),
            num_hidden_layers: hf.num_hidden_layers.unwrap_or(32),
            num_attention_heads: heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(heads),
            head_dim: hf.head_dim.unwrap_or(hidden / heads),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling: RopeScaling::try_from(rope)?,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            attention_bias: hf.attention_bias.unwrap_or(false),
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: hf
                .bos_token_id
                .and_then(|ids| ids.into_vec().first().copied()),
            eos_token_ids: hf.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_numbers_are_refused_before_anything_is_built() {
        let base = serde_json::json!({"model_type": "llama", "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 10});
        assert!(LlamaConfig::from_hf_value(&base).is_ok());
        for (key, value, needle) in [
            ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
            ("rms_norm_eps", serde_json::json!(-1e-6), "rms_norm_eps"),
            ("rope_theta", serde_json::json!(0), "rope_theta"),
            (
                "num_hidden_layers",
                serde_json::json!(1_000_000_000_000u64),
                "num_hidden_layers",
            ),
            (
                "num_hidden_layers",
                serde_json::json!(0),
                "num_hidden_layers",
            ),
            (
                "intermediate_size",
                serde_json::json!(0),
                "intermediate_size",
            ),
            (
                "max_position_embeddings",
                serde_json::json!(0),
                "max_position_embeddings",
            ),
            ("vocab_size", serde_json::json!(1u64 << 40), "vocab_size"),
            ("model_type", serde_json::json!("gpt2"), "gpt2"),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "linear", "factor": 0}),
                "rope factor",
            ),
        ] {
            let mut v = base.clone();
            v[key] = value;
            let e = LlamaConfig::from_hf_value(&v).unwrap_err().to_string();
            assert!(e.contains(needle), "{key}: {e}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_field() {
        for (json, needle) in [
            (
                serde_json::json!({"hidden_size": "big", "num_attention_heads": 2}),
                "hidden_size",
            ),
            (
                serde_json::json!({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": -3}),
                "vocab_size",
            ),
            (
                serde_json::json!({"hidden_size": 8, "num_attention_heads": 2,
                    "rope_parameters": {"rope_type": "linear", "factor": "2"}}),
                "rope_parameters.factor",
            ),
            (
                serde_json::json!({"model_type": "llava", "text_config": {"hidden_size": 8,
                    "num_attention_heads": 2, "eos_token_id": "</s>"}}),
                "eos_token_id",
            ),
        ] {
            let e = LlamaConfig::from_hf_value(&json).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(LlamaConfig::from_hf_value(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn both_rope_spellings() {
        let new = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192},
            "eos_token_id": [128001, 128009]});
        let c = LlamaConfig::from_hf_value(&new).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Llama3 { factor: 8.0, .. }
        ));
        assert_eq!(c.eos_token_ids, vec![128001, 128009]);
        assert_eq!(c.num_key_value_heads, 2);
        let old = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2,
            "rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}});
        let c = LlamaConfig::from_hf_value(&old).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let llava = serde_json::json!({"model_type": "llava", "text_config": {"hidden_size": 8,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}});
        assert_eq!(
            LlamaConfig::from_hf_value(&llava)
                .unwrap()
                .num_key_value_heads,
            1
        );
        let bad = serde_json::json!({"hidden_size": 8, "num_attention_heads": 2,
            "rope_scaling": {"rope_type": "yarn"}});
        assert!(
            LlamaConfig::from_hf_value(&bad)
                .unwrap_err()
                .to_string()
                .contains("yarn")
        );
        let bad = serde_json::json!({"hidden_size": 8, "num_attention_heads": 3, "num_key_value_heads": 2});
        assert!(LlamaConfig::from_hf_value(&bad).is_err());
        assert_eq!(LlamaConfig::llama_3_2_3b().head_dim, 128);
    }
}
