//! The tiny llava-hf checkpoint and a word-level chat tokenizer, shared by the tests that run
//! a model.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use og_eval::{Evaluator, MaskMode};
use og_llava::OgLlava;
use og_llava::og_llm::ChatTokenizer;
use og_llava::og_vision::ImageProcessor;

pub type B = NdArray<f32>;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The tiny llava-hf model (fixtures/vision/llava_tiny) and a 64-word tokenizer whose chat
/// template writes the messages' contents after BOS.
pub fn tiny_model_and_tokenizer(
    device: &burn::backend::ndarray::NdArrayDevice,
) -> (OgLlava<B>, ChatTokenizer) {
    let model =
        OgLlava::<B>::load_llava_hf(fixtures().join("vision/llava_tiny"), None, device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        og_llava::og_llm::testing::word_tokenizer_json(64, Some(63)),
    )
    .unwrap();
    let cfg = serde_json::json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"});
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tokenizer = ChatTokenizer::from_dir(dir.path()).unwrap();
    (model, tokenizer)
}

/// A maskless evaluator of `model` that stops at the tokenizer's EOS.
pub fn evaluator<'a>(
    model: &'a OgLlava<B>,
    tokenizer: &'a ChatTokenizer,
    processor: &'a ImageProcessor,
    batch_size: usize,
) -> Evaluator<'a, B> {
    Evaluator {
        model,
        tokenizer,
        processor,
        selection: Default::default(),
        masks: MaskMode::None,
        stop_ids: tokenizer.eos_id().into_iter().collect(),
        device: Default::default(),
        batch_size,
    }
}
