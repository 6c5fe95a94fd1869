//! `og-llava serve` on the tiny Llava checkpoint, driven over real HTTP: completions (plain and
//! streamed, plain path, masks, a segmenter) equal `og-llava ask` token for token; concurrent
//! requests batched together equal the same requests one by one; stop strings cut; a client
//! that leaves cancels its sequence; every bad input gets its 4xx in OpenAI's error shape.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use og_segment::{Bitmap, CountsFormat, MaskSet};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn chelsea() -> PathBuf {
    root().join("images/chelsea.webp") // 451x300
}

/// Felzenszwalb's settings for both `ask` and the server.
const FELZENSZWALB: [&str; 6] = ["--scale", "300", "--sigma", "0.5", "--min-size", "400"];

/// A running server, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_og-llava"))
            .args(["serve", "--port", "0", "--context", "512", "--model"])
            .arg(model)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, url }
    }

    fn post(&self, body: &Value) -> (u16, Value) {
        match ureq::post(&format!("{}/v1/chat/completions", self.url)).send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
            Err(e) => panic!("{e}"),
        }
    }

    fn get(&self, path: &str) -> String {
        ureq::get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// A streamed completion: the chunks' JSON, `[DONE]` checked last.
    fn stream(&self, body: &Value) -> Vec<Value> {
        let mut body = body.clone();
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let r = ureq::post(&format!("{}/v1/chat/completions", self.url))
            .send_json(body)
            .unwrap();
        assert_eq!(r.content_type(), "text/event-stream");
        let lines: Vec<String> = BufReader::new(r.into_reader())
            .lines()
            .map(Result::unwrap)
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect();
        assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
        lines[..lines.len() - 1]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn data_url(path: &Path) -> String {
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("webp") => "image/webp",
        Some("png") => "image/png",
        _ => "image/jpeg",
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    format!("data:{mime};base64,{b64}")
}

/// One user turn: the image part (with `extra` fields), then the question.
fn request(model: &str, image: Value, question: &str, max_tokens: usize) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": [image, {"type": "text", "text": question}]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn image_part(url: &str, extra: Value) -> Value {
    let mut part = json!({"type": "image_url", "image_url": {"url": url}});
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            part[k] = v;
        }
    }
    part
}

/// `og-llava ask`'s answer (its stdout without the final newline).
fn ask(model: &Path, extra: &[&str], max_tokens: usize) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(["ask", "--context", "512", "--max-new-tokens"])
        .arg(max_tokens.to_string())
        .arg("--model")
        .arg(model)
        .arg("--image")
        .arg(chelsea())
        .args(extra)
        .arg("w5 w6")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

fn masks_file(dir: &Path) -> (PathBuf, Value) {
    let masks = MaskSet::from_bitmaps(&[
        Bitmap::from_fn(300, 451, |y, x| {
            (50..200).contains(&y) && (100..300).contains(&x)
        }),
        Bitmap::from_fn(300, 451, |y, x| y > 250 && x < 40),
    ])
    .unwrap();
    let path = dir.join("masks.json");
    masks
        .write_coco_json(&path, CountsFormat::Compressed)
        .unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, json)
}

