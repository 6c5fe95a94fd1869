//! A chat request made ready for the model, on the host: the conversation through the chat
//! template (an image part becomes the image placeholder, parts joined by newlines, as `ask`
//! writes `<image>\nquestion`), each image decoded and preprocessed, its masks read or made,
//! and Φ's groups selected. Every fault is an [`ApiError`] naming the part it is in.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use burn::tensor::TensorData;
use og_fusion::{Selection, SelectionConfig};
use og_llm::{ChatTokenizer, Message, Role, Sampling};
use og_segment::{Felzenszwalb, FelzenszwalbConfig, MaskSet, Segmenter, SharedSegmenter};
use og_vision::ImageProcessor;

use super::api::{ApiError, ChatRequest, Content, Part};
use crate::segment::SegmenterKind;

/// What the server knows of its model and inputs, shared by every request.
pub struct Served {
    /// The name clients address the model by.
    pub name: String,
    pub tokenizer: ChatTokenizer,
    pub processor: ImageProcessor,
    pub selection: SelectionConfig,
    pub image_token_id: u32,
    /// The longest sequence, prompt and completion together.
    pub context: usize,
    pub limits: Limits,
    pub segmenters: Segmenters,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Images with more pixels are refused before they are decoded.
    pub max_image_pixels: u64,
    /// `file://` image URLs are read (only for clients trusted with the server's files).
    pub allow_local_files: bool,
}

/// The segmenters image parts can ask for.
pub struct Segmenters {
    /// What an image part that gives neither masks nor a segmenter gets (`None`: the plain
    /// path).
    pub default: Option<SegmenterKind>,
    pub felzenszwalb: FelzenszwalbConfig,
    /// Loaded when the server was given SAM 2 weights.
    pub sam2: Option<SharedSegmenter>,
}

/// One image, preprocessed on the host.
pub struct HostImage {
    pub pixel_values: TensorData,
    pub selection: Option<Selection>,
}

/// A request ready for the engine.
pub struct Prompt {
    pub token_ids: Vec<u32>,
    pub images: Vec<HostImage>,
    pub sampling: Sampling,
    /// `max_tokens` as asked (`None`: up to the context).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Generate past end-of-turn tokens.
    pub ignore_eos: bool,
}

/// Checks the request's settings and builds its prompt (images decoded and segmented: call it
/// where blocking is fine).
pub fn build(request: ChatRequest, served: &Arc<Served>) -> Result<Prompt, ApiError> {
    if request.model != served.name {
        return Err(ApiError::unknown_model(&request.model, &served.name));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "only n = 1 is supported",
            Some("n"),
            "unsupported_value",
        ));
    }
    if request.logprobs == Some(true) {
        return Err(ApiError::invalid(
            "logprobs are not supported",
            Some("logprobs"),
            "unsupported_value",
        ));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid(
            "tools are not supported",
            Some("tools"),
            "unsupported_value",
        ));
    }
    if request.max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens must be at least 1",
            Some("max_tokens"),
            "invalid_value",
        ));
    }
    let stop = request.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty strings",
            Some("stop"),
            "invalid_value",
        ));
    }
    let sampling = sampling(request.temperature, request.top_p, request.seed)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages is empty",
            Some("messages"),
            "invalid_value",
        ));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    let mut images = Vec::new();
    for (i, m) in request.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}]: role `{other}` is not system, user or assistant"),
                    Some(&format!("messages[{i}].role")),
                    "invalid_value",
                ));
            }
        };
        let text = content(i, m.content, served, &mut images)?;
        messages.push(Message::new(role, text));
    }
    let token_ids = served
        .tokenizer
        .encode_chat_ids(&messages, true, served.image_token_id)
        .map_err(|e| {
            ApiError::invalid(
                format!("the chat template refused the messages: {e}"),
                Some("messages"),
                "invalid_value",
            )
        })?;
    Ok(Prompt {
        token_ids,
        images,
        sampling,
        max_tokens: request.max_tokens,
        stop,
        ignore_eos: request.ignore_eos,
    })
}

