//! The language side of OG-LLaVA: Llama 3, LoRA, tokenizer and chat template.
//!
//! Not yet implemented; the crate exists so the layering is visible (see README.md).
