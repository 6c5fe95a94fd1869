//! A benchmark run into an output folder: `items.jsonl` grows one line per item as it is
//! answered (an interrupted run continues where it stopped), `results.json` is written from
//! all lines at the end.
//!
//! Files (a contract):
//! - `run.json`: `{"benchmark", "protocol", "masks"}`, so a folder is never resumed under other
//!   settings (a `run.json` without `masks` was written by a maskless run).
//! - `items.jsonl`: one [`Record`] per line: `{"id", "category", "gold", "prediction",
//!   "correct"}` plus `scores` (likelihood) or `generated` (paper, circular).
//! - `results.json`: the [`Summary`].

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::item::{Benchmark, Item};
use crate::metrics::{Summary, summarize};
use crate::protocol::Protocol;
use crate::score::{EvalError, Evaluator, Record};

/// What one run evaluates and where it writes.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub benchmark: Benchmark,
    pub protocol: Protocol,
    pub out: PathBuf,
    /// The first N items only.
    pub limit: Option<usize>,
    /// Overrides the benchmark's generation budget.
    pub max_new_tokens: Option<usize>,
    /// Leave out items whose image cannot be read (counted in `skipped`) instead of stopping.
    pub skip_bad_rows: bool,
    /// Rows the reader already left out as malformed (counted in `skipped`).
    pub skipped_rows: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    og_fs::write_atomic(path, bytes).map_err(io(path))
}

/// Checks (or writes) `run.json`: a folder holds one benchmark under one protocol and one
/// mask source (`masks`: [`crate::MaskMode::describe`]).
fn claim_folder(cfg: &RunConfig, masks: &serde_json::Value) -> Result<(), EvalError> {
    std::fs::create_dir_all(&cfg.out).map_err(io(&cfg.out))?;
    let path = cfg.out.join("run.json");
    let want = serde_json::json!({"benchmark": cfg.benchmark.name(),
                                  "protocol": cfg.protocol.name(), "masks": masks});
    if path.is_file() {
        let text = og_fs::read_text(&path, og_fs::MAX_CONFIG_BYTES).map_err(io(&path))?;
        let mut have: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EvalError::Format {
                path: path.clone(),
                message: format!("malformed JSON: {e}"),
            })?;
        if let Some(o) = have.as_object_mut() {
            o.entry("masks").or_insert_with(|| "none".into());
        }
        if have != want {
            return Err(EvalError::Usage(format!(
                "{} holds a run of {} (protocol {}, masks {}); give another --out for {} ({}, \
                 masks {masks})",
                cfg.out.display(),
                have["benchmark"],
                have["protocol"],
                have["masks"],
                cfg.benchmark,
                cfg.protocol
            )));
        }
        return Ok(());
    }
    write_atomic(
        &path,
        serde_json::to_string_pretty(&want)
            .expect("json")
            .as_bytes(),
    )
}

/// The records already in `items.jsonl`. A last line cut off by an interruption is dropped
/// (and the file truncated to the whole lines); a malformed whole line is an error.
pub fn read_records(path: &Path) -> Result<Vec<Record>, EvalError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = og_fs::read_text(path, og_fs::MAX_DATA_BYTES).map_err(io(path))?;
    let mut records = Vec::new();
    let mut whole = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break;
        }
        whole += line.len();
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line).map_err(|e| EvalError::Format {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", n + 1),
        })?;
        records.push(r);
    }
    if whole < text.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(whole as u64).map_err(io(path))?;
    }
    Ok(records)
}

