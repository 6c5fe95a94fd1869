//! The OpenAI chat-completions wire format: requests as clients send them, responses and
//! stream chunks as the official clients read them, and errors in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request refused: its HTTP status and OpenAI error body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>, code: &'static str) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: Some(code),
        }
    }

    pub fn unknown_model(model: &str, served: &str) -> Self {
        Self {
            status: 404,
            message: format!("the model `{model}` does not exist; this server serves `{served}`"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self {
            status: 404,
            message: format!(
                "no route {path}: this server answers POST /v1/chat/completions, GET /v1/models, /health and /metrics"
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    pub fn queue_full(capacity: usize) -> Self {
        Self {
            status: 429,
            message: format!(
                "the server's queue is full ({capacity} requests waiting); retry later"
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    pub fn too_large(message: impl Into<String>, code: &'static str) -> Self {
        Self {
            status: 413,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    pub fn server(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("server_shutting_down"),
        }
    }

    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// `POST /v1/chat/completions` as sent. Fields this server does not act on are accepted and
/// ignored as OpenAI's API does, except those that would change the answer (`n` > 1, tools,
/// logprobs), which are refused.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `max_completion_tokens` is the newer spelling.
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub tools: Option<Value>,
    /// Generate past end-of-turn tokens until `max_tokens` (vLLM's extension, for load
    /// tests that need completions of a known length).
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, or a list of parts; `null` (an assistant turn with tool calls) is empty.
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part. An image part may carry this server's extensions: `masks` (COCO RLE
/// objects for the image, the OG path) or `segmenter` (`felzenszwalb`, `sam2`, or `none` for
/// the plain path), beside `image_url` or inside it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: ImageUrl,
        #[serde(default)]
        masks: Option<Vec<Value>>,
        #[serde(default)]
        segmenter: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default)]
    pub masks: Option<Vec<Value>>,
    #[serde(default)]
    pub segmenter: Option<String>,
}

/// Why a completion ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` (or the context) reached.
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// What every response and chunk of one completion shares.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Envelope {
    pub fn completion(&self, content: &str, finish: FinishReason, usage: Usage) -> Value {
        serde_json::json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
        })
    }

    /// A stream chunk: `delta` (role and/or content), the finish reason on the last one.
    pub fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    }

    /// The chunk after the last one when `stream_options.include_usage` asks for it.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        })
    }
}

/// The body as a request, or the OpenAI error naming what is wrong (the JSON path of a
/// field of the wrong type).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        ApiError::invalid(
            format!("malformed request body: {}", e.inner()),
            param,
            "invalid_request_body",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_the_official_client_sends_them() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"auto"},
                 "masks":[{"size":[2,2],"counts":[0,4]}]},
                {"type":"text","text":"what is this?"}]}],
            "stream":true,"stream_options":{"include_usage":true},
            "max_completion_tokens":5,"temperature":0,"stop":"\n","seed":7,"frequency_penalty":0}"#;
        let r = parse_request(body).unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert!(r.stream && r.stream_options.unwrap().include_usage);
        assert_eq!(r.stop.unwrap().into_vec(), vec!["\n".to_string()]);
        let Some(Content::Parts(parts)) = &r.messages[1].content else {
            panic!("parts")
        };
        assert!(matches!(&parts[0], Part::ImageUrl { masks: Some(m), .. } if m.len() == 1));
        assert!(matches!(&parts[1], Part::Text { text } if text == "what is this?"));
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let e = parse_request(br#"{"model":"m","messages":[{"role":"user","content":5}]}"#)
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }
}
