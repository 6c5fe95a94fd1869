//! Each benchmark's headline numbers as the benchmark defines them, with 95% intervals.
//!
//! - ARO: macro accuracy, the mean of per-relation (VG-R) or per-attribute-pair (VG-A)
//!   accuracies, next to plain accuracy.
//! - MME: per category `acc` (questions right, %) and `acc+` (images with both questions right,
//!   %), the category score `acc + acc+`, and the sums over the perception and cognition
//!   categories.
//! - MMVP: pair accuracy (both questions of a pair right).
//! - MMBench: circular accuracy over the circular copies a file carries (all copies right).
//! - CV-Bench: accuracy per source; 2D = mean of ADE20K and COCO, 3D = Omni3D, overall = mean
//!   of 2D and 3D.
//!
//! Intervals are Wilson score intervals for a proportion (z = 1.96).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::item::{Benchmark, Item};
use crate::protocol::Protocol;

/// The Wilson score interval of `correct / n` at 95%.
pub fn wilson(correct: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (z, n_f) = (1.96_f64, n as f64);
    let p = correct as f64 / n_f;
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt() / denom;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// Accuracy of one set of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub ci95: [f64; 2],
}

impl Share {
    pub fn of(correct: usize, n: usize) -> Share {
        Share {
            n,
            correct,
            accuracy: correct as f64 / n.max(1) as f64,
            ci95: wilson(correct, n),
        }
    }

    fn from_flags(flags: impl IntoIterator<Item = bool>) -> Share {
        let (mut c, mut n) = (0, 0);
        for f in flags {
            c += f as usize;
            n += 1;
        }
        Share::of(c, n)
    }
}

/// `results.json`: the contract other programs read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub benchmark: String,
    pub protocol: String,
    /// Number of items.
    pub n: usize,
    /// Fraction of items right (0..1).
    pub accuracy: f64,
    pub ci95: [f64; 2],
    /// The benchmark's own headline numbers.
    pub metrics: BTreeMap<String, f64>,
    pub by_category: BTreeMap<String, Share>,
    /// Items left out with `--skip-bad-rows` (malformed rows, unreadable images).
    #[serde(default)]
    pub skipped: usize,
}

impl Summary {
    /// The number Table 1 reports, and what it is: ARO VG-R/VG-A macro accuracy (where the
    /// file names relations or attributes), CV-Bench's overall, MME's perception score,
    /// MMBench's circular accuracy where the file carries circular copies, else accuracy;
    /// accuracies in %.
    pub fn headline(&self) -> (f64, &'static str) {
        let pct = |k: &str| self.metrics.get(k).map(|v| 100.0 * v);
        let named = |k: &'static str, label: &'static str| pct(k).map(|v| (v, label));
        match self.benchmark.as_str() {
            "aro-vgr" | "aro-vga" => named("macro_accuracy", "macro accuracy %"),
            "cvbench" => named("overall", "overall accuracy %"),
            "mme" => self
                .metrics
                .get("perception")
                .map(|&v| (v, "perception score")),
            "mmbench" => named("circular_accuracy", "circular accuracy %"),
            _ => None,
        }
        .unwrap_or((100.0 * self.accuracy, "accuracy %"))
    }
}

/// MME's perception categories (the rest are cognition).
pub const MME_PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];

/// Items grouped by a key, each group's flags.
fn groups<'a>(
    outcomes: &'a [(&'a Item, bool)],
    key: impl Fn(&Item) -> Option<String>,
) -> BTreeMap<String, Vec<bool>> {
    let mut g: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for (item, ok) in outcomes {
        if let Some(k) = key(item) {
            g.entry(k).or_default().push(*ok);
        }
    }
    g
}

/// Share of groups whose items are all right.
fn all_right(groups: &BTreeMap<String, Vec<bool>>) -> Share {
    Share::from_flags(groups.values().map(|v| v.iter().all(|&b| b)))
}

