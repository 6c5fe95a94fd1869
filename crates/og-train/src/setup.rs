//! A run's set-up: its output directory (lock, configuration, checkpoints already there), the
//! model as the stage trains it, the data, and the state a resumed run starts from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use og_llava::OgLlava;
use og_llava::og_llm::ChatTokenizer;
use og_llava::og_vision::ImageProcessor;
use og_weights::Weights;

use crate::checkpoint::{checkpoints_dir, latest_checkpoint, load_trainables};
use crate::config::{Stage, TrainConfig};
use crate::data::{BadRows, Preparer, read_rows};
use crate::error::{Result, TrainError, io};
use crate::optim::{OptimState, freeze_for, state_from_weights};
use crate::trainer::{RunOptions, RunSizes, TrainState, backend_rng, param_sizes};

/// Takes `out/.lock`: one run writes an output directory at a time. The lock is the operating
/// system's (released when the file closes, however the process ends), so a killed run never
/// leaves a stale one.
fn lock_output(out: &Path) -> Result<std::fs::File> {
    let path = out.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Invalid(format!(
            "another run is writing to {} (it holds {}); wait for it to end or choose another \
             output_dir",
            out.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// Prepares `cfg.output_dir` for a run: creates it, takes its lock (the process that writes
/// files), checks a resumed run's configuration against the saved one, refuses to start over
/// checkpoints without `--resume`, saves the configuration. Returns the lock and the
/// checkpoint to resume from.
pub(crate) fn prepare_output(
    cfg: &TrainConfig,
    opts: &RunOptions,
    writer: bool,
) -> Result<(Option<std::fs::File>, Option<PathBuf>)> {
    let out = &cfg.output_dir;
    std::fs::create_dir_all(checkpoints_dir(out)).map_err(io(out))?;
    let lock = if writer {
        Some(lock_output(out)?)
    } else {
        None
    };
    let config_path = out.join("config.json");
    let resume_from = if opts.resume {
        let latest = latest_checkpoint(out);
        if latest.is_none() && writer {
            eprintln!(
                "--resume: {} holds no checkpoint yet; starting from step 0",
                out.display()
            );
        }
        latest
    } else {
        None
    };
    if resume_from.is_some() {
        let saved =
            og_fs::read_text(&config_path, og_fs::MAX_CONFIG_BYTES).map_err(io(&config_path))?;
        let saved: TrainConfig = serde_json::from_str(&saved).map_err(|e| TrainError::Config {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let changed = changed_settings(&saved, cfg);
        if !changed.is_empty() {
            return Err(TrainError::Config {
                path: config_path,
                message: format!(
                    "the configuration differs from the run being resumed: {}",
                    changed.join(", ")
                ),
            });
        }
    } else {
        if latest_checkpoint(out).is_some() && !opts.resume {
            return Err(TrainError::Invalid(format!(
                "{} already holds checkpoints: pass --resume to continue, or choose a new \
                 output_dir",
                out.display()
            )));
        }
        if writer {
            let config_json = serde_json::to_string_pretty(cfg).expect("config serialises");
            og_llava::og_segment::write_atomic(&config_path, config_json.as_bytes())?;
        }
    }
    Ok((lock, resume_from))
}

/// The model the stage trains: the base (or `init_from`) with the run's inference settings
/// recorded, LoRA added for SFT, frozen as the stage says, fresh parameters drawn from the
/// run's seed (whatever the number of devices).
pub(crate) fn build_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<OgLlava<B>> {
    let mut model: OgLlava<B> = match &cfg.init_from {
        Some(dir) => OgLlava::load_checkpoint(dir, Some(&cfg.base), device)?,
        None => cfg.base.load(Some(cfg.fusion.to_config()), device)?,
    };
    model.segment_rope = cfg.segment_rope;
    model.image = og_llava::ImageSettings {
        selection: cfg.data.selection.clone(),
        pad_to_square: cfg.data.pad_to_square,
    };
    if let (Stage::Sft, Some(lora)) = (cfg.stage, &cfg.lora)
        && !model.llm.has_lora()
    {
        model.llm = model.llm.with_lora(lora)?;
    }
    let model = freeze_for(model, cfg.stage);
    {
        let _seeded = backend_rng();
        B::seed(device, cfg.seed);
        model.initialise();
    }
    Ok(model)
}

/// The data: rows read and checked (bad ones counted in `bad`), folders checked, and what turns
/// a row into an example for `model` (images framed and grouped as `model.image` records).
pub(crate) fn build_preparer<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &OgLlava<B>,
    bad: &mut BadRows,
    device: &B::Device,
) -> Result<Arc<Preparer>> {
    let tokenizer = ChatTokenizer::from_dir(cfg.base.tokenizer_dir())?;
    let rows = read_rows(&cfg.data.json, cfg.data.fail_on_bad_rows, bad)?;
    if !cfg.data.images.is_dir() && rows.iter().any(|r| !r.images.is_empty()) {
        return Err(TrainError::Data {
            path: cfg.data.images.clone(),
            message: "the image folder (data.images) does not exist".into(),
        });
    }
    let rows = crate::data::check_images(rows, &cfg.data.images, cfg.data.fail_on_bad_rows, bad)
        .map_err(|message| TrainError::Data {
            path: cfg.data.json.clone(),
            message,
        })?;
    if rows.is_empty() {
        return Err(TrainError::Data {
            path: cfg.data.json.clone(),
            message: "no usable rows".into(),
        });
    }
    if let Some(dir) = cfg.data.masks.as_ref().filter(|d| !d.is_dir()) {
        return Err(TrainError::Data {
            path: dir.clone(),
            message: "the mask folder (data.masks) does not exist".into(),
        });
    }
    let size = model.vision.image_size();
    let grid = model.vision.grid();
    let processor = ImageProcessor::from_hf_dir(
        cfg.base.processor_dir(),
        size,
        size / grid,
        model.image.pad_to_square,
    )
    .map_err(og_llava::ModelError::from)?;
    Ok(Arc::new(Preparer {
        rows,
        images: cfg.data.images.clone(),
        masks: cfg.data.masks.clone(),
        missing_masks: cfg.data.missing_masks,
        processor,
        tokenizer,
        fusion: model.connector.config().clone(),
        selection: model.image.selection.clone(),
        windows: cfg.data.windows,
        felzenszwalb: cfg.data.felzenszwalb,
        sam2: cfg
            .data
            .sam2
            .as_ref()
            .map(|s| s.segmenter::<B::InnerBackend>(device))
            .transpose()?,
        image_token_id: model.image_token_id,
        grid,
        model_max_length: cfg.model_max_length,
    }))
}

/// Settings a resumed run may change: how a step's rows are split into micro-batches (the
/// checkpoint's rows per step are checked in [`resume_state`], so the global batch stays).
const RESUMABLE_CHANGES: [&str; 2] = ["batch_size", "grad_accumulation"];

/// The top-level settings in which `cfg` differs from the `saved` configuration of the run it
/// resumes, but for [`RESUMABLE_CHANGES`].
fn changed_settings(saved: &TrainConfig, cfg: &TrainConfig) -> Vec<String> {
    let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(saved), as_map(cfg));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RESUMABLE_CHANGES.contains(&k.as_str()) && old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// Loads checkpoint `dir` into `model` and returns its state and optimiser moments, after
/// checking they belong to this run (rows per step — so any replica count with the same
/// global batch —, step and data position in range, optimiser tensors named and sized as the
/// model's trainables).
pub(crate) fn resume_state<B: AutodiffBackend>(
    dir: &Path,
    cfg: &TrainConfig,
    model: &mut OgLlava<B>,
    sizes: RunSizes,
    device: &B::Device,
) -> Result<(TrainState, OptimState<B::InnerBackend>)> {
    let path = dir.join("state.json");
    let text = og_fs::read_text(&path, og_fs::MAX_CONFIG_BYTES).map_err(io(&path))?;
    let mut state: TrainState = serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let refused = match state.step_rows {
        Some(rows) if rows != sizes.step_rows => Some(format!(
            "the run's steps took {rows} rows (batch_size × grad_accumulation × replicas, on {} \
             replica(s)); this one takes {}: resume with the same global batch",
            state.world, sizes.step_rows
        )),
        None if state.world != sizes.world => Some(format!(
            "the run trained on {} replica(s); resume it on as many (got {})",
            state.world, sizes.world
        )),
        _ => None,
    };
    if let Some(message) = refused {
        return Err(TrainError::Config { path, message });
    }
    if state.step > sizes.total_steps || state.position > sizes.rows {
        return Err(TrainError::Config {
            path,
            message: format!(
                "step {} at row {}: beyond this run's {} steps of {} rows",
                state.step, state.position, sizes.total_steps, sizes.rows
            ),
        });
    }
    state.world = sizes.world;
    state.step_rows = Some(sizes.step_rows);
    load_trainables(model, cfg.stage, &dir.join("trainable.safetensors"), device)?;
    let optim = state_from_weights(
        &Weights::open(dir.join("optimizer.safetensors"))?,
        state.step,
        device,
    )?;
    optim
        .check(&param_sizes(model, cfg.stage))
        .map_err(|message| TrainError::Config {
            path: dir.join("optimizer.safetensors"),
            message,
        })?;
    Ok((state, optim))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second writer of one output directory is refused while the first holds it, and the
    /// directory is free again once the first lets go.
    #[test]
    fn one_run_writes_an_output_directory_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_output(dir.path()).unwrap();
        let e = lock_output(dir.path()).unwrap_err();
        assert!(e.to_string().contains("another run is writing"), "{e}");
        drop(first);
        lock_output(dir.path()).unwrap();
    }
}
