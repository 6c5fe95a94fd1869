//! Two-stage OG-LLaVA training (paper Section 2.2, Appendix 5.3.1, Table 2).
//!
//! - [`config`]: one TOML/JSON file per run, presets for the paper's setups, overrides.
//! - [`data`]: LLaVA conversation JSON, images, masks; bad rows skipped and counted;
//!   deterministic order; a threaded loader.
//! - [`optim`]: what trains in each stage, AdamW (PyTorch's arithmetic, per-group learning
//!   rates), clipping by the global gradient norm, warm-up + cosine schedule.
//! - [`trainer`]: the loop — accumulation, progress, metrics, atomic checkpoints, exact resume.
//! - [`parallel`]: data-parallel training over several devices through burn's collective
//!   all-reduce, and over several nodes through [`hub`], a TCP all-reduce hub, or NCCL
//!   (feature `nccl`) with the hub as its rendezvous.
//!
//! The trainer is generic over burn's autodiff backends; on the CPU, `Autodiff<Flex>` (f32)
//! trains the small models fastest (docs/backends.md).

mod autodiff;
mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod hub;
pub mod metrics;
#[cfg(feature = "nccl")]
mod nccl;
pub mod optim;
pub mod parallel;
mod setup;
pub mod tensorboard;
pub mod testing;
pub mod trainer;

pub use checkpoint::latest_checkpoint;
pub use config::{DataConfig, FusionSpec, MissingMasks, PRESETS, Precision, Stage, TrainConfig};
pub use error::{Result, TrainError};
pub use metrics::{Metrics, read_metrics, write_loss_svg};
pub use parallel::{Collective, Nodes, run_orchestrator};
pub use trainer::{RunOptions, RunSummary, train, train_parallel};