/// The summary of a benchmark's outcomes (each item with whether it was answered right).
pub fn summarize(bench: Benchmark, protocol: Protocol, outcomes: &[(&Item, bool)]) -> Summary {
    let all = Share::from_flags(outcomes.iter().map(|(_, ok)| *ok));
    let by_category: BTreeMap<String, Share> = groups(outcomes, |i| i.category.clone())
        .into_iter()
        .map(|(k, v)| (k, Share::from_flags(v)))
        .collect();
    let mut metrics = BTreeMap::new();
    metrics.insert("accuracy".to_string(), all.accuracy);
    match bench {
        b if b.is_aro() && !by_category.is_empty() => {
            let macro_acc =
                by_category.values().map(|s| s.accuracy).sum::<f64>() / by_category.len() as f64;
            metrics.insert("macro_accuracy".into(), macro_acc);
        }
        Benchmark::Mme => mme_scores(outcomes, &mut metrics),
        Benchmark::Mmvp => {
            metrics.insert(
                "pair_accuracy".into(),
                all_right(&groups(outcomes, |i| i.group.clone())).accuracy,
            );
        }
        Benchmark::MmBench => {
            let g = groups(outcomes, |i| i.group.clone());
            if g.values().any(|v| v.len() > 1) {
                metrics.insert("circular_accuracy".into(), all_right(&g).accuracy);
            }
        }
        Benchmark::CvBench => cvbench_scores(outcomes, &mut metrics),
        _ => {}
    }
    Summary {
        benchmark: bench.name().into(),
        protocol: protocol.name().into(),
        n: all.n,
        accuracy: all.accuracy,
        ci95: all.ci95,
        metrics,
        by_category,
        skipped: 0,
    }
}

/// MME: per category acc and acc+ (in %), their sum, and the perception / cognition totals.
fn mme_scores(outcomes: &[(&Item, bool)], metrics: &mut BTreeMap<String, f64>) {
    let mut categories: BTreeMap<String, Vec<(&Item, bool)>> = BTreeMap::new();
    for &(item, ok) in outcomes {
        categories
            .entry(item.category.clone().unwrap_or_default())
            .or_default()
            .push((item, ok));
    }
    let (mut perception, mut cognition) = (0.0, 0.0);
    for (cat, rows) in &categories {
        let acc = 100.0 * Share::from_flags(rows.iter().map(|(_, ok)| *ok)).accuracy;
        let acc_plus = 100.0 * all_right(&groups(rows, |i| i.group.clone())).accuracy;
        metrics.insert(format!("{cat}/acc"), acc);
        metrics.insert(format!("{cat}/acc+"), acc_plus);
        metrics.insert(format!("{cat}/score"), acc + acc_plus);
        if MME_PERCEPTION.contains(&cat.as_str()) {
            perception += acc + acc_plus;
        } else {
            cognition += acc + acc_plus;
        }
    }
    metrics.insert("perception".into(), perception);
    metrics.insert("cognition".into(), cognition);
    metrics.insert("total".into(), perception + cognition);
}