/// Evaluates `items` (the first `limit`), skipping those already in `items.jsonl`, and writes
/// `results.json`. `progress(done, total)` is called after each item.
pub fn run_benchmark<B: Backend>(
    ev: &Evaluator<'_, B>,
    items: &[Item],
    cfg: &RunConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Summary, EvalError> {
    let items = &items[..cfg.limit.map_or(items.len(), |l| l.min(items.len()))];
    let mut seen = HashMap::new();
    for (k, item) in items.iter().enumerate() {
        if seen.insert(item.id.as_str(), k).is_some() {
            return Err(EvalError::Usage(format!(
                "{}: item id {:?} occurs twice",
                cfg.benchmark, item.id
            )));
        }
    }
    claim_folder(cfg, &ev.masks.describe())?;
    let path = cfg.out.join("items.jsonl");
    let mut done: HashMap<String, Record> = read_records(&path)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    let total = items.len();
    let mut count = items.iter().filter(|i| done.contains_key(&i.id)).count();
    let mut skipped = cfg.skipped_rows;
    progress(count, total);
    let pending: Vec<&Item> = items.iter().filter(|i| !done.contains_key(&i.id)).collect();
    for chunk in pending.chunks(ev.batch_size.max(1)) {
        for (item, answer) in
            chunk
                .iter()
                .zip(ev.answer_many(chunk, cfg.protocol, cfg.max_new_tokens))
        {
            let record = match answer {
                Ok(r) => r,
                Err(EvalError::Input { path, message }) if cfg.skip_bad_rows => {
                    eprintln!("skipped item {}: {}: {message}", item.id, path.display());
                    skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut line = serde_json::to_string(&record).expect("json");
            line.push('\n');
            file.write_all(line.as_bytes()).map_err(io(&path))?;
            file.flush().map_err(io(&path))?;
            done.insert(record.id.clone(), record);
            count += 1;
            progress(count, total);
        }
    }
    let mut summary = summarize_records(cfg, items, &done);
    summary.skipped = skipped;
    write_atomic(
        &cfg.out.join("results.json"),
        serde_json::to_string_pretty(&summary)
            .expect("json")
            .as_bytes(),
    )?;
    Ok(summary)
}

/// The summary of `items` from their records.
pub fn summarize_records(
    cfg: &RunConfig,
    items: &[Item],
    records: &HashMap<String, Record>,
) -> Summary {
    let outcomes: Vec<(&Item, bool)> = items
        .iter()
        .filter_map(|i| records.get(&i.id).map(|r| (i, r.correct)))
        .collect();
    summarize(cfg.benchmark, cfg.protocol, &outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_last_line_is_dropped_and_the_file_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("items.jsonl");
        let whole = r#"{"id":"1","category":null,"gold":"A","prediction":"A","correct":true}"#;
        std::fs::write(&p, format!("{whole}\n{{\"id\":\"2\",\"gold")).unwrap();
        let r = read_records(&p).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].correct);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{whole}\n"));
        std::fs::write(&p, "{\"id\": 3}\n").unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("items.jsonl"), "{e}");
    }

    #[test]
    fn a_folder_keeps_its_benchmark_protocol_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RunConfig {
            benchmark: Benchmark::Mmvp,
            protocol: Protocol::Paper,
            out: dir.path().join("run"),
            limit: None,
            max_new_tokens: None,
            skip_bad_rows: false,
            skipped_rows: 0,
        };
        let none = crate::MaskMode::None.describe();
        claim_folder(&cfg, &none).unwrap();
        claim_folder(&cfg, &none).unwrap();
        let folder = crate::MaskMode::Folder("masks".into()).describe();
        let e = claim_folder(&cfg, &folder).unwrap_err().to_string();
        assert!(e.contains("masks") && e.contains("another --out"), "{e}");
        cfg.protocol = Protocol::Circular;
        let e = claim_folder(&cfg, &none).unwrap_err().to_string();
        assert!(e.contains("mmvp") && e.contains("another --out"), "{e}");
        // A run.json from before masks were recorded reads as a maskless run.
        std::fs::write(
            cfg.out.join("run.json"),
            r#"{"benchmark": "mmvp", "protocol": "circular"}"#,
        )
        .unwrap();
        claim_folder(&cfg, &none).unwrap();
    }
}
