//! The main table across seeds: every task against its chance level; per arm the mean over
//! seeds with a 95% interval; paired differences between each arm and the LLaVA baseline,
//! said in words.
//!
//! Intervals come from a bootstrap over the evaluation items, stratified by seed (each seed's
//! items resampled with replacement, 2000 times; the 2.5th and 97.5th percentiles of the mean
//! over seeds). They measure how much the numbers would move with other evaluation scenes,
//! not with other training seeds: the per-seed values are listed next to them for that.
//! Differences are paired: both arms are resampled on the same items.

use std::collections::BTreeMap;

use og_fs::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::experiment::{ArmResult, ExperimentReport};

/// Bootstrap resamples.
const RESAMPLES: usize = 2000;

/// One arm on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Mean accuracy over seeds (0..1).
    pub mean: f64,
    pub ci95: [f64; 2],
    /// Each seed's accuracy.
    pub seeds: Vec<f64>,
}

/// One task: its chance level and every arm's cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub chance: f64,
    pub arms: BTreeMap<String, Cell>,
}

/// `arm − baseline` on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub task: String,
    pub arm: String,
    pub baseline: String,
    /// Mean over seeds of the accuracy difference (−1..1).
    pub mean: f64,
    pub ci95: [f64; 2],
    /// The interval excludes zero.
    pub distinguishable: bool,
}

/// The summary block of `results.json` (a contract: see the README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub seeds: Vec<u64>,
    /// The arms in the order the experiment ran them (the baseline first).
    pub arms: Vec<String>,
    /// Held-out evaluation scenes, each arm in its own inference mode.
    pub tasks: BTreeMap<String, TaskRow>,
    /// The SFT question kinds on training scenes.
    pub fit: BTreeMap<String, TaskRow>,
    pub differences: Vec<Difference>,
    /// The differences in words.
    pub verdicts: Vec<String>,
    /// The linear probe of the frozen patch features, by object attribute.
    pub probe: BTreeMap<String, ProbeRow>,
}

/// One attribute of the probe over seeds (accuracies 0..1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// The majority class's share of the test objects (mean over seeds).
    pub chance: f64,
    pub train: f64,
    /// Mean test accuracy over seeds, and each seed's.
    pub test: f64,
    pub seeds: Vec<f64>,
    /// The tiny CLIP's object objective supervised this attribute in pre-training (its test
    /// accuracy then says the objective generalised to held-out scenes, not that contrastive
    /// learning found it).
    #[serde(default)]
    pub taught: bool,
}

fn probe_rows(reports: &[ExperimentReport]) -> BTreeMap<String, ProbeRow> {
    let mut rows: BTreeMap<String, Vec<&crate::probe::ProbeResult>> = BTreeMap::new();
    for r in reports {
        for (k, p) in &r.probe {
            rows.entry(k.clone()).or_default().push(p);
        }
    }
    rows.into_iter()
        .map(|(k, ps)| {
            let seeds: Vec<f64> = ps.iter().map(|p| p.test_accuracy).collect();
            let taught = reports.iter().any(|r| {
                r.config.clip_objects.is_active()
                    && r.config
                        .clip_objects
                        .attributes
                        .iter()
                        .any(|a| a.name() == k)
            });
            let row = ProbeRow {
                chance: mean(&ps.iter().map(|p| p.chance).collect::<Vec<_>>()),
                train: mean(&ps.iter().map(|p| p.train_accuracy).collect::<Vec<_>>()),
                test: mean(&seeds),
                seeds,
                taught,
            };
            (k, row)
        })
        .collect()
}

/// Benchmark-format sets and the task names they report under.
const BENCHMARK_TASKS: [(&str, &str); 4] = [
    ("aro-vgr", "aro-relation"),
    ("aro-vga", "aro-attribution"),
    ("aro-coco-order", "aro-order"),
    ("mmvp", "mmvp"),
];

/// Each arm's own-mode outcomes, per task name: (arm, task) → outcome vector.
fn outcomes(e: &ArmResult, fit: bool) -> BTreeMap<String, (String, Vec<bool>)> {
    let mut out = BTreeMap::new();
    if fit {
        for (k, v) in e.fit.iter().flat_map(|r| &r.outcomes) {
            out.insert(k.clone(), (k.clone(), v.clone()));
        }
        return out;
    }
    for (k, v) in e.tasks.iter().flat_map(|r| &r.outcomes) {
        out.insert(k.clone(), (k.clone(), v.clone()));
    }
    for (key, task) in BENCHMARK_TASKS {
        if let Some(v) = e.results.outcomes.get(key) {
            out.insert(task.to_string(), (key.to_string(), v.clone()));
        }
    }
    out
}

