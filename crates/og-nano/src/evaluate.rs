//! Evaluating a trained arm: the blind arm's grey images, the evaluation sets with and without
//! masks, chance levels, and one arm's results in one inference mode.

use std::path::{Path, PathBuf};

use og_eval::{Benchmark, Evaluator, Item, MaskMode, Results};
use og_llava::OgLlava;
use og_llava::og_llm::ChatTokenizer;
use og_llava::og_vision::ImageProcessor;

use crate::experiment::{ArmResult, ArmSpec, ExperimentError, MaskSource, mask_dir, step_err};

/// Task prompts generated at once for the `@gen` columns: the nano model is small, so a
/// batch costs little more than one prompt per decode step.
const GENERATION_BATCH: usize = 16;

/// Where the blind arm's grey images live, mirroring the world's image folders.
pub(crate) const BLANK: &str = "blank";

/// A uniform grey copy of every image of the world (`blank/images/…`, `blank/eval/mmvp/…`),
/// written once.
pub(crate) fn write_blank_images(world: &Path) -> Result<(), String> {
    for dir in ["images/train", "images/eval", "eval/mmvp"] {
        let (from, to) = (world.join(dir), world.join(BLANK).join(dir));
        std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
        let entries = std::fs::read_dir(&from).map_err(|e| format!("{}: {e}", from.display()))?;
        for e in entries.flatten() {
            let path = e.path();
            let target = to.join(e.file_name());
            if path.extension().and_then(|x| x.to_str()) != Some("png") || target.is_file() {
                continue;
            }
            let (w, h) =
                image::image_dimensions(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            image::RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128]))
                .save(&target)
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

/// The items with their images swapped for the grey copies.
pub(crate) fn blind_items(items: &[Item], world: &Path) -> Vec<Item> {
    items
        .iter()
        .cloned()
        .map(|mut item| {
            if let og_eval::ImageSource::File(p) = &item.image
                && let Ok(rel) = p.strip_prefix(world)
            {
                item.image = og_eval::ImageSource::File(world.join(BLANK).join(rel));
            }
            item
        })
        .collect()
}

/// Chance accuracy per result key: the mean of 1 / options over its items.
pub(crate) fn chance_levels(items: &[Item]) -> std::collections::BTreeMap<String, f64> {
    let mut sums: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for item in items {
        let e = sums.entry(og_eval::score::result_key(item)).or_default();
        e.0 += 1.0 / item.options.len().max(1) as f64;
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

/// What one arm is evaluated on.
pub(crate) struct EvalSets<'a> {
    pub(crate) world: &'a Path,
    pub(crate) benchmarks: &'a [Item],
    pub(crate) tasks: &'a [Item],
    pub(crate) fit: &'a [Item],
}

/// One arm in one inference mode: the benchmark-format sets by likelihood; in the arm's own
/// mode also the task sets (likelihood, and greedy generation when `generation`) and the fit
/// set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_arm<B: burn::tensor::backend::Backend>(
    model: &OgLlava<B>,
    tok: &ChatTokenizer,
    processor: &ImageProcessor,
    arm: &ArmSpec,
    sets: &EvalSets<'_>,
    with_masks: bool,
    own_mode: bool,
    generation: bool,
    device: &B::Device,
) -> Result<ArmResult, og_eval::EvalError> {
    // Masks at inference: the arm's own kind (ground truth for the baseline).
    let source = match arm.masks {
        MaskSource::None => MaskSource::GroundTruth,
        m => m,
    };
    let evaluator = |masks: Option<PathBuf>| Evaluator {
        model,
        tokenizer: tok,
        processor,
        selection: arm.selection.clone(),
        masks: match (with_masks, arm.windows, masks) {
            (false, _, _) => MaskMode::None,
            (true, Some(w), _) => MaskMode::Windows(w),
            (true, None, Some(dir)) => MaskMode::Folder(dir),
            (true, None, None) => MaskMode::None,
        },
        stop_ids: tok.eos_id().into_iter().collect(),
        device: device.clone(),
        batch_size: GENERATION_BATCH,
    };
    let see = |items: &[Item]| -> Vec<Item> {
        if arm.blind {
            blind_items(items, sets.world)
        } else {
            items.to_vec()
        }
    };
    let mut results = Results::default();
    for (items, masks) in eval_sets(sets.world, sets.benchmarks, source) {
        results.extend(evaluator(masks).evaluate(&see(&items), |_, _| {})?);
    }
    let (mut tasks, mut fit) = (None, None);
    if own_mode {
        let ev = evaluator(mask_dir(sets.world, source));
        let items = see(sets.tasks);
        let mut t = ev.evaluate(&items, |_, _| {})?;
        if generation {
            t.extend(ev.evaluate_generation(&items, og_eval::Protocol::Paper)?);
        }
        tasks = Some(t);
        fit = Some(ev.evaluate(&see(sets.fit), |_, _| {})?);
    }
    Ok(ArmResult {
        arm: arm.name.clone(),
        masks_at_inference: with_masks,
        results,
        tasks,
        fit,
    })
}

/// Every evaluation item of a world (ARO files and MMVP).
pub(crate) fn read_eval(world: &Path) -> Result<Vec<Item>, ExperimentError> {
    let images = world.join("images");
    let mut v = Vec::new();
    for (bench, file) in [
        (Benchmark::AroVgr, "eval/vg_relation.json"),
        (Benchmark::AroVga, "eval/vg_attribution.json"),
        (Benchmark::AroCocoOrder, "eval/coco_order.json"),
        (Benchmark::Mmvp, "eval/mmvp"),
    ] {
        v.extend(
            og_eval::read_benchmark(bench, &world.join(file), Some(&images))
                .map_err(step_err("evaluation"))?,
        );
    }
    Ok(v)
}

/// Items grouped by where their masks live (MMVP has ground-truth masks only).
pub(crate) fn eval_sets(
    world: &Path,
    items: &[Item],
    masks: MaskSource,
) -> Vec<(Vec<Item>, Option<PathBuf>)> {
    let (mmvp, aro): (Vec<Item>, Vec<Item>) = items
        .iter()
        .cloned()
        .partition(|i| i.bench == Benchmark::Mmvp);
    vec![
        (aro, mask_dir(world, masks)),
        (mmvp, Some(world.join("eval/mmvp"))),
    ]
}
