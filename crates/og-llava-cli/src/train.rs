//! `og-llava train`: one stage of OG-LLaVA training from a run configuration (og-train).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_train::{RunOptions, TrainConfig};

use crate::CliError;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Hyper-parameter preset (paper-3b-align, paper-3b-sft, paper-8b-align, paper-8b-sft).
    #[arg(long)]
    preset: Option<String>,
    /// Run configuration, TOML or JSON (merged over the preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `key.path=value` (JSON values), applied last; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the newest complete checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// ndarray | flex | wgpu[:N] | cuda[:N] (default ndarray: on the CPU it trains these small
    /// models faster than Flex, whose broadcasting element-wise ops take a strided slow path —
    /// measured 99 s vs 163 s for the nano experiment, 108 vs 149 ms per step in
    /// `cargo xtask compare-train`).
    #[arg(long)]
    device: Option<String>,
}

struct Train {
    cfg: TrainConfig,
    opts: RunOptions,
}

impl BackendTask for Train {
    type Output = og_train::Result<og_train::RunSummary>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        og_train::train::<Autodiff<B>>(&self.cfg, &device, &self.opts)
    }
}

pub fn run(args: &TrainArgs) -> Result<(), CliError> {
    if args.preset.is_none() && args.config.is_none() {
        return Err(CliError::Usage(
            "give --config FILE and/or --preset NAME (see `og-llava train --help`)".into(),
        ));
    }
    let cfg = TrainConfig::resolve(
        args.preset.as_deref(),
        args.config.as_deref(),
        &args.overrides,
    )?;
    let opts = RunOptions {
        resume: args.resume,
        stop_after: None,
        progress: true,
    };
    let s = og_llava::dispatch(
        crate::device_spec(Some(args.device.as_deref().unwrap_or("ndarray")))?,
        Train { cfg, opts },
    )??;
    println!("{}", serde_json::to_string_pretty(&s).expect("json"));
    Ok(())
}