/// OpenAI's sampling: temperature 0 is greedy; otherwise nucleus sampling, seeded by `seed`
/// (or by the clock when none is given).
fn sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
) -> Result<Sampling, ApiError> {
    let temperature = temperature.unwrap_or(1.0);
    let top_p = top_p.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature {temperature} is not in [0, 2]"),
            Some("temperature"),
            "invalid_value",
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p {top_p} is not in (0, 1]"),
            Some("top_p"),
            "invalid_value",
        ));
    }
    if temperature == 0.0 {
        return Ok(Sampling::Greedy);
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    Ok(Sampling::TopP {
        temperature,
        top_p,
        seed,
    })
}

/// A message's text, image parts replaced by the placeholder (their images pushed to
/// `images`, in order).
fn content(
    i: usize,
    content: Option<Content>,
    served: &Served,
    images: &mut Vec<HostImage>,
) -> Result<String, ApiError> {
    let parts = match content {
        None => return Ok(String::new()),
        Some(Content::Text(t)) => return no_placeholder(t, &format!("messages[{i}].content")),
        Some(Content::Parts(parts)) => parts,
    };
    let mut pieces = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match part {
            Part::Text { text } => pieces.push(no_placeholder(text, &at)?),
            Part::ImageUrl {
                image_url,
                masks,
                segmenter,
            } => {
                let masks = masks.or(image_url.masks);
                let segmenter = segmenter.or(image_url.segmenter);
                images.push(image(&at, &image_url.url, masks, segmenter, served)?);
                pieces.push(og_llm::IMAGE_PLACEHOLDER.to_string());
            }
        }
    }
    Ok(pieces.join("\n"))
}

/// Text may not hold the placeholder: it would stand for an image the request does not have.
fn no_placeholder(text: String, at: &str) -> Result<String, ApiError> {
    if text.contains(og_llm::IMAGE_PLACEHOLDER) {
        return Err(ApiError::invalid(
            format!(
                "{at}: the text holds the literal {}, which stands for an image in prompts; \
                 send images as image_url parts",
                og_llm::IMAGE_PLACEHOLDER
            ),
            Some(at),
            "invalid_value",
        ));
    }
    Ok(text)
}

/// One image part: its bytes, decoded, preprocessed, with its groups when masks or a
/// segmenter put it on the OG path.
fn image(
    at: &str,
    url: &str,
    masks: Option<Vec<serde_json::Value>>,
    segmenter: Option<String>,
    served: &Served,
) -> Result<HostImage, ApiError> {
    let bytes = image_bytes(at, url, served.limits.allow_local_files)?;
    let rgb = decode(at, &bytes, served.limits.max_image_pixels)?;
    let (pixel_values, frame) = served
        .processor
        .pixel_data(&rgb)
        .map_err(|e| ApiError::invalid(format!("{at}: {e}"), Some(at), "invalid_image"))?;
    let masks = match (masks, segmenter) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                format!("{at}: give masks or a segmenter, not both"),
                Some(at),
                "invalid_value",
            ));
        }
        (Some(masks), None) => Some(read_masks(at, masks, &rgb)?),
        (None, Some(name)) => segment(at, &name, served, &rgb)?,
        (None, None) => match served.segmenters.default {
            Some(kind) => segment_with(at, kind, served, &rgb).map(Some)?,
            None => None,
        },
    };
    let selection = masks
        .map(|m| Selection::from_masks(&m, &frame, &served.selection))
        .transpose()
        .map_err(|e| {
            ApiError::invalid(
                format!("{at}.masks: {e}"),
                Some(&format!("{at}.masks")),
                "invalid_masks",
            )
        })?;
    Ok(HostImage {
        pixel_values,
        selection,
    })
}

