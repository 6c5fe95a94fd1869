//! LLaVA conversation data: parsing, masks, a deterministic order, and a threaded loader.
//!
//! A row is `{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value"}]}`
//! (single- or multi-turn; no image, one image path, or a list of paths matched in order to the
//! `<image>` placeholders). Masks for an image are looked up in
//! the mask folder as `<image path without extension>.json` (COCO RLE, one file per image) or
//! a folder `<image path without extension>/` of the released code's `mask_<k>.npy`; without a
//! mask folder every row takes the plain path, and an image without masks in it takes the plain
//! path only where `missing_masks = "plain"` says so. A bad row (missing or corrupt image, an
//! image without masks, malformed turn, masks of another size, nothing supervised after
//! truncation) is skipped and counted with its
//! reason, or stops the run when `fail_on_bad_rows` is set — never a panic.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use burn::tensor::TensorData;
use og_llava::og_fusion::{OgFusionConfig, Selection};
use og_llava::og_llm::{ChatTokenizer, Message, Role, TrainingTokens};
use og_llava::og_segment::MaskSet;
use og_llava::og_vision::{self, ImageProcessor};

use crate::error::{Result, TrainError, io};

/// One row of the conversation file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    /// In placeholder order.
    pub images: Vec<PathBuf>,
    pub messages: Vec<Message>,
}

/// Why a row is left out: the closed set of kinds [`BadRows`] counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRowKind {
    MalformedRow,
    MalformedTurn,
    MissingImage,
    CorruptImage,
    ImagePreprocessing,
    Segmentation,
    BadWindows,
    MissingMasks,
    MasksOfAnotherSize,
    BadMasks,
    TooLong,
}

impl BadRowKind {
    /// The kind in words: the key of [`BadRows::counts`] (and of `state.json`).
    pub fn name(self) -> &'static str {
        match self {
            BadRowKind::MalformedRow => "malformed row",
            BadRowKind::MalformedTurn => "malformed turn",
            BadRowKind::MissingImage => "missing image",
            BadRowKind::CorruptImage => "corrupt image",
            BadRowKind::ImagePreprocessing => "image preprocessing",
            BadRowKind::Segmentation => "segmentation",
            BadRowKind::BadWindows => "bad windows",
            BadRowKind::MissingMasks => "missing masks",
            BadRowKind::MasksOfAnotherSize => "masks of another size",
            BadRowKind::BadMasks => "bad masks",
            BadRowKind::TooLong => "too long",
        }
    }

    /// This kind with what exactly was wrong.
    pub fn because(self, detail: impl std::fmt::Display) -> BadRow {
        BadRow {
            kind: self,
            detail: detail.to_string(),
        }
    }
}

/// Why one row is left out: its kind and the particulars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub kind: BadRowKind,
    pub detail: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

/// Rows skipped, by kind (with up to 5 ids each).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BadRows {
    pub counts: BTreeMap<String, usize>,
    pub examples: BTreeMap<String, Vec<String>>,
}