/// Per task, per arm: each seed's outcome vector; and each task's chance level.
type Table = BTreeMap<String, (f64, BTreeMap<String, Vec<Vec<bool>>>)>;

fn collect(reports: &[ExperimentReport], fit: bool) -> Table {
    let mut t: Table = BTreeMap::new();
    for r in reports {
        for e in r.evaluations.iter().filter(|e| e.tasks.is_some()) {
            for (task, (key, v)) in outcomes(e, fit) {
                let chance = r.chance.get(&key).copied().unwrap_or(f64::NAN);
                let row = t.entry(task).or_insert_with(|| (chance, BTreeMap::new()));
                row.1.entry(e.arm.clone()).or_default().push(v);
            }
        }
    }
    t
}

fn accuracy(v: &[bool]) -> f64 {
    v.iter().filter(|&&b| b).count() as f64 / v.len().max(1) as f64
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn percentiles(mut xs: Vec<f64>) -> [f64; 2] {
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((q * (xs.len() - 1) as f64).round() as usize).min(xs.len() - 1)];
    [at(0.025), at(0.975)]
}

/// The bootstrap interval of `stat` (a function of per-seed resampled index lists).
fn bootstrap(sizes: &[usize], seed: u64, stat: impl Fn(&[Vec<usize>]) -> f64) -> [f64; 2] {
    let mut rng = SplitMix64(seed);
    let draws: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let picks: Vec<Vec<usize>> = sizes
                .iter()
                .map(|&n| (0..n).map(|_| rng.below(n.max(1))).collect())
                .collect();
            stat(&picks)
        })
        .collect();
    percentiles(draws)
}

fn cell(per_seed: &[Vec<bool>], seed: u64) -> Cell {
    let seeds: Vec<f64> = per_seed.iter().map(|v| accuracy(v)).collect();
    let sizes: Vec<usize> = per_seed.iter().map(Vec::len).collect();
    let ci95 = bootstrap(&sizes, seed, |picks| {
        mean(
            &picks
                .iter()
                .zip(per_seed)
                .map(|(p, v)| p.iter().filter(|&&i| v[i]).count() as f64 / p.len().max(1) as f64)
                .collect::<Vec<_>>(),
        )
    });
    Cell {
        mean: mean(&seeds),
        ci95,
        seeds,
    }
}

fn difference(
    task: &str,
    arm: &str,
    base: &str,
    a: &[Vec<bool>],
    b: &[Vec<bool>],
) -> Option<Difference> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return None;
    }
    let per_seed: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| accuracy(x) - accuracy(y))
        .collect();
    let sizes: Vec<usize> = a.iter().map(Vec::len).collect();
    let ci95 = bootstrap(&sizes, 0xd1ff, |picks| {
        mean(
            &picks
                .iter()
                .zip(a.iter().zip(b))
                .map(|(p, (x, y))| {
                    let n = p.len().max(1) as f64;
                    (p.iter().filter(|&&i| x[i]).count() as f64
                        - p.iter().filter(|&&i| y[i]).count() as f64)
                        / n
                })
                .collect::<Vec<_>>(),
        )
    });
    Some(Difference {
        task: task.into(),
        arm: arm.into(),
        baseline: base.into(),
        mean: mean(&per_seed),
        ci95,
        distinguishable: ci95[0] > 0.0 || ci95[1] < 0.0,
    })
}

fn rows(t: &Table) -> BTreeMap<String, TaskRow> {
    t.iter()
        .map(|(task, (chance, arms))| {
            let cells = arms
                .iter()
                .enumerate()
                .map(|(k, (arm, v))| (arm.clone(), cell(v, 0x5eed + k as u64)))
                .collect();
            (
                task.clone(),
                TaskRow {
                    chance: *chance,
                    arms: cells,
                },
            )
        })
        .collect()
}

