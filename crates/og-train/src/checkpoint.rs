//! Resumable checkpoints: `checkpoints/step-N/` with the trainable tensors, the optimiser
//! moments and the run state, written atomically; the newest complete one is where a run
//! resumes.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use og_llava::OgLlava;
use og_weights::{SaveTensor, Weights};

use crate::config::{Stage, TrainConfig};
use crate::error::{Result, io};
use crate::metrics::write_loss_svg;
use crate::optim::{OptimState, ParamMut, state_to_host, trainables};
use crate::trainer::TrainState;

pub(crate) fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The newest complete checkpoint (`step-N` holding `state.json`); temporary directories
/// of an interrupted write are ignored.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(checkpoints_dir(out)).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if e.path().join("state.json").is_file() && best.as_ref().is_none_or(|b| n > b.0) {
            best = Some((n, e.path()));
        }
    }
    best.map(|b| b.1)
}

/// Every trainable tensor by name (burn layout), for checkpoints.
pub(crate) fn trainables_to_host<B: Backend>(
    model: &mut OgLlava<B>,
    stage: Stage,
) -> Vec<SaveTensor> {
    trainables(model, stage)
        .into_iter()
        .map(|t| match t.param {
            ParamMut::D1(p) => SaveTensor::from_tensor(t.name, p.val()),
            ParamMut::D2(p) => SaveTensor::from_tensor(t.name, p.val()),
        })
        .collect()
}

pub(crate) fn load_trainables<B: AutodiffBackend>(
    model: &mut OgLlava<B>,
    stage: Stage,
    path: &Path,
    device: &B::Device,
) -> Result<()> {
    let w = Weights::open(path)?;
    for t in trainables(model, stage) {
        match t.param {
            ParamMut::D1(p) => {
                let dims = p.val().dims();
                let v: Tensor<B, 1> = w.tensor(&t.name, dims, device)?;
                *p = p.clone().map(|_| v.require_grad());
            }
            ParamMut::D2(p) => {
                let dims = p.val().dims();
                let v: Tensor<B, 2> = w.tensor(&t.name, dims, device)?;
                *p = p.clone().map(|_| v.require_grad());
            }
        }
    }
    Ok(())
}

/// Writes `checkpoints/step-N` atomically and prunes old ones; returns its path.
pub(crate) fn write_checkpoint<B: AutodiffBackend>(
    model: &mut OgLlava<B>,
    cfg: &TrainConfig,
    optim: &OptimState<B::InnerBackend>,
    state: &TrainState,
) -> Result<PathBuf> {
    let root = checkpoints_dir(&cfg.output_dir);
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    og_weights::save_safetensors(
        tmp.join("trainable.safetensors"),
        &trainables_to_host(model, cfg.stage),
    )?;
    og_weights::save_safetensors(tmp.join("optimizer.safetensors"), &state_to_host(optim))?;
    let text = serde_json::to_string_pretty(state).expect("json");
    std::fs::write(tmp.join("state.json"), text).map_err(io(tmp.join("state.json")))?;
    let dir = root.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    tracing::info!(step = state.step, dir = %dir.display(), "checkpoint written");
    // Keep the newest `keep_checkpoints`; drop leftovers of interrupted writes.
    let mut done: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(io(&root))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    done.sort();
    for old in done
        .iter()
        .take(done.len().saturating_sub(cfg.keep_checkpoints))
    {
        let _ = std::fs::remove_dir_all(old);
    }
    for e in std::fs::read_dir(&root).map_err(io(&root))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    write_loss_svg(&cfg.output_dir)?;
    Ok(dir)
}