impl BadRows {
    pub fn add(&mut self, id: &str, reason: &BadRow) {
        let kind = reason.kind.name().to_string();
        *self.counts.entry(kind.clone()).or_default() += 1;
        let ex = self.examples.entry(kind).or_default();
        if ex.len() < 5 {
            ex.push(format!("{id}: {reason}"));
        }
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// `3 missing image, 1 too long` (or `none`).
    pub fn summary(&self) -> String {
        if self.counts.is_empty() {
            return "none".into();
        }
        self.counts
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses a LLaVA conversation file. Structurally malformed rows are skipped into `bad`
/// (or fail the parse when `strict`); a file that is not a JSON array is an error.
pub fn read_rows(path: &Path, strict: bool, bad: &mut BadRows) -> Result<Vec<Row>> {
    let text = og_fs::read_text(path, og_fs::MAX_DATA_BYTES).map_err(io(path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| TrainError::Data {
        path: path.to_path_buf(),
        message: format!("malformed JSON: {e}"),
    })?;
    let items = value.as_array().ok_or_else(|| TrainError::Data {
        path: path.to_path_buf(),
        message: "not a JSON array of conversations".into(),
    })?;
    let mut rows = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match parse_row(item, i) {
            Ok(r) => rows.push(r),
            Err((id, reason)) => {
                if strict {
                    return Err(TrainError::Data {
                        path: path.to_path_buf(),
                        message: format!("row {i} ({id}): {reason}"),
                    });
                }
                bad.add(&id, &reason);
            }
        }
    }
    Ok(rows)
}

fn parse_row(item: &serde_json::Value, index: usize) -> std::result::Result<Row, (String, BadRow)> {
    let id = match item.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => format!("#{index}"),
    };
    let fail = |m: BadRow| (id.clone(), m);
    let images: Vec<PathBuf> = match item.get("image") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![PathBuf::from(s)],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(PathBuf::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                fail(BadRowKind::MalformedRow.because("\"image\" list holds a non-path"))
            })?,
        Some(_) => {
            return Err(fail(
                BadRowKind::MalformedRow.because("\"image\" is not a path"),
            ));
        }
    };
    let turns = item
        .get("conversations")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| fail(BadRowKind::MalformedRow.because("no \"conversations\" array")))?;
    let mut messages = Vec::with_capacity(turns.len());
    for (k, t) in turns.iter().enumerate() {
        let from = t.get("from").and_then(serde_json::Value::as_str);
        let value = t.get("value").and_then(serde_json::Value::as_str);
        let (Some(from), Some(value)) = (from, value) else {
            return Err(fail(
                BadRowKind::MalformedTurn
                    .because(format!("turn {k} needs \"from\" and \"value\" strings")),
            ));
        };
        let role = match from {
            "human" | "user" => Role::User,
            "gpt" | "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(fail(
                    BadRowKind::MalformedTurn
                        .because(format!("unknown role {other:?} in turn {k}")),
                ));
            }
        };
        messages.push(Message::new(role, value));
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err(fail(
            BadRowKind::MalformedRow.because("no gpt turn to learn from"),
        ));
    }
    let placeholders: usize = messages
        .iter()
        .map(|m| {
            m.content
                .matches(og_llava::og_llm::IMAGE_PLACEHOLDER)
                .count()
        })
        .sum();
    match (images.len(), placeholders) {
        (n, p) if n == p => {}
        (1, 0) => {
            // LLaVA puts the image first in the first human turn.
            if let Some(m) = messages.iter_mut().find(|m| m.role == Role::User) {
                m.content = format!("<image>\n{}", m.content);
            } else {
                return Err(fail(
                    BadRowKind::MalformedRow.because("an image but no human turn"),
                ));
            }
        }
        (n, p) => {
            return Err(fail(
                BadRowKind::MalformedRow
                    .because(format!("{p} <image> placeholder(s) for {n} image(s)")),
            ));
        }
    }
    Ok(Row {
        id,
        images,
        messages,
    })
}

/// Drops rows whose image is missing or not a readable image (its header is read, not the
/// pixels), so that the step count of a run is known before it starts. Rows whose pixels turn
/// out corrupt are still caught, later, by the loader.
pub fn check_images(
    rows: Vec<Row>,
    images: &Path,
    strict: bool,
    bad: &mut BadRows,
) -> std::result::Result<Vec<Row>, String> {
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let reason = row.images.iter().find_map(|rel| {
            let path = images.join(rel);
            if !path.is_file() {
                return Some(BadRowKind::MissingImage.because(path.display()));
            }
            image::ImageReader::open(&path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
                .err()
                .map(|e| BadRowKind::CorruptImage.because(format!("{}: {e}", path.display())))
        });
        match reason {
            Some(reason) if strict => return Err(format!("row {}: {reason}", row.id)),
            Some(reason) => bad.add(&row.id, &reason),
            None => kept.push(row),
        }
    }
    Ok(kept)
}

/// What the model needs for one example, on the host.
#[derive(Debug, Clone)]
pub struct Example {
    pub index: usize,
    pub id: String,
    pub tokens: TrainingTokens,
    /// The images left after truncation, in placeholder order: `pixel_values` `[1, 3, S, S]`
    /// and the groups (`None`: the plain grid).
    pub images: Vec<(TensorData, Option<Selection>)>,
    /// Positions after image expansion.
    pub length: usize,
}

/// Everything a loader thread needs to turn a row into an [`Example`].
pub struct Preparer {
    pub rows: Vec<Row>,
    pub images: PathBuf,
    pub masks: Option<PathBuf>,
    pub missing_masks: crate::config::MissingMasks,
    pub processor: ImageProcessor,
    pub tokenizer: ChatTokenizer,
    pub fusion: OgFusionConfig,
    pub selection: og_llava::og_fusion::SelectionConfig,
    /// Sliding windows instead of masks.
    pub windows: Option<og_llava::og_fusion::Windows>,
    /// Felzenszwalb segmentation of each image instead of the mask folder.
    pub felzenszwalb: Option<og_llava::og_segment::FelzenszwalbConfig>,
    /// SAM 2's automatic mask generator on each image instead of the mask folder (one model
    /// the loader threads take turns on).
    pub sam2: Option<og_llava::og_segment::SharedSegmenter>,
    pub image_token_id: u32,
    /// Patches per side of the encoder grid (the plain path has grid² visual tokens).
    pub grid: usize,
    pub model_max_length: usize,
}

