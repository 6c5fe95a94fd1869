//! `og-llava world`: writes a nano world (scenes, masks, conversations, evaluation sets).

use std::path::PathBuf;

use og_nano::WorldConfig;

use crate::CliError;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum WorldPreset {
    /// 600 training scenes of 64 px (the experiment in minutes).
    Nano,
    /// 4000 training scenes of 80 px.
    Small,
}

#[derive(clap::Args)]
pub struct WorldArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = WorldPreset::Nano)]
    preset: WorldPreset,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override the number of training scenes.
    #[arg(long)]
    train_scenes: Option<usize>,
    /// Override the number of evaluation scenes.
    #[arg(long)]
    eval_scenes: Option<usize>,
}

pub fn run(args: &WorldArgs) -> Result<(), CliError> {
    let mut cfg = match args.preset {
        WorldPreset::Nano => WorldConfig::nano(args.seed),
        WorldPreset::Small => WorldConfig::small(args.seed),
    };
    if let Some(n) = args.train_scenes {
        cfg.train_scenes = n;
    }
    if let Some(n) = args.eval_scenes {
        cfg.eval_scenes = n;
    }
    let t0 = std::time::Instant::now();
    let s = og_nano::generate(&cfg, &args.out).map_err(|e| CliError::Usage(e.to_string()))?;
    eprintln!(
        "world written to {} in {:.1}s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    println!("{}", serde_json::to_string_pretty(&s).expect("json"));
    Ok(())
}
