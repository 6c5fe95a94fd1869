//! Shared by the CLI tests: a word-level `tokenizer.json` over a tiny model's 64 ids, and the
//! tiny Llava checkpoint with it.

use std::path::Path;

/// Writes `tokenizer.json` into `dir` (see `og_llm::testing::word_tokenizer_json`); id 63 is
/// the special `<image>` when `image_token` is set.
pub fn write_word_tokenizer(dir: &Path, image_token: bool) {
    let json = og_llava::og_llm::testing::word_tokenizer_json(64, image_token.then_some(63));
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
}

/// Writes the tiny Llava checkpoint (fixtures/vision/llava_tiny) into `dir` with the word-level
/// tokenizer and a chat template that concatenates the messages.
#[allow(dead_code)] // not every test file uses every helper
pub fn write_tiny_llava(dir: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vision/llava_tiny");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(f), dir.join(f)).unwrap();
    }
    write_word_tokenizer(dir, true);
    let cfg = serde_json::json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}
