//! `og-llava nano`: the whole nano-world experiment (what `cargo xtask train` runs).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_nano::experiment::{
    ArmSpec, ExperimentConfig, ExperimentError, ExperimentReport, ablation_arms, main_arms, run,
    table, table_seeds,
};

use crate::CliError;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NanoPreset {
    /// About 140 s on two CPU cores (both scorings).
    Nano,
    /// Stronger numbers: 4000 scenes of 80 px, longer training (about a quarter of an hour).
    Small,
    /// Every step, tiny: seconds (a wiring check).
    Smoke,
}

#[derive(clap::Args)]
pub struct NanoArgs {
    /// Output directory (world, models, runs, results.json).
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
    /// Repeat with seeds seed, seed+1, … (each in its own `seed-N` directory) and report
    /// mean ± sd.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// ndarray | flex | wgpu[:N] | cuda[:N] (default ndarray: on the CPU it trains these small
    /// models faster than Flex, whose broadcasting element-wise ops take a strided slow path —
    /// measured 99 s vs 163 s for the nano experiment, 108 vs 149 ms per step in
    /// `cargo xtask compare-train`).
    #[arg(long)]
    device: Option<String>,
}

struct Nano {
    cfg: ExperimentConfig,
    arms: Vec<ArmSpec>,
    out: PathBuf,
}

impl BackendTask for Nano {
    type Output = Result<ExperimentReport, ExperimentError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        run::<Autodiff<B>>(&self.cfg, &self.arms, &self.out, &device, true)
    }
}

pub fn run_nano(args: &NanoArgs) -> Result<(), CliError> {
    if args.seeds == 0 {
        return Err(CliError::Usage("--seeds must be at least 1".into()));
    }
    let arms = if args.ablate {
        ablation_arms()
    } else {
        main_arms()
    };
    let mut reports = Vec::new();
    for seed in args.seed..args.seed + args.seeds {
        let mut cfg = match args.preset {
            NanoPreset::Nano => ExperimentConfig::nano(seed),
            NanoPreset::Small => ExperimentConfig::small(seed),
            NanoPreset::Smoke => ExperimentConfig::smoke(seed),
        };
        // Ablations rank by likelihood only (generation with rotations triples their time).
        cfg.generation_eval &= !args.ablate;
        let out = if args.seeds > 1 {
            args.out.join(format!("seed-{seed}"))
        } else {
            args.out.clone()
        };
        let report = og_llava::dispatch(
            crate::device_spec(Some(args.device.as_deref().unwrap_or("ndarray")))?,
            Nano {
                cfg,
                arms: arms.clone(),
                out: out.clone(),
            },
        )?
        .map_err(|e| CliError::Usage(e.to_string()))?;
        println!("seed {seed}:\n{}", table(&report));
        println!(
            "{:.0}s; results in {}",
            report.seconds,
            out.join("results.json").display()
        );
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("{}", table_seeds(&reports));
    }
    Ok(())
}
