//! `og-llava nano`: the whole nano-world experiment (what `cargo xtask train` runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_nano::experiment::{
    ArmSpec, ExperimentConfig, ExperimentError, ExperimentReport, ablation_arms, main_arms, run,
    table,
};

use crate::CliError;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NanoPreset {
    /// The main comparison (five arms, three seeds; its time is in the README).
    Nano,
    /// Stronger numbers: 4000 scenes of 80 px, longer training.
    Small,
    /// Every step, tiny (a wiring check).
    Smoke,
}

#[derive(clap::Args)]
pub struct NanoArgs {
    /// Output directory: `seed-N/` per seed (world, models, runs, its results.json and
    /// report.html), and the summary over seeds in `results.json` and `report.html`.
    #[arg(long, default_value = "runs/nano")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = NanoPreset::Nano)]
    preset: NanoPreset,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the paper's ablations (OG-LLaVA variants: Φ, Global View, delimiters, PEs,
    /// segment-aware RoPE, sliding windows, mask noise) instead of the main comparison.
    #[arg(long)]
    ablate: bool,
    /// Seeds seed, seed+1, … (default: 3 for the nano preset, else 1).
    #[arg(long)]
    seeds: Option<u64>,
    /// Seeds run at the same time, each in its own process (default: all of them; the tiny
    /// models keep each process on about one core, and sharing the cores between all seeds
    /// finishes sooner than running them in waves).
    #[arg(long)]
    jobs: Option<usize>,
    /// Override the preset's settings, `key=value` with dotted keys into the experiment
    /// configuration (e.g. `sft_epochs=6`, `world.eval_scenes=100`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Train and evaluate only these arms (comma-separated names, e.g. `llava,blind`).
    #[arg(long, value_delimiter = ',')]
    arms: Vec<String>,
    #[command(flatten)]
    device: crate::DeviceArgs,
    /// Run exactly one seed into --out itself (what each process of a multi-seed run does).
    #[arg(long, hide = true)]
    single: bool,
}

struct Nano {
    cfg: ExperimentConfig,
    arms: Vec<ArmSpec>,
    out: PathBuf,
    progress: bool,
}

impl BackendTask for Nano {
    type Output = Result<ExperimentReport, ExperimentError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        run::<Autodiff<B>>(&self.cfg, &self.arms, &self.out, &device, self.progress)
    }
}

fn preset_name(p: NanoPreset) -> &'static str {
    match p {
        NanoPreset::Nano => "nano",
        NanoPreset::Small => "small",
        NanoPreset::Smoke => "smoke",
    }
}

/// One seed, in this process.
fn run_one(
    args: &NanoArgs,
    seed: u64,
    out: &Path,
    progress: bool,
) -> Result<ExperimentReport, CliError> {
    let mut cfg = match args.preset {
        NanoPreset::Nano => ExperimentConfig::nano(seed),
        NanoPreset::Small => ExperimentConfig::small(seed),
        NanoPreset::Smoke => ExperimentConfig::smoke(seed),
    };
    // Ablations rank by likelihood only (generation multiplies their time).
    cfg.generation_eval &= !args.ablate;
    if !args.overrides.is_empty() {
        let mut v = serde_json::to_value(&cfg).expect("json");
        og_train::config::apply_overrides(&mut v, &args.overrides)?;
        cfg = serde_json::from_value(v).map_err(|e| CliError::Usage(format!("--set: {e}")))?;
    }
    let mut arms = if args.ablate {
        ablation_arms()
    } else {
        main_arms()
    };
    if !args.arms.is_empty() {
        let known: Vec<String> = arms.iter().map(|a| a.name.clone()).collect();
        if let Some(bad) = args.arms.iter().find(|n| !known.contains(n)) {
            return Err(CliError::Usage(format!(
                "--arms: no arm {bad:?} (arms: {})",
                known.join(", ")
            )));
        }
        arms.retain(|a| args.arms.contains(&a.name));
    }
    og_llava::dispatch(
        args.device.spec()?,
        Nano {
            cfg,
            arms,
            out: out.to_path_buf(),
            progress,
        },
    )?
    .map_err(|e| CliError::Usage(e.to_string()))
}

