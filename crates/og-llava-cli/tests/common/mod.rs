//! Shared by the CLI tests: a word-level `tokenizer.json` over a tiny model's 64 ids.

use std::path::Path;

/// Writes `tokenizer.json` into `dir`: id 0 `<pad>`, 1 `<|begin_of_text|>`, 2
/// `<|end_of_text|>`, the rest `w<id>` — except id 63, which is the special `<image>` when
/// `image_token` is set.
pub fn write_word_tokenizer(dir: &Path, image_token: bool) {
    let mut vocab = serde_json::Map::new();
    for i in 0..64u32 {
        let tok = match i {
            0 => "<pad>".to_string(),
            1 => "<|begin_of_text|>".to_string(),
            2 => "<|end_of_text|>".to_string(),
            63 if image_token => "<image>".to_string(),
            _ => format!("w{i}"),
        };
        vocab.insert(tok, i.into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let mut added = vec![
        special(1, "<|begin_of_text|>"),
        special(2, "<|end_of_text|>"),
    ];
    if image_token {
        added.push(special(63, "<image>"));
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}
