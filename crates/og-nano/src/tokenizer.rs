//! Step 1 of the experiment: a tokenizer trained on the world's text with the `tokenizers`
//! crate (word level: the world's vocabulary is closed), with Llama-3-style special tokens and
//! chat template, written as a model directory's `tokenizer.json` + `tokenizer_config.json`.

use std::path::Path;

use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, TokenizerBuilder,
};

use crate::world::WorldError;

/// Special tokens, in id order after `<pad>` (id 0, also the unknown token).
pub const SPECIAL: &[&str] = &[
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<image>",
];

/// Llama-3's chat layout over the special tokens above.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// Trains a word-level tokenizer on `lines` (plus the chat roles) and writes `tokenizer.json`
/// and `tokenizer_config.json` into `dir`. Returns the vocabulary size.
pub fn train_tokenizer(lines: &[String], dir: &Path) -> Result<usize, WorldError> {
    let fail = |m: String| WorldError::Write {
        path: dir.join("tokenizer.json"),
        message: m,
    };
    std::fs::create_dir_all(dir).map_err(|source| WorldError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let specials: Vec<AddedToken> = std::iter::once("<pad>")
        .chain(SPECIAL.iter().copied())
        .map(|t| AddedToken::from(t, true))
        .collect();
    let mut trainer = WordLevelTrainer::builder()
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(specials.clone())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(
            WordLevel::builder()
                .unk_token("<pad>".into())
                .build()
                .map_err(|e| fail(e.to_string()))?,
        )
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(Whitespace {}))
        .with_post_processor(None::<PostProcessorWrapper>)
        .with_decoder(None::<DecoderWrapper>)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let roles = ["user assistant system".to_string()];
    tokenizer
        .train(&mut trainer, lines.iter().chain(roles.iter()))
        .map_err(|e| fail(e.to_string()))?;
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| fail(e.to_string()))?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| fail(e.to_string()))?;
    let config = serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<pad>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 512,
    });
    let path = dir.join("tokenizer_config.json");
    og_segment::write_atomic(&path, config.to_string().as_bytes()).map_err(|e| {
        WorldError::Write {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    Ok(tokenizer.get_vocab_size(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use og_llava::og_llm::{ChatTokenizer, Message, Role};

    #[test]
    fn trained_tokenizer_encodes_the_world_without_unknowns() {
        let dir = tempfile::tempdir().unwrap();
        let lines = vec![
            "a large red circle and a small blue square. the red circle is left of the blue square.".to_string(),
            "what colour is the circle? red.".to_string(),
        ];
        let n = train_tokenizer(&lines, dir.path()).unwrap();
        let t = ChatTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(t.vocab_size(), n);
        assert_eq!(t.token_id("<pad>"), Some(0));
        let image = t.token_id("<image>").unwrap();
        let ids = t
            .encode("the red circle is left of the blue square.", false)
            .unwrap();
        assert!(!ids.contains(&0), "no unknown words: {ids:?}");
        let msgs = [
            Message::new(Role::User, "<image>\nwhat colour is the circle?"),
            Message::new(Role::Assistant, "red."),
        ];
        let tt = t.encode_chat_for_training(&msgs, image).unwrap();
        assert!(!tt.ids.contains(&0));
        assert_eq!(tt.ids[0], t.bos_id().unwrap());
        let supervised: Vec<u32> = tt
            .ids
            .iter()
            .zip(&tt.trainable)
            .filter(|p| *p.1)
            .map(|p| *p.0)
            .collect();
        assert_eq!(t.decode(&supervised, false).unwrap(), "red . <|eot_id|>");
        // Deterministic: the same text gives the same file.
        let again = tempfile::tempdir().unwrap();
        train_tokenizer(&lines, again.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("tokenizer.json")).unwrap(),
            std::fs::read(again.path().join("tokenizer.json")).unwrap()
        );
    }
}