/// CV-Bench: accuracy per source, 2D (mean of ADE20K and COCO), 3D (Omni3D), overall.
fn cvbench_scores(outcomes: &[(&Item, bool)], metrics: &mut BTreeMap<String, f64>) {
    let by_source = groups(outcomes, |i| i.source.clone());
    let acc = |s: &str| {
        by_source
            .get(s)
            .map(|v| Share::from_flags(v.iter().copied()).accuracy)
    };
    for (k, v) in &by_source {
        metrics.insert(
            format!("accuracy_{}", k.to_lowercase()),
            Share::from_flags(v.iter().copied()).accuracy,
        );
    }
    let mean = |xs: &[Option<f64>]| {
        let v: Vec<f64> = xs.iter().flatten().copied().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let d2 = mean(&[acc("ADE20K"), acc("COCO")]);
    let d3 = acc("Omni3D");
    if let Some(x) = d2 {
        metrics.insert("accuracy_2d".into(), x);
    }
    if let Some(x) = d3 {
        metrics.insert("accuracy_3d".into(), x);
    }
    if let Some(x) = mean(&[d2, d3]) {
        metrics.insert("overall".into(), x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::ImageSource;

    fn item(bench: Benchmark, category: &str, group: &str, source: Option<&str>) -> Item {
        Item {
            bench,
            id: String::new(),
            category: Some(category.into()),
            image: ImageSource::File("x".into()),
            image_name: "x".into(),
            crop: None,
            question: String::new(),
            hint: None,
            prompt: None,
            options: vec!["Yes".into(), "No".into()],
            answer: 0,
            answer_text: None,
            group: Some(group.into()),
            source: source.map(str::to_string),
            split: None,
        }
    }

    #[test]
    fn wilson_matches_the_closed_form() {
        let [lo, hi] = wilson(8, 10);
        // Known values for 8/10 at 95%: [0.4902, 0.9433].
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), [0.0, 1.0]);
        let [lo, hi] = wilson(0, 20);
        assert!(lo == 0.0 && hi > 0.1 && hi < 0.2);
    }

    #[test]
    fn mme_scores_acc_and_acc_plus_per_category() {
        let a = item(Benchmark::Mme, "count", "1.png", None);
        let b = item(Benchmark::Mme, "count", "2.png", None);
        let c = item(Benchmark::Mme, "code_reasoning", "3.png", None);
        let outcomes = vec![
            (&a, true),
            (&a, true),
            (&b, true),
            (&b, false),
            (&c, false),
            (&c, true),
        ];
        let s = summarize(Benchmark::Mme, Protocol::Paper, &outcomes);
        assert_eq!(s.metrics["count/acc"], 75.0);
        assert_eq!(s.metrics["count/acc+"], 50.0);
        assert_eq!(s.metrics["perception"], 125.0);
        assert_eq!(s.metrics["cognition"], 50.0);
        assert_eq!(s.n, 6);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn aro_macro_mmvp_pairs_mmbench_circular_and_cvbench_sources() {
        let (r1, r2) = (
            item(Benchmark::AroVgr, "on", "", None),
            item(Benchmark::AroVgr, "under", "", None),
        );
        let s = summarize(
            Benchmark::AroVgr,
            Protocol::Paper,
            &[(&r1, true), (&r1, true), (&r1, true), (&r2, false)],
        );
        assert_eq!(s.metrics["macro_accuracy"], 0.5);
        assert_eq!(s.metrics["accuracy"], 0.75);
        let (p1, p2) = (
            item(Benchmark::Mmvp, "", "1", None),
            item(Benchmark::Mmvp, "", "2", None),
        );
        let s = summarize(
            Benchmark::Mmvp,
            Protocol::Paper,
            &[(&p1, true), (&p1, false), (&p2, true), (&p2, true)],
        );
        assert_eq!(s.metrics["pair_accuracy"], 0.5);
        let s = summarize(
            Benchmark::MmBench,
            Protocol::Paper,
            &[(&p1, true), (&p1, false), (&p2, true), (&p2, true)],
        );
        assert_eq!(s.metrics["circular_accuracy"], 0.5);
        let s = summarize(
            Benchmark::MmBench,
            Protocol::Paper,
            &[(&p1, true), (&p2, false)],
        );
        assert!(!s.metrics.contains_key("circular_accuracy"));
        let (ade, coco, omni) = (
            item(Benchmark::CvBench, "Count", "", Some("ADE20K")),
            item(Benchmark::CvBench, "Count", "", Some("COCO")),
            item(Benchmark::CvBench, "Depth", "", Some("Omni3D")),
        );
        let s = summarize(
            Benchmark::CvBench,
            Protocol::Paper,
            &[(&ade, true), (&coco, false), (&omni, true), (&omni, true)],
        );
        assert_eq!(s.metrics["accuracy_2d"], 0.5);
        assert_eq!(s.metrics["accuracy_3d"], 1.0);
        assert_eq!(s.metrics["overall"], 0.75);
        assert_eq!(s.by_category["Count"].n, 2);
    }
}
