//! Shared by the CLI tests: a word-level `tokenizer.json` over a tiny model's 64 ids.

use std::path::Path;

/// Writes `tokenizer.json` into `dir` (see `og_llm::testing::word_tokenizer_json`); id 63 is
/// the special `<image>` when `image_token` is set.
pub fn write_word_tokenizer(dir: &Path, image_token: bool) {
    let json = og_llava::og_llm::testing::word_tokenizer_json(64, image_token.then_some(63));
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
}
