//! Load test of a running `og-llava serve`: many clients at once against the same requests
//! sent one by one. Reports requests lost, answers that differ from the one-by-one ones,
//! throughput (completion tokens per second) and latency percentiles.
//!
//! ```text
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 \
//!     --tasks WORLD/eval/tasks.jsonl --images WORLD/images --masks WORLD/masks \
//!     [--clients 32] [--requests 4] [--max-tokens 16] [--ignore-eos] [--skip-sequential]
//! ```
//!
//! `tasks.jsonl` rows name an `image` (relative to --images) and a `question`, as the nano
//! world writes them; with --masks each image part carries the image's COCO RLE masks
//! (`<name>.json` beside the image's relative path), the OG path. `scripts/serve_load.sh` runs
//! it against servers batching up to 32 sequences and one at a time.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

struct Args {
    url: String,
    tasks: PathBuf,
    images: PathBuf,
    masks: Option<PathBuf>,
    clients: usize,
    requests: usize,
    max_tokens: usize,
    sequential: bool,
    ignore_eos: bool,
}

fn args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        tasks: PathBuf::new(),
        images: PathBuf::new(),
        masks: None,
        clients: 32,
        requests: 4,
        max_tokens: 16,
        sequential: true,
        ignore_eos: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value(),
            "--tasks" => a.tasks = value().into(),
            "--images" => a.images = value().into(),
            "--masks" => a.masks = Some(value().into()),
            "--clients" => a.clients = value().parse().expect("--clients N"),
            "--requests" => a.requests = value().parse().expect("--requests N"),
            "--max-tokens" => a.max_tokens = value().parse().expect("--max-tokens N"),
            "--skip-sequential" => a.sequential = false,
            "--ignore-eos" => a.ignore_eos = true,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// The chat requests, one per task row, as many as the load needs.
fn requests(a: &Args, model: &str) -> Vec<Value> {
    let n = a.clients * a.requests;
    let file = std::fs::File::open(&a.tasks).expect("--tasks");
    let mut out = Vec::with_capacity(n);
    for line in std::io::BufReader::new(file).lines().take(n) {
        let row: Value = serde_json::from_str(&line.unwrap()).expect("a tasks.jsonl row");
        let image = row["image"].as_str().expect("image");
        let bytes = std::fs::read(a.images.join(image)).expect("the task's image");
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        let mut part = json!({"type": "image_url", "image_url": {"url": url}});
        if let Some(masks) = &a.masks {
            let path = masks.join(image).with_extension("json");
            let text = std::fs::read_to_string(&path).expect("the image's masks");
            part["masks"] = serde_json::from_str(&text).expect("masks JSON");
        }
        out.push(json!({
            "model": model,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": row["question"]}]}],
            "max_tokens": a.max_tokens,
            "temperature": 0,
            "ignore_eos": a.ignore_eos,
        }));
    }
    assert_eq!(
        out.len(),
        n,
        "{} has fewer than {n} rows",
        a.tasks.display()
    );
    out
}

/// One answer: its text and completion tokens, or what went wrong; and how long it took.
type Outcome = (Result<(String, u64), String>, Duration);

fn post(url: &str, body: &Value) -> Outcome {
    let t = Instant::now();
    let r = match ureq::post(&format!("{url}/v1/chat/completions")).send_json(body) {
        Ok(r) => r.into_json::<Value>().map_err(|e| e.to_string()).map(|v| {
            (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            )
        }),
        Err(e) => Err(e.to_string()),
    };
    (r, t.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}

/// Prints one pass's numbers; returns its throughput.
fn report(what: &str, outcomes: &[Outcome], wall: Duration) -> f64 {
    let tokens: u64 = outcomes
        .iter()
        .filter_map(|(r, _)| r.as_ref().ok().map(|(_, n)| n))
        .sum();
    let lost = outcomes.iter().filter(|(r, _)| r.is_err()).count();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let rate = tokens as f64 / wall.as_secs_f64();
    println!(
        "{what}: {} requests, {lost} lost, {tokens} tokens in {:.2} s = {rate:.1} tokens/s, \
         {:.2} requests/s; latency p50 {:.3} s, p99 {:.3} s",
        outcomes.len(),
        wall.as_secs_f64(),
        outcomes.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    for (r, _) in outcomes {
        if let Err(e) = r {
            println!("  lost: {e}");
        }
    }
    rate
}

fn main() {
    let a = args();
    let models: Value = ureq::get(&format!("{}/v1/models", a.url))
        .call()
        .expect("the server answers")
        .into_json()
        .unwrap();
    let model = models["data"][0]["id"].as_str().unwrap().to_string();
    let bodies = requests(&a, &model);
    let sequential: Option<Vec<Outcome>> = a.sequential.then(|| {
        let t = Instant::now();
        let out: Vec<Outcome> = bodies.iter().map(|b| post(&a.url, b)).collect();
        report("one by one", &out, t.elapsed());
        out
    });
    let t = Instant::now();
    let concurrent: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .chunks(a.requests)
            .map(|mine| {
                let url = &a.url;
                s.spawn(move || mine.iter().map(|b| post(url, b)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let wall = t.elapsed();
    report(
        &format!("{} clients × {} requests", a.clients, a.requests),
        &concurrent,
        wall,
    );
    if let Some(sequential) = sequential {
        let differ = sequential
            .iter()
            .zip(&concurrent)
            .filter(|((a, _), (b, _))| a.as_ref().ok() != b.as_ref().ok())
            .count();
        println!("answers that differ from the one-by-one ones: {differ}");
    }
}
