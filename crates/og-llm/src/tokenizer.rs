//! Tokenizer and chat template: the `tokenizers` crate on a model's `tokenizer.json`, and the
//! Jinja `chat_template` of its `tokenizer_config.json` rendered with minijinja (Python string
//! methods via minijinja-contrib), so any HF model's template works; a built-in Llama-3
//! template when the config has none.
//!
//! The `<image>` placeholder is not text: [`ChatTokenizer::encode_chat`] splits the rendered
//! conversation there and returns text segments and image slots, for the visual tokens to be
//! spliced in. The rendered text is tokenised without adding special tokens, so the template's
//! `<|begin_of_text|>` is the only one (the released code produces two).

use std::io::Read;
use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value as JValue, context};
use serde_json::Value;

use crate::error::{LlmError, Result};

/// The image placeholder of LLaVA conversations.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Llama-3's template (as its `tokenizer_config.json` ships it), used when none is given.
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A piece of a tokenised conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(Vec<u32>),
    /// Where the n-th image's visual tokens go.
    Image(usize),
}

/// A model's tokenizer with its chat template and special tokens.
pub struct ChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ChatTokenizer {
    /// From a model directory: `tokenizer.json` (or `tokenizer.json.gz`) and, when present,
    /// `tokenizer_config.json` (chat template, BOS/EOS).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let plain = dir.join("tokenizer.json");
        let gz = dir.join("tokenizer.json.gz");
        let (path, bytes) = if plain.is_file() {
            let b = std::fs::read(&plain).map_err(|source| LlmError::Io {
                path: plain.clone(),
                source,
            })?;
            (plain, b)
        } else if gz.is_file() {
            let file = std::fs::File::open(&gz).map_err(|source| LlmError::Io {
                path: gz.clone(),
                source,
            })?;
            let mut b = Vec::new();
            flate2::read::GzDecoder::new(file)
                .read_to_end(&mut b)
                .map_err(|source| LlmError::Io {
                    path: gz.clone(),
                    source,
                })?;
            (gz, b)
        } else {
            return Err(LlmError::Config(format!(
                "{}: no tokenizer.json (or tokenizer.json.gz)",
                dir.display()
            )));
        };
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|source| LlmError::Io {
                path: config_path.clone(),
                source,
            })?;
            Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                LlmError::Config(format!("{}: malformed JSON: {e}", config_path.display()))
            })?)
        } else {
            None
        };
        Self::from_bytes(&bytes, config.as_ref())
            .map_err(|e| LlmError::Config(format!("{}: {e}", path.display())))
    }

    /// From `tokenizer.json` bytes and an optional `tokenizer_config.json` value.
    pub fn from_bytes(tokenizer_json: &[u8], config: Option<&Value>) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| LlmError::Config(format!("not a usable tokenizer.json: {e}")))?;
        let template = match config.and_then(|c| c.get("chat_template")) {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string)
                .unwrap_or_else(|| LLAMA3_TEMPLATE.to_string()),
            _ => LLAMA3_TEMPLATE.to_string(),
        };
        let bos_token = token_string(config.and_then(|c| c.get("bos_token")))
            .unwrap_or_else(|| "<|begin_of_text|>".into());
        let eos_token = token_string(config.and_then(|c| c.get("eos_token")))
            .unwrap_or_else(|| "<|end_of_text|>".into());
        let t = Self {
            tokenizer,
            template,
            bos_token,
            eos_token,
        };
        // Fail on a template that does not parse now rather than at the first chat.
        t.environment()?;
        Ok(t)
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<JValue, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.template)
            .map_err(|e| LlmError::Config(format!("chat template does not parse: {e}")))?;
        Ok(env)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a token string (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Ids of BOS and EOS as the tokenizer config names them.
    pub fn bos_id(&self) -> Option<u32> {
        self.token_id(&self.bos_token)
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.token_id(&self.eos_token)
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| LlmError::Input(format!("cannot tokenise: {e}")))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| LlmError::Input(format!("cannot decode: {e}")))
    }

    /// The conversation rendered by the chat template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let tmpl = env.get_template("chat").expect("added above");
        let messages: Vec<JValue> = messages
            .iter()
            .map(|m| {
                JValue::from_pairs([
                    ("role", JValue::from(m.role.as_str())),
                    ("content", JValue::from(m.content.as_str())),
                ])
            })
            .collect();
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(|e| LlmError::Input(format!("chat template: {e}")))
    }

    /// The rendered conversation as text segments and image slots (one per `<image>`), with
    /// exactly one BOS at the start when the template writes one.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let text = self.render(messages, add_generation_prompt)?;
        let mut segments = Vec::new();
        for (i, piece) in text.split(IMAGE_PLACEHOLDER).enumerate() {
            if i > 0 {
                segments.push(Segment::Image(i - 1));
            }
            let ids = self.encode(piece, false)?;
            if !ids.is_empty() {
                segments.push(Segment::Text(ids));
            }
        }
        // A template that writes BOS and a message that starts with one would give two.
        if let (Some(bos), Some(Segment::Text(first))) = (self.bos_id(), segments.first_mut()) {
            while first.len() >= 2 && first[0] == bos && first[1] == bos {
                first.remove(0);
            }
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal word-level tokenizer.json for unit tests.
    fn tiny() -> Vec<u8> {
        serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<|begin_of_text|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<|end_of_text|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<|begin_of_text|>": 0, "<|end_of_text|>": 1,
                      "<unk>": 2, "hello": 3, "world": 4, "<": 5, ">": 6, "image": 7},
                      "unk_token": "<unk>"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn segments_split_at_images_with_one_bos() {
        let cfg = serde_json::json!({"chat_template":
            "{{ bos_token }}{% for m in messages %}{{ m['content'].strip() }} {% endfor %}"});
        let t = ChatTokenizer::from_bytes(&tiny(), Some(&cfg)).unwrap();
        let msgs = [Message::new(
            "user",
            "  <|begin_of_text|>hello <image> world <image>",
        )];
        let segs = t.encode_chat(&msgs, false).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Text(vec![0, 3]),
                Segment::Image(0),
                Segment::Text(vec![4]),
                Segment::Image(1),
            ]
        );
        let bad = serde_json::json!({"chat_template": "{% for %}"});
        assert!(ChatTokenizer::from_bytes(&tiny(), Some(&bad)).is_err());
        let raising =
            serde_json::json!({"chat_template": "{{ raise_exception('no system role') }}"});
        let t = ChatTokenizer::from_bytes(&tiny(), Some(&raising)).unwrap();
        assert!(
            t.render(&msgs, true)
                .unwrap_err()
                .to_string()
                .contains("no system role")
        );
        assert!(ChatTokenizer::from_bytes(b"{}", None).is_err());
    }
}