/// The summary of runs that differ only in their seed; `baseline` is the arm every other arm
/// is compared with.
pub fn summarize(reports: &[ExperimentReport], baseline: &str) -> Summary {
    let held = collect(reports, false);
    let mut differences = Vec::new();
    for (task, (_, arms)) in &held {
        let Some(base) = arms.get(baseline) else {
            continue;
        };
        for (arm, v) in arms.iter().filter(|(a, _)| a.as_str() != baseline) {
            differences.extend(difference(task, arm, baseline, v, base));
        }
    }
    let verdicts = differences
        .iter()
        .map(|d| {
            let pts = |x: f64| format!("{:+.1}", 100.0 * x);
            let call = if !d.distinguishable {
                "not distinguishable from noise".to_string()
            } else if d.mean > 0.0 {
                format!("{} is better", d.arm)
            } else {
                format!("{} is better", d.baseline)
            };
            format!(
                "{} − {} on {}: {} points (95% CI {} to {}): {call}.",
                d.arm,
                d.baseline,
                d.task,
                pts(d.mean),
                pts(d.ci95[0]),
                pts(d.ci95[1])
            )
        })
        .collect();
    Summary {
        seeds: reports.iter().map(|r| r.config.seed).collect(),
        arms: reports
            .first()
            .map(|r| r.arms.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default(),
        tasks: rows(&held),
        fit: rows(&collect(reports, true)),
        differences,
        verdicts,
        probe: probe_rows(reports),
    }
}

/// The tasks where no arm but `blind` has its interval above chance.
pub fn unlearned(s: &Summary, blind: &str) -> Vec<String> {
    s.tasks
        .iter()
        .filter(|(_, row)| {
            !row.arms
                .iter()
                .any(|(arm, c)| arm != blind && c.ci95[0] > row.chance)
        })
        .map(|(t, _)| t.clone())
        .collect()
}

/// The summary as a plain-text table (accuracy %, interval, chance).
pub fn text_table(s: &Summary) -> String {
    let arms = &s.arms;
    // Every column as wide as the longest arm name or interval, and two spaces between.
    let width = arms
        .iter()
        .map(|a| a.chars().count())
        .max()
        .unwrap_or(0)
        .max(22)
        + 2;
    let mut out = format!(
        "{:<18}{:>8}",
        format!("task ({} seeds)", s.seeds.len()),
        "chance"
    );
    for a in arms {
        out += &format!("{a:>width$}");
    }
    out += "\n";
    for (task, row) in &s.tasks {
        out += &format!("{task:<18}{:>8.1}", 100.0 * row.chance);
        for a in arms {
            out += &match row.arms.get(a) {
                Some(c) => format!(
                    "{:>width$}",
                    format!(
                        "{:.1} [{:.1}, {:.1}]",
                        100.0 * c.mean,
                        100.0 * c.ci95[0],
                        100.0 * c.ci95[1]
                    )
                ),
                None => format!("{:>width$}", "-"),
            };
        }
        out += "\n";
    }
    if !s.probe.is_empty() {
        out += &format!(
            "\n{:<18}{:>8}{:>10}{:>10}\n",
            "probe (frozen CLIP)", "chance", "train", "test"
        );
        for (k, p) in &s.probe {
            out += &format!(
                "{:<18}{:>8.1}{:>10.1}{:>10.1}\n",
                if p.taught {
                    format!("{k} (taught)")
                } else {
                    k.clone()
                },
                100.0 * p.chance,
                100.0 * p.train,
                100.0 * p.test
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_cover_the_truth_and_paired_differences_see_small_effects() {
        // 400 items per seed, 3 seeds: arm a right on 70%, arm b on 60% of the same items.
        let a: Vec<Vec<bool>> = (0..3)
            .map(|s| (0..400).map(|i| (i * 7 + s) % 10 < 7).collect())
            .collect();
        let b: Vec<Vec<bool>> = (0..3)
            .map(|s| (0..400).map(|i| (i * 7 + s) % 10 < 6).collect())
            .collect();
        let c = cell(&a, 1);
        assert!((c.mean - 0.7).abs() < 1e-9);
        assert!(c.ci95[0] < 0.7 && c.ci95[1] > 0.7);
        assert!(c.ci95[1] - c.ci95[0] < 0.08, "{c:?}");
        let d = difference("t", "a", "b", &a, &b).unwrap();
        assert!((d.mean - 0.1).abs() < 1e-9);
        // b is right only where a is: the paired interval is narrow and excludes 0.
        assert!(d.distinguishable && d.ci95[0] > 0.05, "{d:?}");
        let same = difference("t", "a", "a", &a, &a).unwrap();
        assert!(!same.distinguishable && same.mean == 0.0);
        assert!(difference("t", "a", "b", &a, &b[..2]).is_none());
    }
}
