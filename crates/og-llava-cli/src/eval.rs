//! `og-llava eval`: one benchmark of the paper's Table 1, or all of them (`--suite paper`),
//! on any model `ask` loads; resumable runs into `items.jsonl` and `results.json`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use og_eval::run::RunConfig;
use og_eval::{Benchmark, Evaluator, MaskMode, Protocol, Summary};
use og_llava::BackendTask;
use og_llm::ChatTokenizer;

use crate::CliError;
use crate::ask::{ModelSource, OgPathArgs};
use crate::progress::Progress;
use crate::segment::SegmenterKind;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Suite {
    /// Every benchmark of the paper's Table 1.
    Paper,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    source: ModelSource,
    /// aro-vgr | aro-vga | aro-coco-order | aro-flickr-order | conme | mmvp | cvbench | ai2d |
    /// mme | mmstar | mmbench
    #[arg(long, required_unless_present = "suite", conflicts_with = "suite")]
    benchmark: Option<Benchmark>,
    /// Every benchmark of a suite from one folder holding a subfolder per benchmark, named as
    /// --benchmark names them (missing ones are skipped and listed).
    #[arg(long, value_enum)]
    suite: Option<Suite>,
    /// The benchmark's downloaded file or folder (with --suite: the folder of folders).
    #[arg(long)]
    data: PathBuf,
    /// The folder that image paths in the data are relative to (default: where the release
    /// puts its images).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Output folder (with --suite: one subfolder per benchmark, plus table.md and table.html).
    #[arg(long)]
    out: PathBuf,
    /// paper (the paper harness's prompts and answer extraction) | likelihood | circular
    #[arg(long, default_value = "paper")]
    protocol: Protocol,
    /// Evaluate the first N items only.
    #[arg(long)]
    limit: Option<usize>,
    /// A folder of COCO RLE mask files, `<image name>.json` per image: the OG path (default:
    /// no masks, as the paper reports). A missing file is an error.
    #[arg(long, conflicts_with = "segmenter")]
    masks: Option<PathBuf>,
    #[command(flatten)]
    segmenter: crate::segment::SegmenterArgs,
    #[command(flatten)]
    path: OgPathArgs,
    /// Leave out malformed rows and unreadable images (counted in results.json's `skipped`)
    /// instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Generation budget per answer (default: the benchmark's).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Prompts decoded together under paper and circular (likelihood already scores an item's
    /// options as one batch); memory grows with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    #[command(flatten)]
    device: crate::DeviceArgs,
    #[arg(long, default_value = "f32")]
    precision: og_llava::Precision,
}

/// One benchmark to run: its data and output folder.
struct Job {
    bench: Benchmark,
    data: PathBuf,
    out: PathBuf,
}

fn jobs(a: &EvalArgs) -> Vec<Job> {
    match (a.benchmark, a.suite) {
        (Some(bench), _) => vec![Job {
            bench,
            data: a.data.clone(),
            out: a.out.clone(),
        }],
        (None, _) => Benchmark::ALL
            .into_iter()
            .map(|bench| Job {
                bench,
                data: a.data.join(bench.name()),
                out: a.out.join(bench.name()),
            })
            .collect(),
    }
}

struct Eval<'a> {
    args: &'a EvalArgs,
    tokenizer: ChatTokenizer,
    stop_ids: Vec<u32>,
}

