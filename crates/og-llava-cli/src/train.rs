//! `og-llava train`: one stage of OG-LLaVA training from a run configuration (og-train).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use og_llava::{DeviceSpec, MultiDeviceTask};
use og_train::{Collective, Nodes, RunOptions, TrainConfig};

use crate::CliError;
use crate::launch::Launch;

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
    #[command(flatten)]
    device: crate::DeviceArgs,
    /// Data-parallel replicas: a count (that many devices of `--device`'s kind: `cuda` → cuda:0,
    /// cuda:1, …; on the CPU backends each replica gets its own threads) or a list
    /// (`cuda:0,cuda:2`). `batch_size` is per replica; gradients are summed with burn's
    /// collective all-reduce (across nodes: through the hub). Default 1; under a launcher
    /// (torchrun, SLURM) with `--device cuda`, the device `LOCAL_RANK` names.
    #[arg(long)]
    devices: Option<String>,
    /// Nodes of a multi-node run (each runs this command with the same configuration and
    /// `--devices`); needs `--node-rank` and `--orchestrator`. Without these flags a
    /// launcher's environment describes the run (torchrun's `WORLD_SIZE`, `RANK`,
    /// `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, or SLURM's `SLURM_NTASKS`, `SLURM_PROCID`,
    /// `SLURM_LOCALID` with `MASTER_ADDR`/`MASTER_PORT`); rank 0 then hosts the hub.
    #[arg(long, requires_all = ["node_rank", "orchestrator"])]
    nodes: Option<u32>,
    /// This node's rank, 0..nodes (rank 0 writes metrics and checkpoints).
    #[arg(long, requires = "nodes")]
    node_rank: Option<u32>,
    /// The hub's address (`og-llava orchestrator --port P` runs it): HOST:P.
    #[arg(long, requires = "nodes")]
    orchestrator: Option<String>,
    /// How the nodes of a CUDA run sum their gradients: through the hub, or with NCCL (the hub
    /// then only hands out NCCL's id; needs a build with `--features cuda` and libnccl).
    #[arg(long, value_enum, default_value = "hub")]
    collective: CollectiveKind,
}

/// The engine that sums the gradients of a multi-node run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CollectiveKind {
    Hub,
    Nccl,
}

struct Train {
    cfg: TrainConfig,
    opts: RunOptions,
    collective: Collective,
}

impl MultiDeviceTask for Train {
    type Output = og_train::Result<og_train::RunSummary>;

    fn run<B: Backend>(self, devices: Vec<B::Device>) -> Self::Output {
        og_train::train_parallel::<Autodiff<B>>(&self.cfg, &devices, &self.collective, &self.opts)
    }
}

/// The multi-node part of the arguments: the flags, or else the launcher's environment
/// (returned too, so rank 0 can host the hub).
fn collective(args: &TrainArgs) -> Result<(Collective, Option<Launch>), CliError> {
    let Some(count) = args.nodes else {
        let launch = Launch::from_env(|k| std::env::var(k).ok())?;
        let nodes = launch.as_ref().map(|l| Nodes {
            count: l.world,
            rank: l.rank,
            orchestrator: l.orchestrator(),
            token: hub_token(),
            nccl: None,
        });
        return Ok((Collective { nodes }, launch));
    };
    if count == 0 || count > og_train::hub::MAX_WORLD {
        return Err(CliError::Usage(format!(
            "--nodes {count}: expected 1 to {}",
            og_train::hub::MAX_WORLD
        )));
    }
    let hub = args.orchestrator.clone().unwrap_or_default();
    if og_train::hub::hub_address(&hub).is_none() {
        return Err(CliError::Usage(format!(
            "--orchestrator {hub:?} needs a port: HOST:PORT"
        )));
    }
    let nodes = Nodes {
        count,
        rank: args.node_rank.unwrap_or_default(),
        orchestrator: hub,
        token: hub_token(),
        nccl: None,
    };
    Ok((Collective { nodes: Some(nodes) }, None))
}

/// The replicas: `--devices`, else under a launcher with a CUDA device the one `LOCAL_RANK`
/// names (one process per GPU), else one device of `--device`'s kind.
fn devices(
    args: &TrainArgs,
    base: DeviceSpec,
    launch: Option<&Launch>,
) -> Result<Vec<DeviceSpec>, CliError> {
    match (&args.devices, launch, base) {
        (Some(d), _, _) => Ok(DeviceSpec::parse_many(d, base)?),
        (None, Some(l), DeviceSpec::Cuda(_)) => Ok(vec![DeviceSpec::Cuda(l.local_rank as usize)]),
        (None, _, _) => Ok(DeviceSpec::parse_many("1", base)?),
    }
}

/// The shared hub token from the environment, if set and not empty.
fn hub_token() -> Option<String> {
    std::env::var(og_train::hub::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}

/// `og-llava orchestrator`: the hub of multi-node runs, until interrupted.
pub fn orchestrator(args: &crate::OrchestratorArgs) -> Result<(), CliError> {
    let config = og_train::hub::HubConfig {
        token: hub_token(),
        gather_timeout: std::time::Duration::from_secs(args.gather_timeout),
        round_timeout: std::time::Duration::from_secs(args.round_timeout),
        ..Default::default()
    };
    eprintln!(
        "orchestrator (all-reduce hub) listening on {}:{} ({}; Ctrl-C stops it)",
        args.bind,
        args.port,
        if config.token.is_some() {
            "replicas must present OG_HUB_TOKEN"
        } else {
            "no token"
        }
    );
    og_train::run_orchestrator(args.bind, args.port, &config).map_err(CliError::from)
}

pub fn run(args: &TrainArgs) -> Result<(), CliError> {
    if args.preset.is_none() && args.config.is_none() {
        return Err(CliError::Usage(
            "give --config FILE and/or --preset NAME (see `og-llava train --help`)".into(),
        ));
    }
    let base = args.device.spec()?;
    let (mut collective, launch) = collective(args)?;
    let devices = devices(args, base, launch.as_ref())?;
    if args.collective == CollectiveKind::Nccl {
        let ordinals: Option<Vec<usize>> = devices
            .iter()
            .map(|d| match d {
                DeviceSpec::Cuda(i) => Some(*i),
                _ => None,
            })
            .collect();
        match (collective.nodes.as_mut(), ordinals) {
            (Some(nodes), Some(ordinals)) => nodes.nccl = Some(ordinals),
            _ => {
                return Err(CliError::Usage(
                    "--collective nccl needs CUDA devices and a multi-node run (--nodes, or a \
                     launcher's environment)"
                        .into(),
                ));
            }
        }
    }
    if let Some(l) = &launch {
        eprintln!(
            "{:?} launch: node {} of {} (local rank {}), hub at {}{}",
            l.source,
            l.rank,
            l.world,
            l.local_rank,
            l.orchestrator(),
            if l.rank == 0 { ", hosted here" } else { "" }
        );
        if l.rank == 0 {
            l.host_hub(og_train::hub::HubConfig {
                token: hub_token(),
                ..Default::default()
            })?;
        }
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
        // Per-micro-batch dropout streams keep CPU replicas reproducible; on a GPU the masks
        // come from the device's own RNG.
        host_dropout: devices.iter().all(DeviceSpec::is_cpu),
    };
    let s = og_llava::dispatch_many(
        &devices,
        Train {
            cfg,
            opts,
            collective,
        },
    )??;
    println!("{}", serde_json::to_string_pretty(&s).expect("json"));
    Ok(())
}