impl Preparer {
    /// The example of row `index`, or the reason it is bad.
    pub fn prepare(&self, index: usize) -> std::result::Result<Example, BadRow> {
        let row = &self.rows[index];
        let mut images = Vec::with_capacity(row.images.len());
        let mut visual = Vec::with_capacity(row.images.len());
        for rel in &row.images {
            let path = self.images.join(rel);
            if !path.is_file() {
                return Err(BadRowKind::MissingImage.because(path.display()));
            }
            let image =
                og_vision::load_rgb(&path).map_err(|e| BadRowKind::CorruptImage.because(e))?;
            let (pixels, frame) = self
                .processor
                .pixel_data(&image)
                .map_err(|e| BadRowKind::ImagePreprocessing.because(e))?;
            let grid = self.grid;
            let (w, h) = (image.width() as usize, image.height() as usize);
            let masks = match (self.windows, &self.felzenszwalb, &self.sam2) {
                (Some(_), _, _) => None,
                (None, Some(cfg), _) => Some(
                    cfg.segment(image.as_raw(), w, h)
                        .map_err(|e| BadRowKind::Segmentation.because(e))?,
                ),
                (None, None, Some(sam)) => Some(
                    sam.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .segment(image.as_raw(), w, h)
                        .map_err(|e| BadRowKind::Segmentation.because(e))?,
                ),
                (None, None, None) => self.masks_for(rel)?,
            };
            let selection = match masks {
                None => self
                    .windows
                    .map(|w| Selection::from_windows((grid, grid), w))
                    .transpose()
                    .map_err(|e| BadRowKind::BadWindows.because(e))?,
                Some(m) => {
                    m.expect_size(image.width() as usize, image.height() as usize)
                        .map_err(|e| BadRowKind::MasksOfAnotherSize.because(e))?;
                    Some(
                        Selection::from_masks(&m, &frame, &self.selection)
                            .map_err(|e| BadRowKind::BadMasks.because(e))?,
                    )
                }
            };
            visual.push(match &selection {
                Some(s) => self.fusion.layout(s).len(),
                None => self.grid * self.grid,
            });
            images.push((pixels, selection));
        }
        let tokens = self
            .tokenizer
            .encode_chat_for_training(&row.messages, self.image_token_id)
            .map_err(|e| BadRowKind::MalformedTurn.because(e))?
            .truncated(self.model_max_length, self.image_token_id, &visual)
            .ok_or_else(|| {
                BadRowKind::TooLong.because("nothing supervised fits in model_max_length")
            })?;
        // Images cut away by truncation leave the example.
        let kept = tokens
            .ids
            .iter()
            .filter(|&&t| t == self.image_token_id)
            .count();
        images.truncate(kept);
        let length = tokens.ids.len()
            + visual[..kept]
                .iter()
                .map(|v| v.saturating_sub(1))
                .sum::<usize>();
        Ok(Example {
            index,
            id: row.id.clone(),
            tokens,
            images,
            length,
        })
    }

    fn masks_for(&self, rel: &Path) -> std::result::Result<Option<MaskSet>, BadRow> {
        let Some(dir) = &self.masks else {
            return Ok(None);
        };
        let stem = dir.join(rel).with_extension("");
        let json = stem.with_extension("json");
        if json.is_file() {
            return MaskSet::read_coco_json(&json)
                .map(Some)
                .map_err(|e| BadRowKind::BadMasks.because(e));
        }
        if stem.is_dir() {
            return og_llava::og_segment::npy::read_npy_folder(&stem)
                .map(Some)
                .map_err(|e| BadRowKind::BadMasks.because(e));
        }
        match self.missing_masks {
            crate::config::MissingMasks::Plain => Ok(None),
            crate::config::MissingMasks::BadRow => Err(BadRowKind::MissingMasks.because(format!(
                "{} (nor a folder {})",
                json.display(),
                stem.display()
            ))),
        }
    }
}

/// The seeded generator behind row orders (and the nano world).
pub use og_fs::SplitMix64;

