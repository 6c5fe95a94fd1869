//! What training reports per optimiser step: `metrics.jsonl` (one [`Metrics`] line a step),
//! TensorBoard event files in `tensorboard/` (loss, learning rate per group, gradient norm,
//! tokens/s), and `loss.svg`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError, io};
use crate::tensorboard::EventWriter;

/// One metrics line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr_connector: f64,
    pub lr_lora: f64,
    pub grad_norm: f64,
    pub clip_coef: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Where the step's time went: waiting for the loader, forward (vision, connector, LLM,
    /// loss), backward, optimiser (clip + AdamW).
    #[serde(default)]
    pub data_s: f64,
    #[serde(default)]
    pub forward_s: f64,
    #[serde(default)]
    pub backward_s: f64,
    #[serde(default)]
    pub optimizer_s: f64,
}

/// The run's metrics outputs, written by the replica that writes files.
pub(crate) struct MetricsLog {
    path: PathBuf,
    jsonl: std::fs::File,
    events: EventWriter,
}

impl MetricsLog {
    /// Opens `out/metrics.jsonl` and a new event file in `out/tensorboard/`. A fresh run
    /// (`resumed_at` None) starts both from nothing; a resumed one drops the lines of steps
    /// after its checkpoint (work lost in the interruption); its new event file starts with a
    /// restart mark, so TensorBoard drops those steps of the earlier files.
    pub(crate) fn open(out: &Path, resumed_at: Option<usize>) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let board = out.join("tensorboard");
        match resumed_at {
            Some(step) => truncate_metrics(&path, step)?,
            None => {
                let _ = std::fs::remove_file(&path);
                remove_event_files(&board);
            }
        }
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut events = EventWriter::create(&board).map_err(io(&board))?;
        if let Some(step) = resumed_at {
            events
                .session_start(step as u64 + 1)
                .map_err(io(events.path()))?;
        }
        Ok(Self {
            path,
            jsonl,
            events,
        })
    }

    /// One step's line and scalars.
    pub(crate) fn record(&mut self, m: &Metrics) -> Result<()> {
        writeln!(self.jsonl, "{}", serde_json::to_string(m).expect("json"))
            .map_err(io(&self.path))?;
        self.events
            .scalars(
                m.step as u64,
                &[
                    ("loss", m.loss),
                    ("lr/connector", m.lr_connector),
                    ("lr/lora", m.lr_lora),
                    ("grad_norm", m.grad_norm),
                    ("tokens_per_s", m.tokens_per_s),
                ],
            )
            .map_err(io(self.events.path()))
    }
}

/// Removes the event files a previous run left in `dir` (nothing else in it).
fn remove_event_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Drops metrics lines of steps after `step` (they belong to work lost in the interruption).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<Metrics>(l).is_ok_and(|m| m.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(og_llava::og_segment::write_atomic(path, kept.as_bytes())?)
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(out: &Path) -> Result<Vec<Metrics>> {
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Data {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// `loss.svg`: the loss per step as a polyline with min/max labels.
pub fn write_loss_svg(out: &Path) -> Result<()> {
    let Ok(m) = read_metrics(out) else {
        return Ok(());
    };
    let pts: Vec<(f64, f64)> = m
        .iter()
        .filter(|x| x.loss.is_finite())
        .map(|x| (x.step as f64, x.loss))
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (w, h, pad) = (640.0, 360.0, 40.0);
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let yspan = (ymax - ymin).max(1e-9);
    let line: Vec<String> = pts
        .iter()
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                pad + (x / xmax) * (w - 2.0 * pad),
                h - pad - (y - ymin) / yspan * (h - 2.0 * pad)
            )
        })
        .collect();
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{pts}\"/>\n\
         <text x=\"{pad}\" y=\"{t}\">loss {ymax:.4}</text>\n\
         <text x=\"{pad}\" y=\"{bl}\">{ymin:.4}</text>\n\
         <text x=\"{r}\" y=\"{bl}\" text-anchor=\"end\">step {xmax}</text>\n</svg>\n",
        b = h - pad,
        r = w - pad,
        t = pad - 8.0,
        bl = h - pad + 16.0,
        pts = line.join(" ")
    );
    let path = out.join("loss.svg");
    Ok(og_llava::og_segment::write_atomic(&path, svg.as_bytes())?)
}