impl BackendTask for Eval<'_> {
    type Output = Result<(), CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let model = a.source.load_for::<B>(&a.path, a.precision, &device)?;
        let processor = a.source.processor(&model)?;
        let ev = Evaluator {
            model: &model,
            tokenizer: &self.tokenizer,
            processor: &processor,
            selection: model.image.selection.clone(),
            masks: match (&a.masks, a.segmenter.segmenter) {
                (_, Some(SegmenterKind::Felzenszwalb)) => {
                    MaskMode::Felzenszwalb(a.segmenter.felzenszwalb()?)
                }
                (_, Some(SegmenterKind::Sam2)) => MaskMode::Segmenter(og_eval::OnTheFly {
                    segmenter: std::sync::Arc::new(std::sync::Mutex::new(
                        a.segmenter.build(a.device.spec()?, false)?,
                    )),
                    description: a.segmenter.describe_sam2(),
                }),
                (Some(dir), None) => MaskMode::Folder(dir.clone()),
                (None, None) => MaskMode::None,
            },
            stop_ids: self.stop_ids.clone(),
            device,
            batch_size: a.batch_size as usize,
        };
        let mut done: Vec<(Benchmark, Option<Summary>)> = Vec::new();
        for job in jobs(a) {
            if a.suite.is_some() && !job.data.exists() {
                eprintln!("{}: skipped ({} not found)", job.bench, job.data.display());
                done.push((job.bench, None));
                continue;
            }
            let (items, bad) = if a.skip_bad_rows {
                og_eval::readers::read_benchmark_skipping(
                    job.bench,
                    &job.data,
                    a.images.as_deref(),
                )?
            } else {
                let items = og_eval::read_benchmark(job.bench, &job.data, a.images.as_deref())?;
                (items, Vec::new())
            };
            for e in &bad {
                eprintln!("skipped: {e}");
            }
            let cfg = RunConfig {
                benchmark: job.bench,
                protocol: a.protocol,
                out: job.out.clone(),
                limit: a.limit,
                max_new_tokens: a.max_new_tokens,
                skip_bad_rows: a.skip_bad_rows,
                skipped_rows: bad.len(),
            };
            let mut progress = Progress::new(job.bench.name(), "items");
            let summary = og_eval::run_benchmark(&ev, &items, &cfg, |d, t| progress.show(d, t))?;
            let (value, label) = summary.headline();
            let skipped = match summary.skipped {
                0 => String::new(),
                n => format!(" ({n} skipped)"),
            };
            println!(
                "{}: {value:.1} ({label}); accuracy {:.1}% [{:.1}, {:.1}] over {} items{skipped} -> {}",
                job.bench,
                100.0 * summary.accuracy,
                100.0 * summary.ci95[0],
                100.0 * summary.ci95[1],
                summary.n,
                job.out.join("results.json").display()
            );
            done.push((job.bench, Some(summary)));
        }
        if a.suite.is_some() {
            write_tables(&a.out, a.protocol, &done)?;
        }
        Ok(())
    }
}

/// Table 1's columns as markdown (printed and written) and HTML.
fn write_tables(
    out: &Path,
    protocol: Protocol,
    rows: &[(Benchmark, Option<Summary>)],
) -> Result<(), CliError> {
    let mut md =
        "| benchmark | Table 1 value | accuracy % (95% CI) | n |\n|---|---|---|---|\n".to_string();
    let mut html = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>OG-LLaVA evaluation</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}</style>\
         <h1>Evaluation (protocol: {protocol})</h1><table><tr><th>benchmark</th>\
         <th>Table 1 value</th><th>what</th><th>accuracy %</th><th>95% CI</th><th>n</th></tr>"
    );
    for (bench, summary) in rows {
        match summary {
            Some(s) => {
                let (v, label) = s.headline();
                let (lo, hi) = (100.0 * s.ci95[0], 100.0 * s.ci95[1]);
                md += &format!(
                    "| {bench} | {v:.1} ({label}) | {:.1} ({lo:.1}–{hi:.1}) | {} |\n",
                    100.0 * s.accuracy,
                    s.n
                );
                html += &format!(
                    "<tr><td>{bench}</td><td>{v:.1}</td><td>{label}</td><td>{:.1}</td>\
                     <td>{lo:.1}–{hi:.1}</td><td>{}</td></tr>",
                    100.0 * s.accuracy,
                    s.n
                );
            }
            None => {
                md += &format!("| {bench} | — | not run (no data) | 0 |\n");
                html += &format!(
                    "<tr><td>{bench}</td><td>—</td><td colspan=\"4\">not run (no data)</td></tr>"
                );
            }
        }
    }
    html += "</table>";
    println!("\n{md}");
    crate::write_output(&out.join("table.md"), md.as_bytes())?;
    crate::write_output(&out.join("table.html"), html.as_bytes())
}

pub fn run(args: &EvalArgs) -> Result<(), CliError> {
    crate::ask::require_llava_model(&args.source.model)?;
    if !args.data.exists() {
        return Err(CliError::Usage(format!(
            "--data {}: not found",
            args.data.display()
        )));
    }
    let tok_dir = crate::ask::tokenizer_dir(&args.source.model)?;
    let tokenizer = ChatTokenizer::from_dir(&tok_dir)?;
    // The chat's end of turn first: it closes every likelihood candidate.
    let mut stop_ids: Vec<u32> = tokenizer.token_id("<|eot_id|>").into_iter().collect();
    for id in crate::llm::eos_ids(&tok_dir, &tokenizer)? {
        if !stop_ids.contains(&id) {
            stop_ids.push(id);
        }
    }
    og_llava::dispatch(
        args.device.spec()?,
        Eval {
            args,
            tokenizer,
            stop_ids,
        },
    )?
}
