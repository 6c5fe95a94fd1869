//! [`LlamaConfig`]: transformers' `LlamaConfig`, from `config.json` in either spelling —
//! older (`rope_theta` + `rope_scaling`) and newer (`rope_parameters`) — or from the
//! `text_config` of a `LlavaConfig`.

use std::path::Path;

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

    /// From a `config.json` value: a Llama config or a Llava config's `text_config`.
    pub fn from_hf_value(value: &Value) -> Result<Self> {
        let root = value
            .as_object()
            .ok_or_else(|| LlmError::Config("config.json is not a JSON object".into()))?;
        let obj = match root.get("text_config").and_then(Value::as_object) {
            Some(t) => t,
            None => root,
        };
        let bad = |m: String| LlmError::Config(m);
        if let Some(t) = obj.get("model_type").and_then(Value::as_str)
            && !["llama", "llava_llama"].contains(&t)
        {
            return Err(bad(format!(
                "model_type {t:?} is not a Llama decoder (llama, llava_llama)"
            )));
        }
        let usize_of = |k: &str, default: Option<usize>| -> Result<usize> {
            match obj.get(k) {
                Some(v) => v
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(format!("{k} is {v}, expected a non-negative integer"))),
                None => default.ok_or_else(|| bad(format!("missing {k}"))),
            }
        };
        let f64_of = |o: &serde_json::Map<String, Value>, k: &str, default: f64| -> Result<f64> {
            match o.get(k) {
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| bad(format!("{k} is {v}, expected a number"))),
                None => Ok(default),
            }
        };
        let bool_of =
            |k: &str, default: bool| obj.get(k).and_then(Value::as_bool).unwrap_or(default);
        let hidden = usize_of("hidden_size", Some(4096))?;
        let heads = usize_of("num_attention_heads", Some(32))?;
        if heads == 0 {
            return Err(bad("num_attention_heads is 0".into()));
        }
        let head_dim = match obj.get("head_dim") {
            Some(Value::Null) | None => hidden / heads,
            Some(_) => usize_of("head_dim", None)?,
        };
        // Rope: newer `rope_parameters` (holding rope_theta) or older rope_theta + rope_scaling.
        let empty = serde_json::Map::new();
        let (rope, theta) = match obj.get("rope_parameters").and_then(Value::as_object) {
            Some(p) => (p, f64_of(p, "rope_theta", 10_000.0)?),
            None => (
                obj.get("rope_scaling")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty),
                f64_of(obj, "rope_theta", 10_000.0)?,
            ),
        };
        let kind = rope
            .get("rope_type")
            .or_else(|| rope.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let max_pos = usize_of("max_position_embeddings", Some(2048))?;
        let rope_scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: f64_of(rope, "factor", 1.0)?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: f64_of(rope, "factor", 8.0)?,
                low_freq_factor: f64_of(rope, "low_freq_factor", 1.0)?,
                high_freq_factor: f64_of(rope, "high_freq_factor", 4.0)?,
                original_max_position_embeddings: f64_of(
                    rope,
                    "original_max_position_embeddings",
                    8192.0,
                )?,
            },
            other => {
                return Err(bad(format!(
                    "rope type {other:?} is not supported (default, linear, llama3)"
                )));
            }
        };
        let ids = |v: Option<&Value>| -> Vec<u32> {
            match v {
                Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|n| n as u32))
                    .collect(),
                _ => Vec::new(),
            }
        };
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(bad(format!("hidden_act {act:?} is not supported (silu)")));
        }
        let cfg = Self {
            vocab_size: usize_of("vocab_size", Some(32_000))?,
            hidden_size: hidden,
            intermediate_size: usize_of("intermediate_size", Some(11_008))?,
            num_hidden_layers: usize_of("num_hidden_layers", Some(32))?,
            num_attention_heads: heads,
            num_key_value_heads: match obj.get("num_key_value_heads") {
                Some(Value::Null) | None => heads,
                Some(_) => usize_of("num_key_value_heads", None)?,
            },
            head_dim,
            rms_norm_eps: f64_of(obj, "rms_norm_eps", 1e-6)?,
            rope_theta: theta,
            rope_scaling,
            max_position_embeddings: max_pos,
            attention_bias: bool_of("attention_bias", false),
            mlp_bias: bool_of("mlp_bias", false),
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .or_else(|| root.get("tie_word_embeddings"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: ids(obj.get("bos_token_id")).first().copied(),
            eos_token_ids: ids(obj.get("eos_token_id")),
        };
        cfg.validate()?;
        Ok(cfg)
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