/// Several seeds, `jobs` processes at a time (each process owns burn's process-wide RNG, so
/// every seed's numbers are the same however many run together); each logs to `seed-N.log`.
fn run_many(args: &NanoArgs, seeds: &[u64], jobs: usize) -> Result<(), CliError> {
    let exe =
        std::env::current_exe().map_err(|e| CliError::Usage(format!("own executable: {e}")))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.out.display())))?;
    let queue = std::sync::Mutex::new(seeds.iter().copied());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let Some(seed) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else {
                        break;
                    };
                    let (dir, log) = (
                        args.out.join(format!("seed-{seed}")),
                        args.out.join(format!("seed-{seed}.log")),
                    );
                    let started = Instant::now();
                    eprintln!("seed {seed}: started (log: {})", log.display());
                    let status = std::fs::File::create(&log).and_then(|f| {
                        let mut cmd = Command::new(&exe);
                        cmd.args([
                            "nano",
                            "--single",
                            "--preset",
                            preset_name(args.preset),
                            "--seed",
                        ])
                        .arg(seed.to_string())
                        .arg("--out")
                        .arg(&dir)
                        .stdout(f.try_clone()?)
                        .stderr(f);
                        if args.ablate {
                            cmd.arg("--ablate");
                        }
                        for o in &args.overrides {
                            cmd.args(["--set", o]);
                        }
                        if !args.arms.is_empty() {
                            cmd.args(["--arms", &args.arms.join(",")]);
                        }
                        if let Some(d) = &args.device.device {
                            cmd.args(["--device", d]);
                        }
                        cmd.status()
                    });
                    match status {
                        Ok(s) if s.success() => {
                            eprintln!(
                                "seed {seed}: done in {:.0} s",
                                started.elapsed().as_secs_f64()
                            )
                        }
                        Ok(s) => failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("seed {seed} failed ({s}); see {}", log.display())),
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("seed {seed}: cannot run {}: {e}", exe.display())),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(failures.join("; ")))
    }
}

fn read_report(path: &Path) -> Result<ExperimentReport, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

pub fn run_nano(args: &NanoArgs) -> Result<(), CliError> {
    if args.single {
        let report = run_one(args, args.seed, &args.out, true)?;
        println!("seed {}:\n{}", args.seed, table(&report));
        return Ok(());
    }
    let n = args.seeds.unwrap_or(match args.preset {
        NanoPreset::Nano => 3,
        _ => 1,
    });
    if n == 0 {
        return Err(CliError::Usage("--seeds must be at least 1".into()));
    }
    let started = Instant::now();
    let seeds: Vec<u64> = (args.seed..args.seed + n).collect();
    let dirs: Vec<String> = seeds.iter().map(|s| format!("seed-{s}")).collect();
    let reports = if n == 1 {
        let report = run_one(args, seeds[0], &args.out.join(&dirs[0]), true)?;
        println!("seed {}:\n{}", seeds[0], table(&report));
        vec![report]
    } else {
        run_many(
            args,
            &seeds,
            args.jobs.unwrap_or(n as usize).min(n as usize),
        )?;
        dirs.iter()
            .map(|d| read_report(&args.out.join(d).join("results.json")))
            .collect::<Result<Vec<_>, _>>()?
    };
    let summary = og_nano::summary::summarize(&reports, "llava");
    let seconds = started.elapsed().as_secs_f64();
    let mut v = serde_json::to_value(&summary).expect("json");
    v["seconds"] = seconds.into();
    v["runs"] = serde_json::json!(dirs);
    crate::write_output(
        &args.out.join("results.json"),
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )?;
    og_nano::report::write_summary_html(&summary, &dirs, seconds, &args.out)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    println!("\n{}", og_nano::summary::text_table(&summary));
    let (clear, noise): (Vec<_>, Vec<_>) = summary
        .differences
        .iter()
        .zip(&summary.verdicts)
        .partition(|(d, _)| d.distinguishable);
    for (_, line) in &clear {
        println!("{line}");
    }
    println!(
        "{} of {} differences from llava are not distinguishable from noise (all in results.json)",
        noise.len(),
        summary.differences.len()
    );
    let unlearned = og_nano::summary::unlearned(&summary, "blind");
    if !unlearned.is_empty() {
        println!("no non-blind arm above chance on: {}", unlearned.join(", "));
    }
    println!(
        "{seconds:.0}s; results in {}, report in {}",
        args.out.join("results.json").display(),
        args.out.join("report.html").display()
    );
    Ok(())
}
