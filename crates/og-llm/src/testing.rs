//! Small helpers for tests and tiny models: a word-level `tokenizer.json`.

/// A word-level `tokenizer.json` over `vocab` ids: 0 `<pad>` (also the unknown token), 1
/// `<|begin_of_text|>`, 2 `<|end_of_text|>`, the rest `w<id>` — except `image`, which becomes
/// the special token `<image>`. Whitespace pre-tokenisation; no post-processor.
pub fn word_tokenizer_json(vocab: u32, image: Option<u32>) -> String {
    let mut words = serde_json::Map::new();
    for i in 0..vocab {
        let tok = match i {
            0 => "<pad>".to_string(),
            1 => "<|begin_of_text|>".to_string(),
            2 => "<|end_of_text|>".to_string(),
            i if Some(i) == image => "<image>".to_string(),
            _ => format!("w{i}"),
        };
        words.insert(tok, i.into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let mut added = vec![
        special(1, "<|begin_of_text|>"),
        special(2, "<|end_of_text|>"),
    ];
    if let Some(i) = image {
        added.push(special(i, "<image>"));
    }
    serde_json::json!({
        "version": "1.0", "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": words, "unk_token": "<pad>"}
    })
    .to_string()
}
