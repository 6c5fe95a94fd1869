//! `og-llava nano`: the whole nano-world experiment (what `cargo xtask train` runs).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_nano::experiment::{ExperimentConfig, ExperimentError, ExperimentReport, run, table};

use crate::CliError;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NanoPreset {
    /// Minutes on two CPU cores.
    Nano,
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
    /// ndarray | flex | wgpu[:N] | cuda[:N]
    #[arg(long)]
    device: Option<String>,
}

struct Nano {
    cfg: ExperimentConfig,
    out: PathBuf,
}

impl BackendTask for Nano {
    type Output = Result<ExperimentReport, ExperimentError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        run::<Autodiff<B>>(&self.cfg, &self.out, &device, true)
    }
}

pub fn run_nano(args: &NanoArgs) -> Result<(), CliError> {
    let cfg = match args.preset {
        NanoPreset::Nano => ExperimentConfig::nano(args.seed),
        NanoPreset::Smoke => ExperimentConfig::smoke(args.seed),
    };
    let report = og_llava::dispatch(
        crate::device_spec(args.device.as_deref())?,
        Nano {
            cfg,
            out: args.out.clone(),
        },
    )?
    .map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{}", table(&report));
    println!(
        "{:.0}s in all; results in {}",
        report.seconds,
        args.out.join("results.json").display()
    );
    Ok(())
}
