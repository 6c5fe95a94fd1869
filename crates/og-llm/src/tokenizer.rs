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

/// How a chat template that does not parse is reported.
const TEMPLATE_ERROR: &str = "chat template does not parse";
/// The start of errors about `tokenizer_config.json`'s chat settings.
const SETTINGS_ERROR: &str = "chat settings";

/// Llama-3's template (as its `tokenizer_config.json` ships it), used when none is given.
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Who speaks a chat turn: the roles chat templates know (`role` in their `messages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    /// The model's turns: what training supervises.
    Assistant,
}

impl Role {
    /// The role as chat templates spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
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

/// The chat settings of `tokenizer_config.json` as transformers writes them (other fields
/// are ignored).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct HfTokenizerConfig {
    pub chat_template: Option<ChatTemplates>,
    pub bos_token: Option<TokenSpec>,
    pub eos_token: Option<TokenSpec>,
}

/// `chat_template`: one template, or a list of named ones.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum ChatTemplates {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

/// A special token: its text, or an `AddedToken` object holding it as `content`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    Text(String),
    Added { content: String },
}

impl TokenSpec {
    fn into_text(self) -> String {
        match self {
            TokenSpec::Text(s) | TokenSpec::Added { content: s } => s,
        }
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
            let b = og_fs::read_text(&plain, og_fs::MAX_CONFIG_BYTES).map_err(|source| {
                LlmError::Io {
                    path: plain.clone(),
                    source,
                }
            })?;
            (plain, b.into_bytes())
        } else if gz.is_file() {
            let file = std::fs::File::open(&gz).map_err(|source| LlmError::Io {
                path: gz.clone(),
                source,
            })?;
            let mut b = Vec::new();
            // Bounded: a compressed file can expand without limit.
            flate2::read::GzDecoder::new(file)
                .take(og_fs::MAX_CONFIG_BYTES + 1)
                .read_to_end(&mut b)
                .map_err(|source| LlmError::Io {
                    path: gz.clone(),
                    source,
                })?;
            if b.len() as u64 > og_fs::MAX_CONFIG_BYTES {
                return Err(LlmError::Config(format!(
                    "{}: expands to over {} bytes",
                    gz.display(),
                    og_fs::MAX_CONFIG_BYTES
                )));
            }
            (gz, b)
        } else {
            return Err(LlmError::Config(format!(
                "{}: no tokenizer.json (or tokenizer.json.gz)",
                dir.display()
            )));
        };
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text =
                og_fs::read_text(&config_path, og_fs::MAX_CONFIG_BYTES).map_err(|source| {
                    LlmError::Io {
                        path: config_path.clone(),
                        source,
                    }
                })?;
            Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                LlmError::Config(format!("{}: malformed JSON: {e}", config_path.display()))
            })?)
        } else {
            None
        };
        Self::from_bytes(&bytes, config.as_ref()).map_err(|e| {
            // The template comes from tokenizer_config.json, everything else from tokenizer.json.
            let (file, message) = match e {
                LlmError::Config(m)
                    if m.starts_with(TEMPLATE_ERROR) || m.starts_with(SETTINGS_ERROR) =>
                {
                    (&config_path, m)
                }
                LlmError::Config(m) => (&path, m),
                other => (&path, other.to_string()),
            };
            LlmError::Config(format!("{}: {message}", file.display()))
        })
    }

    /// From `tokenizer.json` bytes and an optional `tokenizer_config.json` value.
    pub fn from_bytes(tokenizer_json: &[u8], config: Option<&Value>) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| LlmError::Config(format!("not a usable tokenizer.json: {e}")))?;
        let settings: HfTokenizerConfig = match config {
            Some(v) => og_weights::mirror(v)
                .map_err(|e| LlmError::Config(format!("{SETTINGS_ERROR}: {e}")))?,
            None => HfTokenizerConfig::default(),
        };
        let template = match settings.chat_template {
            Some(ChatTemplates::One(s)) => s,
            // A list of named templates: take "default".
            Some(ChatTemplates::Named(list)) => list
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template)
                .unwrap_or_else(|| LLAMA3_TEMPLATE.to_string()),
            None => LLAMA3_TEMPLATE.to_string(),
        };
        let bos_token = settings
            .bos_token
            .map(TokenSpec::into_text)
            .unwrap_or_else(|| "<|begin_of_text|>".into());
        let eos_token = settings
            .eos_token
            .map(TokenSpec::into_text)
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
            .map_err(|e| LlmError::Config(format!("{TEMPLATE_ERROR}: {e}")))?;
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

    /// [`ChatTokenizer::encode_chat`] as one id sequence, `image_token_id` where each image
    /// goes (what a multimodal model's prompt is).
    pub fn encode_chat_ids(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        image_token_id: u32,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for segment in self.encode_chat(messages, add_generation_prompt)? {
            match segment {
                Segment::Text(t) => ids.extend(t),
                Segment::Image(_) => ids.push(image_token_id),
            }
        }
        Ok(ids)
    }
}

/// End-of-turn markers of common chat templates, supervised after an answer.
pub const END_OF_TURN: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// A conversation tokenised for training: one id per position, the image token once per
/// `<image>`, and which positions are supervised (LLaVA's masking: only what the assistant says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingTokens {
    pub ids: Vec<u32>,
    /// True where the token is part of an assistant turn — its content and whatever the template
    /// writes after it up to the next turn (the end-of-turn token, so the model learns to stop).
    /// Prompts, system text, role headers and images are false.
    pub trainable: Vec<bool>,
}

impl TrainingTokens {
    /// Keeps what fits in `max_len` positions of the final sequence, where the k-th image
    /// token expands to `image_lens[k]` visual tokens, never cutting through an image: an image
    /// that would not fit entirely is dropped with everything after it. `None` when no
    /// supervised token remains (the example teaches nothing).
    pub fn truncated(
        mut self,
        max_len: usize,
        image_token_id: u32,
        image_lens: &[usize],
    ) -> Option<Self> {
        let mut used = 0;
        let mut keep = 0;
        let mut images = image_lens.iter();
        for &id in &self.ids {
            let width = if id == image_token_id {
                images.next().copied().unwrap_or(1)
            } else {
                1
            };
            if used + width > max_len {
                break;
            }
            used += width;
            keep += 1;
        }
        self.ids.truncate(keep);
        self.trainable.truncate(keep);
        self.trainable.iter().any(|&t| t).then_some(self)
    }
}

impl ChatTokenizer {
    /// Tokenises a whole conversation for training (see [`TrainingTokens`]). Turns of role
    /// `assistant` (or LLaVA's `gpt`) are supervised: their content as the template renders it
    /// and the end-of-turn token written right after it (the tokenizer's EOS or one of
    /// [`END_OF_TURN`]), so the model learns to stop. Each message's (trimmed) content is
    /// located in the rendering in order, so any template that writes contents verbatim works.
    pub fn encode_chat_for_training(
        &self,
        messages: &[Message],
        image_token_id: u32,
    ) -> Result<TrainingTokens> {
        let text = self.render(messages, false)?;
        // Supervised byte ranges of the rendered text.
        let mut spans = Vec::new();
        let mut cursor = 0;
        for (k, m) in messages.iter().enumerate() {
            let content = m.content.trim();
            let start = text[cursor..]
                .find(content)
                .map(|i| cursor + i)
                .ok_or_else(|| {
                    LlmError::Input(format!(
                        "turn {k} ({}) is not written verbatim by the chat template; cannot \
                         find its tokens",
                        m.role
                    ))
                })?;
            let mut end = start + content.len();
            if m.role == Role::Assistant {
                let rest = &text[end..];
                if let Some(t) = std::iter::once(self.eos_token.as_str())
                    .chain(END_OF_TURN.iter().copied())
                    .find(|t| !t.is_empty() && rest.starts_with(t))
                {
                    end += t.len();
                }
                spans.push(start..end);
            }
            cursor = end;
        }
        let mut ids = Vec::new();
        let mut trainable = Vec::new();
        let mut offset = 0;
        for (i, piece) in text.split(IMAGE_PLACEHOLDER).enumerate() {
            if i > 0 {
                ids.push(image_token_id);
                trainable.push(false);
                offset += IMAGE_PLACEHOLDER.len();
            }
            let enc = self
                .tokenizer
                .encode(piece, false)
                .map_err(|e| LlmError::Input(format!("cannot tokenise: {e}")))?;
            for (&id, &(start, _)) in enc.get_ids().iter().zip(enc.get_offsets()) {
                let at = offset + start;
                ids.push(id);
                trainable.push(spans.iter().any(|s| s.contains(&at)));
            }
            offset += piece.len();
        }
        // One BOS, as in `encode_chat`.
        if let Some(bos) = self.bos_id() {
            while ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
                trainable.remove(0);
            }
        }
        Ok(TrainingTokens { ids, trainable })
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
            Role::User,
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
        // Special tokens as text or AddedToken objects; anything else named.
        let added = serde_json::json!({"bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>", "chat_template": [{"name": "default", "template": "{{ 1 }}"}]});
        let t = ChatTokenizer::from_bytes(&tiny(), Some(&added)).unwrap();
        assert_eq!(
            (t.bos_token.as_str(), t.eos_token.as_str()),
            ("<s>", "</s>")
        );
        let wrong = serde_json::json!({"bos_token": 5});
        let e = ChatTokenizer::from_bytes(&tiny(), Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("bos_token"), "{e}");
    }

    #[test]
    fn only_assistant_turns_are_supervised() {
        // The real Llama-3 tokenizer and template.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tokenizers/llama3");
        let t = ChatTokenizer::from_dir(dir).unwrap();
        let image = 128_256; // outside the vocabulary, as llava-hf's added <image>
        let msgs = [
            Message::new(Role::User, "<image>\nWhat colour is the ball?"),
            Message::new(Role::Assistant, "Red."),
            Message::new(Role::User, "And the cube?"),
            Message::new(Role::Assistant, "Blue, mostly."),
        ];
        let tt = t.encode_chat_for_training(&msgs, image).unwrap();
        assert_eq!(tt.ids.len(), tt.trainable.len());
        assert_eq!(tt.ids.iter().filter(|&&i| i == image).count(), 1);
        assert_eq!(tt.ids[0], t.bos_id().unwrap());
        // Runs of supervised tokens, decoded: each answer with its end-of-turn token.
        let mut runs = Vec::new();
        let mut cur = Vec::new();
        for (&id, &s) in tt.ids.iter().zip(&tt.trainable) {
            if s {
                cur.push(id);
            } else if !cur.is_empty() {
                runs.push(t.decode(&std::mem::take(&mut cur), false).unwrap());
            }
        }
        if !cur.is_empty() {
            runs.push(t.decode(&cur, false).unwrap());
        }
        assert_eq!(runs, vec!["Red.<|eot_id|>", "Blue, mostly.<|eot_id|>"]);
        // The whole sequence is the template's rendering.
        let text: Vec<u32> = tt.ids.iter().copied().filter(|&i| i != image).collect();
        assert_eq!(
            t.decode(&text, false).unwrap(),
            t.render(&msgs, false).unwrap().replace("<image>", "")
        );

        // Truncation counts the image as its visual length and never cuts into it.
        let image_at = tt.ids.iter().position(|&i| i == image).unwrap();
        let whole = tt.clone().truncated(usize::MAX, image, &[576]).unwrap();
        assert_eq!(whole, tt);
        let n = tt.ids.len();
        let cut = tt.clone().truncated(n - 1 + 9, image, &[10]).unwrap();
        assert_eq!(
            cut.ids.len(),
            n - 1,
            "one position short: the last token goes"
        );
        // The image does not fit: it and everything after it go; nothing supervised is left.
        assert!(tt.clone().truncated(image_at + 5, image, &[10]).is_none());
    }
}