fn content(response: &Value) -> String {
    response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The streamed text, checked against the stream's shape: a role chunk first, a finish reason
/// on the last content chunk, usage last.
fn streamed_text(chunks: &[Value], want_usage: &Value) -> String {
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let n = chunks.len();
    assert!(chunks[n - 2]["choices"][0]["finish_reason"].is_string());
    assert_eq!(&chunks[n - 1]["usage"], want_usage);
    chunks[..n - 1]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[test]
fn completions_equal_ask_and_batching_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let (masks_path, masks_json) = masks_file(dir.path());
    let mut flags = vec!["--max-batch", "8"];
    flags.extend(FELZENSZWALB);
    let server = Server::start(dir.path(), &flags);
    let models: Value = serde_json::from_str(&server.get("/v1/models")).unwrap();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let one: Value = serde_json::from_str(&server.get(&format!("/v1/models/{name}"))).unwrap();
    assert_eq!(one["id"], name.as_str());
    let url = data_url(&chelsea());
    let mut segmenter = vec!["--segmenter", "felzenszwalb"];
    segmenter.extend(FELZENSZWALB);
    let cases = [
        ("plain", json!({}), ask(dir.path(), &["--no-masks"], 12)),
        (
            "masks",
            json!({"masks": masks_json}),
            ask(dir.path(), &["--masks", masks_path.to_str().unwrap()], 12),
        ),
        (
            "segmenter",
            json!({"segmenter": "felzenszwalb"}),
            ask(dir.path(), &segmenter, 12),
        ),
    ];
    let bodies: Vec<Value> = cases
        .iter()
        .map(|(_, extra, _)| request(&name, image_part(&url, extra.clone()), "w5 w6", 12))
        .collect();
    for ((what, _, want), body) in cases.iter().zip(&bodies) {
        assert!(!want.is_empty(), "{what}: ask answered nothing");
        let (status, r) = server.post(body);
        assert_eq!(status, 200, "{what}: {r}");
        assert_eq!(&content(&r), want, "{what}");
        assert_eq!(r["object"], "chat.completion");
        let usage = &r["usage"];
        assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
        assert_eq!(&streamed_text(&server.stream(body), usage), want, "{what}");
    }
    // The OG path changes the prompt (groups instead of the patch grid).
    let plain_tokens = server.post(&bodies[0]).1["usage"]["prompt_tokens"].clone();
    assert_ne!(
        server.post(&bodies[1]).1["usage"]["prompt_tokens"],
        plain_tokens
    );

    // Twelve clients at once (sampled ones too, different lengths): each gets what it gets
    // alone.
    let mut mixed = Vec::new();
    for k in 0..12usize {
        let mut body = bodies[k % 3].clone();
        body["max_tokens"] = json!(4 + k);
        if k % 2 == 1 {
            body["temperature"] = json!(1.3);
            body["top_p"] = json!(0.9);
            body["seed"] = json!(k);
        }
        mixed.push(body);
    }
    let alone: Vec<Value> = mixed.iter().map(|b| server.post(b).1).collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = mixed.iter().map(|b| s.spawn(|| server.post(b).1)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(content(a), content(t), "request {k}");
        assert_eq!(a["usage"], t["usage"], "request {k}");
    }

    // A stop string ends the text before it and is not part of it.
    let full = content(&alone[11]);
    let words: Vec<&str> = full.split(' ').collect();
    assert!(words.len() > 2, "{full:?}");
    {
        let stop = format!(" {}", words[2]);
        let mut body = mixed[11].clone();
        body["stop"] = json!([stop]);
        let (status, r) = server.post(&body);
        assert_eq!(status, 200, "{r}");
        let cut = full.find(&stop).unwrap();
        assert_eq!(content(&r), full[..cut], "stop {stop:?}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
    }

    let metrics = server.get("/metrics");
    assert!(
        metrics.contains("og_llava_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("og_llava_time_to_first_token_seconds_count"));
    let health: Value = serde_json::from_str(&server.get("/health")).unwrap();
    assert_eq!(health["status"], "ok");
}

#[test]
fn a_client_that_leaves_cancels_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let server = Server::start(dir.path(), &[]);
    let name: Value = serde_json::from_str(&server.get("/v1/models")).unwrap();
    let mut body = request(
        name["data"][0]["id"].as_str().unwrap(),
        image_part(&data_url(&chelsea()), json!({})),
        "w5 w6",
        400,
    );
    // Long enough to be running when the client leaves (the tiny model ends its turn early).
    body["ignore_eos"] = json!(true);
    body["stream"] = json!(true);
    let r = ureq::post(&format!("{}/v1/chat/completions", server.url))
        .send_json(body)
        .unwrap();
    let mut reader = BufReader::new(r.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let metrics = server.get("/metrics");
        if metrics.contains("og_llava_cancelled_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sequence was not cancelled: {metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A small PNG (decodable, under any pixel limit).
fn small_png(dir: &Path, w: u32, h: u32) -> PathBuf {
    let path = dir.join(format!("small_{w}x{h}.png"));
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]))
        .save(&path)
        .unwrap();
    path
}

#[test]
fn bad_inputs_get_their_4xx_in_openai_shape() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let server = Server::start(dir.path(), &["--max-image-pixels", "100000"]);
    let models: Value = serde_json::from_str(&server.get("/v1/models")).unwrap();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let small = data_url(&small_png(dir.path(), 40, 30));
    let ok = request(&name, image_part(&small, json!({})), "w5 w6", 3);
    assert_eq!(server.post(&ok).0, 200);
    let (_, masks_451x300) = masks_file(dir.path());
    let long_question = "w5 ".repeat(600);
    let junk = base64::engine::general_purpose::STANDARD.encode(b"these bytes are no image");
    let mut unknown_model = ok.clone();
    unknown_model["model"] = json!("gpt-4o");
    let mut too_many_tokens = ok.clone();
    too_many_tokens["max_tokens"] = json!(10_000);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "bad base64",
            request(
                &name,
                image_part("data:image/png;base64,@@@@", json!({})),
                "w5",
                3,
            ),
            400,
            "invalid_image_url",
        ),
        (
            "undecodable image",
            request(
                &name,
                image_part(&format!("data:image/png;base64,{junk}"), json!({})),
                "w5",
                3,
            ),
            400,
            "invalid_image",
        ),
        (
            "image too large",
            request(&name, image_part(&data_url(&chelsea()), json!({})), "w5", 3),
            400,
            "image_too_large",
        ),
        (
            "masks of another size",
            request(
                &name,
                image_part(&small, json!({"masks": masks_451x300})),
                "w5",
                3,
            ),
            400,
            "invalid_masks",
        ),
        (
            "masks and a segmenter",
            request(
                &name,
                image_part(&small, json!({"masks": [], "segmenter": "felzenszwalb"})),
                "w5",
                3,
            ),
            400,
            "invalid_value",
        ),
        (
            "unknown segmenter",
            request(
                &name,
                image_part(&small, json!({"segmenter": "watershed"})),
                "w5",
                3,
            ),
            400,
            "invalid_value",
        ),
        (
            "sam2 without weights",
            request(
                &name,
                image_part(&small, json!({"segmenter": "sam2"})),
                "w5",
                3,
            ),
            400,
            "unsupported_value",
        ),
        (
            "http URL",
            request(
                &name,
                image_part("https://example.com/cat.png", json!({})),
                "w5",
                3,
            ),
            400,
            "invalid_image_url",
        ),
        (
            "file URL without --allow-local-files",
            request(
                &name,
                image_part(&format!("file://{}", chelsea().display()), json!({})),
                "w5",
                3,
            ),
            400,
            "invalid_image_url",
        ),
        (
            "prompt over the context",
            request(&name, image_part(&small, json!({})), &long_question, 3),
            400,
            "context_length_exceeded",
        ),
        (
            "max_tokens over the context",
            too_many_tokens,
            400,
            "context_length_exceeded",
        ),
        ("unknown model", unknown_model, 404, "model_not_found"),
        (
            "no messages",
            json!({"model": name, "messages": []}),
            400,
            "invalid_value",
        ),
        (
            "content of the wrong type",
            json!({"model": name, "messages": [{"role": "user", "content": 5}]}),
            400,
            "invalid_request_body",
        ),
        (
            "image placeholder in text",
            json!({"model": name, "messages": [{"role": "user", "content": "see <image>"}]}),
            400,
            "invalid_value",
        ),
        (
            "temperature out of range",
            json!({"model": name, "messages": [{"role": "user", "content": "w5"}], "temperature": 3}),
            400,
            "invalid_value",
        ),
    ];
    for (what, body, status, code) in cases {
        let (got, r) = server.post(&body);
        assert_eq!(got, status, "{what}: {r}");
        assert_eq!(r["error"]["code"], code, "{what}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(r["error"]["type"].is_string(), "{what}");
    }
    // Not JSON, and an unknown route.
    let raw = ureq::post(&format!("{}/v1/chat/completions", server.url))
        .set("Content-Type", "application/json")
        .send_string("{not json");
    let Err(ureq::Error::Status(400, r)) = raw else {
        panic!("malformed JSON accepted")
    };
    let r: Value = r.into_json().unwrap();
    assert_eq!(r["error"]["type"], "invalid_request_error");
    let Err(ureq::Error::Status(404, r)) =
        ureq::get(&format!("{}/v1/completions", server.url)).call()
    else {
        panic!("unknown route answered")
    };
    assert_eq!(
        r.into_json::<Value>().unwrap()["error"]["code"],
        "unknown_url"
    );
    let Err(ureq::Error::Status(404, r)) =
        ureq::get(&format!("{}/v1/models/gpt-4o", server.url)).call()
    else {
        panic!("an unknown model was described")
    };
    assert_eq!(
        r.into_json::<Value>().unwrap()["error"]["code"],
        "model_not_found"
    );
    // After all that, the server still answers.
    assert_eq!(server.post(&ok).0, 200);
}

#[test]
fn a_full_queue_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let server = Server::start(dir.path(), &["--max-batch", "1", "--max-queue", "1"]);
    let models: Value = serde_json::from_str(&server.get("/v1/models")).unwrap();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let mut body = request(
        &name,
        image_part(&data_url(&chelsea()), json!({})),
        "w5 w6",
        200,
    );
    // Each answer runs its 200 tokens, so the requests overlap.
    body["ignore_eos"] = json!(true);
    let statuses: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| server.post(&body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&Value> = statuses
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, r)| r)
        .collect();
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        !refused.is_empty(),
        "8 requests fit a queue of 1: {statuses:?}"
    );
    assert_eq!(refused[0]["error"]["code"], "rate_limit_exceeded");
    // Every answered one is whole.
    let answered: Vec<&Value> = statuses
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, r)| r)
        .collect();
    // At least the first; the engine may not have taken it before the others arrived.
    assert!(!answered.is_empty());
    assert!(answered.windows(2).all(|w| content(w[0]) == content(w[1])));
    assert!(
        answered
            .iter()
            .all(|r| r["usage"]["completion_tokens"] == 200
                && r["choices"][0]["finish_reason"] == "length"),
        "ignore_eos runs to max_tokens"
    );
}
