//! The language side of OG-LLaVA: Llama (HF configs and checkpoints) with explicit position
//! ids, KV cache, generation and log-likelihood scoring.
//!
//! The model receives input embeddings and position ids; it knows nothing of masks. LoRA is
//! factorised and PEFT-compatible ([`LoraConfig`]). [`ChatTokenizer`] renders any HF chat
//! template and splits conversations at `<image>`.

mod config;
mod error;
mod generate;
mod load;
mod lora;
mod model;
pub mod rope;
pub mod testing;
mod tokenizer;

pub use config::{LlamaConfig, RopeScaling};
pub use error::{LlmError, Result};
pub use generate::{DecodeBatch, GenerationConfig, Sampling, Score};
pub use load::{DECODER_PREFIXES, HEAD_NAMES};
pub use lora::{LORA_TARGETS, LoraAdapter, LoraConfig, LoraLinear, with_dropout_stream};
pub use model::{
    KvCache, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMlp, LlamaModel,
};
pub use og_fs::SplitMix64;
pub use tokenizer::{
    ChatTokenizer, IMAGE_PLACEHOLDER, LLAMA3_TEMPLATE, Message, Role, Segment, TrainingTokens,
};