/// The encoded image a URL holds: `data:` URLs (base64), and `file://` paths when the server
/// allows them.
fn image_bytes(at: &str, url: &str, allow_local_files: bool) -> Result<Vec<u8>, ApiError> {
    let param = format!("{at}.image_url.url");
    let bad =
        |m: String| ApiError::invalid(format!("{param}: {m}"), Some(&param), "invalid_image_url");
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((kind, payload)) = rest.split_once(',') else {
            return Err(bad("a data: URL needs a comma before its payload".into()));
        };
        if !kind.ends_with(";base64") {
            return Err(bad(format!(
                "the data: URL is `{kind}`: images must be base64 (data:image/png;base64,…)"
            )));
        }
        let payload: String = payload
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        return base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| bad(format!("the base64 payload does not decode: {e}")));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !allow_local_files {
            return Err(bad(
                "file:// URLs are off: send the image as a data: URL, or start the server with \
                 --allow-local-files"
                    .into(),
            ));
        }
        return std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")));
    }
    Err(bad(
        "this server does not fetch images: send them as data: URLs (base64 PNG, JPEG or WebP)"
            .into(),
    ))
}

/// Decodes an image, refusing one over the pixel limit before decoding it.
fn decode(at: &str, bytes: &[u8], max_pixels: u64) -> Result<og_vision::RgbImage, ApiError> {
    let invalid = |m: String| ApiError::invalid(format!("{at}: {m}"), Some(at), "invalid_image");
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(e.to_string()))?
        .into_dimensions()
        .map_err(|e| invalid(format!("not a decodable image: {e}")))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(ApiError::invalid(
            format!("{at}: the image is {w}×{h}, over this server's limit of {max_pixels} pixels"),
            Some(at),
            "image_too_large",
        ));
    }
    og_vision::decode_rgb(bytes, Path::new(at)).map_err(|e| invalid(e.to_string()))
}

/// Masks given inline: COCO RLE objects for this image's size.
fn read_masks(
    at: &str,
    masks: Vec<serde_json::Value>,
    image: &og_vision::RgbImage,
) -> Result<MaskSet, ApiError> {
    let param = format!("{at}.masks");
    let bad = |m: String| ApiError::invalid(format!("{param}: {m}"), Some(&param), "invalid_masks");
    let text = serde_json::Value::Array(masks).to_string();
    let masks = MaskSet::from_coco_json_str(&text, &param).map_err(|e| bad(e.to_string()))?;
    masks
        .expect_size(image.width() as usize, image.height() as usize)
        .map_err(|e| bad(e.to_string()))?;
    Ok(masks)
}

/// Masks from the segmenter a part names (`none`: the plain path).
fn segment(
    at: &str,
    name: &str,
    served: &Served,
    image: &og_vision::RgbImage,
) -> Result<Option<MaskSet>, ApiError> {
    if name == "none" {
        return Ok(None);
    }
    let kind = <SegmenterKind as clap::ValueEnum>::from_str(name, true).map_err(|_| {
        ApiError::invalid(
            format!("{at}.segmenter: `{name}` is not felzenszwalb, sam2 or none"),
            Some(&format!("{at}.segmenter")),
            "invalid_value",
        )
    })?;
    segment_with(at, kind, served, image).map(Some)
}

fn segment_with(
    at: &str,
    kind: SegmenterKind,
    served: &Served,
    image: &og_vision::RgbImage,
) -> Result<MaskSet, ApiError> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let failed = |e: og_segment::SegmentError| {
        ApiError::invalid(
            format!("{at}: segmentation failed: {e}"),
            Some(at),
            "invalid_image",
        )
    };
    match kind {
        SegmenterKind::Felzenszwalb => Felzenszwalb {
            config: served.segmenters.felzenszwalb,
        }
        .segment(image.as_raw(), w, h)
        .map_err(failed),
        SegmenterKind::Sam2 => {
            let Some(sam2) = &served.segmenters.sam2 else {
                return Err(ApiError::invalid(
                    format!(
                        "{at}.segmenter: this server has no SAM 2 weights (start it with --sam)"
                    ),
                    Some(&format!("{at}.segmenter")),
                    "unsupported_value",
                ));
            };
            let mut sam2 = sam2
                .lock()
                .map_err(|_| ApiError::server("SAM 2 failed on an earlier request"))?;
            sam2.segment(image.as_raw(), w, h).map_err(failed)
        }
    }
}
