//! Two-stage OG-LLaVA training (paper Section 2.2, Appendix 5.3.1, Table 2).
//!
//! - [`config`]: one TOML/JSON file per run, presets for the paper's setups, overrides.
//! - [`data`]: LLaVA conversation JSON, images, masks; bad rows skipped and counted;
//!   deterministic order; a threaded loader.
//! - [`optim`]: what trains in each stage, AdamW (PyTorch's arithmetic, per-group learning
//!   rates), clipping by the global gradient norm, warm-up + cosine schedule.
//! - [`trainer`]: the loop — accumulation, progress, metrics, atomic checkpoints, exact resume.
//!
//! The trainer is generic over burn's autodiff backends; run it on the CPU with
//! `Autodiff<Flex>` (f32). Data-parallel training over several devices is not implemented yet.

pub mod config;
pub mod data;
mod error;
pub mod optim;
pub mod testing;
pub mod trainer;

pub use config::{DataConfig, FusionSpec, PRESETS, Stage, TrainConfig};
pub use error::{Result, TrainError};
pub use trainer::{Metrics, RunOptions, RunSummary, latest_checkpoint, read_metrics, train};