/// The order of rows in `epoch`: a Fisher–Yates shuffle seeded by (seed, epoch); with
/// `group_by_length`, windows of `batch × 50` rows are sorted by a length estimate (longest
/// first) so batches hold similar lengths, and batches stay in shuffled order.
pub fn epoch_order(
    rows: &[Row],
    seed: u64,
    epoch: usize,
    batch: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ (epoch as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    if group_by_length {
        let estimate = |i: usize| -> usize {
            rows[i]
                .messages
                .iter()
                .map(|m| m.content.len())
                .sum::<usize>()
                + rows[i].images.len() * (1 << 20)
        };
        for window in order.chunks_mut(batch * 50) {
            window.sort_by_key(|&i| std::cmp::Reverse(estimate(i)));
        }
    }
    order
}

/// A prepared example, or (row id, reason) for a bad row.
pub type Prepared = std::result::Result<Example, (String, BadRow)>;

/// Prepares `order[start..]` on `workers` threads and yields the results in order (bad rows
/// as `Err((index, id, reason))`). At most `workers × 4` examples are prepared ahead.
pub struct Loader {
    rx: mpsc::Receiver<(usize, Prepared)>,
    pending: HashMap<usize, Prepared>,
    next: usize,
    end: usize,
    stop: Arc<AtomicUsize>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Loader {
    pub fn new(preparer: Arc<Preparer>, order: Vec<usize>, start: usize, workers: usize) -> Self {
        let end = order.len();
        let order = Arc::new(order);
        let cursor = Arc::new(AtomicUsize::new(start));
        let stop = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::sync_channel(workers.max(1) * 4);
        let handles = (0..workers.max(1))
            .map(|_| {
                let (tx, order, cursor, stop, prep) = (
                    tx.clone(),
                    order.clone(),
                    cursor.clone(),
                    stop.clone(),
                    preparer.clone(),
                );
                std::thread::spawn(move || {
                    loop {
                        if stop.load(Ordering::Relaxed) != 0 {
                            return;
                        }
                        let k = cursor.fetch_add(1, Ordering::Relaxed);
                        if k >= order.len() {
                            return;
                        }
                        let row = order[k];
                        let result = prep
                            .prepare(row)
                            .map_err(|reason| (prep.rows[row].id.clone(), reason));
                        if tx.send((k, result)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            rx,
            pending: HashMap::new(),
            next: start,
            end,
            stop,
            handles,
        }
    }

    /// Position in the epoch's order of the next item.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Iterator for Loader {
    type Item = Prepared;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            let (k, r) = self.rx.recv().ok()?;
            self.pending.insert(k, r);
        }
        let r = self.pending.remove(&self.next).expect("checked");
        self.next += 1;
        Some(r)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::Relaxed);
        // Unblock senders, then wait for the threads.
        while self.rx.try_recv().is_ok() {}
        for h in self.handles.drain(..) {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_bad_rows_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        std::fs::write(
            &path,
            r#"[
              {"id": "a", "image": "x.png", "conversations": [
                {"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A cat."}]},
              {"id": 7, "conversations": [
                {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye."}]},
              {"id": "b", "conversations": [{"from": "human", "value": "no answer"}]},
              {"id": "c", "conversations": [{"from": "robot", "value": "?"}, {"from": "gpt", "value": "!"}]},
              {"id": "d", "conversations": [{"from": "human", "value": "<image> but none"}, {"from": "gpt", "value": "x"}]},
              {"id": "e"}
            ]"#,
        )
        .unwrap();
        let mut bad = BadRows::default();
        let rows = read_rows(&path, false, &mut bad).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].messages[0].content, "<image>\nWhat is this?");
        assert_eq!(rows[1].id, "7");
        assert_eq!(bad.total(), 4);
        assert_eq!(bad.counts["malformed row"], 3);
        assert_eq!(bad.counts["malformed turn"], 1);
        let e = read_rows(&path, true, &mut BadRows::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2 (b)") && e.contains("data.json"), "{e}");
        std::fs::write(&path, "{}").unwrap();
        assert!(read_rows(&path, false, &mut bad).is_err());
    }

    #[test]
    fn orders_are_deterministic_permutations() {
        let rows: Vec<Row> = (0..100)
            .map(|i| Row {
                id: i.to_string(),
                images: Vec::new(),
                messages: vec![Message::new(Role::Assistant, "x".repeat(i))],
            })
            .collect();
        let a = epoch_order(&rows, 1, 0, 4, false);
        assert_eq!(a, epoch_order(&rows, 1, 0, 4, false));
        assert_ne!(a, epoch_order(&rows, 1, 1, 4, false));
        assert_ne!(a, epoch_order(&rows, 2, 0, 4, false));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let g = epoch_order(&rows, 1, 0, 1, true);
        assert!(
            g[..50].windows(2).all(|w| w[0] >= w[1]),
            "longest first in a window"
        );
    }
}
