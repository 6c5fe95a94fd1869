//! Writing a whole world to disk: images, masks, training conversations, text for the
//! tokenizer and language-model pre-training, evaluation sets, and `world.json`.
//!
//! Layout under the output directory:
//! - `images/{train,eval}/NNNNNN.png`; `masks/{train,eval}/NNNNNN.json` (COCO RLE, ground truth
//!   from the renderer); with `noisy_masks`, `masks_noisy/...` (merged, dilated, dropped);
//! - `align.json` (caption conversations, stage 1) and `sft.json` (question–answer
//!   conversations, 1–3 turns, a quarter starting with a caption request and a quarter of the
//!   questions multiple choice with option letters, stage 2) in LLaVA's format; `captions.jsonl` (image + caption,
//!   for contrastive pre-training); `text.txt` (every sentence, for the tokenizer and the LM);
//! - `eval/vg_relation.json`, `eval/vg_attribution.json`, `eval/coco_order.json` (ARO's
//!   formats, with a `split` of `seen` or `heldout`), `eval/mmvp/Questions.csv` + `eval/mmvp/`
//!   images `1.png`, `2.png`, … (MMVP's layout: consecutive images form a pair);
//! - `eval/tasks.jsonl`: every SFT question kind on each evaluation scene, with the kind's
//!   closed answer set as options (og-eval's `mcq` layout, `split` as above);
//!   `eval/tasks_fit.jsonl`: the same on the first quarter-as-many training scenes (how well training fits);
//! - `scenes.jsonl`: every scene's objects (shape, colour, size, texture, centre, radius), in
//!   the order of its masks, by image;
//! - `world.json`: the configuration, the held-out (colour, shape) pairs and counts.
//!
//! Held-out split: a seeded choice of (colour, shape) pairs never appears in a training scene;
//! evaluation scenes marked `heldout` contain at least one of them (compositional
//! generalisation), the others none.

use std::io::Write;
use std::path::{Path, PathBuf};

use og_fs::SplitMix64;
use og_segment::{CountsFormat, MaskSet};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::scene::{Colour, Scene, SceneSpec, Shape};
use crate::text;

/// Failures while writing a world.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

type R<T> = std::result::Result<T, WorldError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorldError + '_ {
    move |source| WorldError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    pub seed: u64,
    pub image_size: u32,
    pub train_scenes: usize,
    pub eval_scenes: usize,
    /// Number of (colour, shape) pairs held out of training.
    pub heldout_pairs: usize,
    pub min_objects: usize,
    pub max_objects: usize,
    /// Probability of a striped object.
    pub striped: f64,
    /// Also write segmenter-like masks: neighbouring masks merged, dilated or dropped.
    pub noisy_masks: bool,
    /// Also write the masks this project's weight-free segmenter makes of each rendered image
    /// ([`FELZENSZWALB`]): a partition, background included.
    #[serde(default)]
    pub felzenszwalb_masks: bool,
}

/// The segmenter settings of `masks_felzenszwalb/`, fixed for 64–80-pixel scenes before any
/// run: light smoothing, the scikit-image gallery's scale, and a minimum segment a fifth of
/// the smallest object (radius 7 pixels at 64) so that anti-aliased rims join a neighbour.
pub const FELZENSZWALB: og_segment::FelzenszwalbConfig = og_segment::FelzenszwalbConfig {
    scale: 100.0,
    sigma: 0.5,
    min_size: 30,
    max_pixels: 1 << 20,
};

impl WorldConfig {
    /// The nano preset: small enough for the whole experiment in minutes on two cores.
    pub fn nano(seed: u64) -> Self {
        Self {
            seed,
            image_size: 64,
            train_scenes: 600,
            eval_scenes: 200,
            heldout_pairs: 6,
            min_objects: 2,
            max_objects: 4,
            striped: 0.15,
            noisy_masks: true,
            felzenszwalb_masks: true,
        }
    }

    /// The small preset: more scenes and pixels, for stronger numbers.
    pub fn small(seed: u64) -> Self {
        Self {
            image_size: 80,
            train_scenes: 4000,
            eval_scenes: 600,
            max_objects: 5,
            ..Self::nano(seed)
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorldSummary {
    pub config: WorldConfig,
    pub heldout: Vec<(Colour, Shape)>,
    pub align_rows: usize,
    pub sft_rows: usize,
    pub eval_relation: usize,
    pub eval_attribution: usize,
    pub eval_order: usize,
    pub eval_mmvp_pairs: usize,
    /// Items of `eval/tasks.jsonl` (every SFT question kind on evaluation scenes) and
    /// `eval/tasks_fit.jsonl` (the same on training scenes).
    #[serde(default)]
    pub eval_tasks: usize,
    #[serde(default)]
    pub fit_tasks: usize,
}

/// The held-out (colour, shape) pairs of a seed.
pub fn heldout_pairs(seed: u64, n: usize) -> Vec<(Colour, Shape)> {
    let mut all: Vec<(Colour, Shape)> = Colour::ALL
        .iter()
        .flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s)))
        .collect();
    let mut rng = SplitMix64(seed ^ 0x0005_eed4_e1d0_u64);
    for k in (1..all.len()).rev() {
        all.swap(k, rng.below(k + 1));
    }
    let mut chosen = Vec::new();
    // At most one held-out shape per colour, so every colour and shape is still seen.
    for (c, s) in all {
        if chosen.len() == n {
            break;
        }
        if !chosen.iter().any(|&(c2, s2)| c2 == c || s2 == s) || chosen.len() >= Shape::ALL.len() {
            chosen.push((c, s));
        }
    }
    chosen.sort();
    chosen
}

fn save_png(img: &image::RgbImage, path: &Path) -> R<()> {
    img.save(path).map_err(|e| WorldError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn save_masks(masks: &[og_segment::Bitmap], path: &Path) -> R<()> {
    let set = MaskSet::from_bitmaps(masks).map_err(|e| WorldError::Invalid(e.to_string()))?;
    set.write_coco_json(path, CountsFormat::Compressed)
        .map_err(|e| WorldError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The Felzenszwalb masks of a rendered image ([`FELZENSZWALB`]).
fn save_felzenszwalb(img: &image::RgbImage, path: &Path) -> R<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    FELZENSZWALB
        .segment(img.as_raw(), w, h)
        .and_then(|set| set.write_coco_json(path, CountsFormat::Compressed))
        .map_err(|e| WorldError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Segmenter-like corruption: with some probability two touching masks merge, a mask grows by
/// one pixel, or a small mask is lost.
fn noisy(masks: &[og_segment::Bitmap], rng: &mut SplitMix64) -> Vec<og_segment::Bitmap> {
    let (h, w) = (masks[0].height(), masks[0].width());
    let mut out: Vec<og_segment::Bitmap> = masks.to_vec();
    if out.len() >= 2 && rng.below(4) == 0 {
        let (a, b) = (out.remove(1), out.remove(0));
        out.insert(
            0,
            og_segment::Bitmap::from_fn(h, w, |y, x| a.get(y, x) || b.get(y, x)),
        );
    }
    out = out
        .into_iter()
        .map(|m| {
            if rng.below(3) == 0 {
                og_segment::Bitmap::from_fn(h, w, |y, x| {
                    m.get(y, x)
                        || (y > 0 && m.get(y - 1, x))
                        || (y + 1 < h && m.get(y + 1, x))
                        || (x > 0 && m.get(y, x - 1))
                        || (x + 1 < w && m.get(y, x + 1))
                })
            } else {
                m
            }
        })
        .collect();
    if out.len() >= 2 && rng.below(6) == 0 {
        let k = rng.below(out.len());
        out.remove(k);
    }
    out
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> R<()> {
    let text = serde_json::to_string_pretty(value).expect("json");
    og_segment::write_atomic(path, text.as_bytes()).map_err(|e| WorldError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) -> R<()> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    og_segment::write_atomic(path, text.as_bytes()).map_err(|e| WorldError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Generates the world into `out` (created; existing files are overwritten).
pub fn generate(cfg: &WorldConfig, out: &Path) -> R<WorldSummary> {
    if cfg.min_objects < 2 || cfg.max_objects < cfg.min_objects || cfg.max_objects > 5 {
        return Err(WorldError::Invalid(
            "objects per scene must satisfy 2 ≤ min ≤ max ≤ 5".into(),
        ));
    }
    if cfg.image_size < 32 {
        return Err(WorldError::Invalid("image_size must be at least 32".into()));
    }
    for d in [
        "images/train",
        "images/eval",
        "masks/train",
        "masks/eval",
        "eval/mmvp",
    ] {
        std::fs::create_dir_all(out.join(d)).map_err(io(&out.join(d)))?;
    }
    if cfg.noisy_masks {
        for d in ["masks_noisy/train", "masks_noisy/eval"] {
            std::fs::create_dir_all(out.join(d)).map_err(io(&out.join(d)))?;
        }
    }
    if cfg.felzenszwalb_masks {
        for d in ["masks_felzenszwalb/train", "masks_felzenszwalb/eval"] {
            std::fs::create_dir_all(out.join(d)).map_err(io(&out.join(d)))?;
        }
    }
    let heldout = heldout_pairs(cfg.seed, cfg.heldout_pairs);
    let is_heldout = |c: Colour, s: Shape| heldout.contains(&(c, s));
    let spec = SceneSpec {
        size: cfg.image_size,
        min_objects: cfg.min_objects,
        max_objects: cfg.max_objects,
        striped: cfg.striped,
    };
    let mut rng = SplitMix64(cfg.seed);
    let mut text_lines = Vec::new();
    let mut align = Vec::new();
    let mut sft = Vec::new();
    let text_path = out.join("captions.jsonl");
    let mut scenes = Vec::new();
    let mut captions =
        std::io::BufWriter::new(std::fs::File::create(&text_path).map_err(io(&text_path))?);
    let seen_only = |c: Colour, s: Shape| !is_heldout(c, s);
    let objects = cfg.min_objects..=cfg.max_objects;
    // Task items draw from their own stream, so the training data does not depend on them.
    let mut task_rng = SplitMix64(cfg.seed ^ 0x7a5c_17e4_0000_u64);
    let fit_scenes = (cfg.eval_scenes / 4).max(1).min(cfg.train_scenes);
    let (mut fit, mut tasks) = (Vec::new(), Vec::new());
    for k in 0..cfg.train_scenes {
        let scene = loop {
            if let Some(s) = Scene::sample(&spec, &mut rng, &seen_only) {
                break s;
            }
        };
        let name = format!("{k:06}");
        let (img, masks) = scene.render();
        save_png(&img, &out.join(format!("images/train/{name}.png")))?;
        save_masks(&masks, &out.join(format!("masks/train/{name}.json")))?;
        if cfg.noisy_masks {
            save_masks(
                &noisy(&masks, &mut rng),
                &out.join(format!("masks_noisy/train/{name}.json")),
            )?;
        }
        if cfg.felzenszwalb_masks {
            save_felzenszwalb(
                &img,
                &out.join(format!("masks_felzenszwalb/train/{name}.json")),
            )?;
        }
        let image = format!("train/{name}.png");
        scenes.push(json!({"image": image, "objects": scene.objects}));
        let cap = text::caption(&scene, &mut rng);
        writeln!(captions, "{}", json!({"image": image, "caption": cap}))
            .map_err(io(&text_path))?;
        text_lines.push(cap.clone());
        align.push(
            json!({"id": format!("align-{name}"), "image": image, "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image."},
            {"from": "gpt", "value": cap}]}),
        );
        let turns = 1 + rng.below(3);
        let mut conv = Vec::new();
        let mut absent = |r: &mut SplitMix64| loop {
            let (c, s) = (Colour::ALL[r.below(8)], Shape::ALL[r.below(5)]);
            if !is_heldout(c, s) {
                break (c, s);
            }
        };
        // LLaVA's SFT mix: some conversations start with a caption request.
        if rng.below(4) == 0 {
            conv.push(json!({"from": "human", "value": "describe the image."}));
            conv.push(json!({"from": "gpt", "value": cap}));
        }
        for _ in 0..turns {
            let (task, q, a) = text::question(&scene, &mut rng, &mut absent);
            // A share of the questions as multiple choice with option letters.
            let (q, a) = if rng.below(4) == 0 {
                text::multiple_choice(task, &q, &a, objects.clone(), &mut rng)
            } else {
                (q, a)
            };
            text_lines.push(format!("{q} {a}"));
            conv.push(json!({"from": "human", "value": q}));
            conv.push(json!({"from": "gpt", "value": a}));
        }
        conv[0]["value"] =
            format!("<image>\n{}", conv[0]["value"].as_str().unwrap_or_default()).into();
        if k < fit_scenes {
            fit.extend(text::task_items(
                &scene,
                &image,
                &format!("fit-{name}"),
                objects.clone(),
                &mut task_rng,
                &mut absent,
            ));
        }
        sft.push(json!({"id": format!("sft-{name}"), "image": image, "conversations": conv}));
    }
    captions.flush().map_err(io(&text_path))?;
    drop(captions);

    // Evaluation scenes: half contain a held-out pair, half none.
    let mut relation = Vec::new();
    let mut attribution = Vec::new();
    let mut order = Vec::new();
    let mut mmvp = vec!["Index,Question,Options,Correct Answer".to_string()];
    let mut mmvp_index = 0;
    for k in 0..cfg.eval_scenes {
        let want_heldout = k % 2 == 1 && !heldout.is_empty();
        let scene = loop {
            if let Some(s) = Scene::sample(&spec, &mut rng, &|_, _| true) {
                let has = s.objects.iter().any(|o| is_heldout(o.colour, o.shape));
                if has == want_heldout {
                    break s;
                }
            }
        };
        let split = if want_heldout { "heldout" } else { "seen" };
        let name = format!("{k:06}");
        let (img, masks) = scene.render();
        save_png(&img, &out.join(format!("images/eval/{name}.png")))?;
        save_masks(&masks, &out.join(format!("masks/eval/{name}.json")))?;
        if cfg.noisy_masks {
            save_masks(
                &noisy(&masks, &mut rng),
                &out.join(format!("masks_noisy/eval/{name}.json")),
            )?;
        }
        if cfg.felzenszwalb_masks {
            save_felzenszwalb(
                &img,
                &out.join(format!("masks_felzenszwalb/eval/{name}.json")),
            )?;
        }
        let image = format!("eval/{name}.png");
        scenes.push(json!({"image": image, "objects": scene.objects}));
        let mut any_pair = |r: &mut SplitMix64| (Colour::ALL[r.below(8)], Shape::ALL[r.below(5)]);
        for mut item in text::task_items(
            &scene,
            &image,
            &format!("eval-{name}"),
            objects.clone(),
            &mut task_rng,
            &mut any_pair,
        ) {
            item["split"] = split.into();
            tasks.push(item);
        }
        if let Some(item) = text::relation_item(&scene, &image, &mut rng) {
            let mut v = serde_json::to_value(item).expect("json");
            v["split"] = split.into();
            relation.push(v);
        }
        if let Some(item) = text::attribution_item(&scene, &image, &mut rng) {
            let mut v = serde_json::to_value(item).expect("json");
            v["split"] = split.into();
            attribution.push(v);
        }
        let mut v = serde_json::to_value(text::order_item(&scene, &image, &mut rng)).expect("json");
        v["split"] = split.into();
        order.push(v);
        if let Some(pair) = text::mmvp_pair(&scene, &mut rng) {
            let mirror = text::mirrored(&scene);
            for (variant, answer) in [(&scene, pair.answers[0]), (&mirror, pair.answers[1])] {
                mmvp_index += 1;
                let (img, masks) = variant.render();
                save_png(&img, &out.join(format!("eval/mmvp/{mmvp_index}.png")))?;
                save_masks(&masks, &out.join(format!("eval/mmvp/{mmvp_index}.json")))?;
                let letter = ["(a)", "(b)"][answer];
                mmvp.push(format!(
                    "{mmvp_index},\"{}\",\"(a) {} (b) {}\",{letter}",
                    pair.question, pair.options[0], pair.options[1]
                ));
            }
        }
    }
    write_json(&out.join("align.json"), &align)?;
    write_json(&out.join("sft.json"), &sft)?;
    write_json(&out.join("eval/vg_relation.json"), &relation)?;
    write_json(&out.join("eval/vg_attribution.json"), &attribution)?;
    write_json(&out.join("eval/coco_order.json"), &order)?;
    write_jsonl(&out.join("eval/tasks.jsonl"), &tasks)?;
    write_jsonl(&out.join("scenes.jsonl"), &scenes)?;
    write_jsonl(&out.join("eval/tasks_fit.jsonl"), &fit)?;
    let csv = out.join("eval/mmvp/Questions.csv");
    og_segment::write_atomic(&csv, (mmvp.join("\n") + "\n").as_bytes()).map_err(|e| {
        WorldError::Write {
            path: csv.clone(),
            message: e.to_string(),
        }
    })?;
    let txt = out.join("text.txt");
    og_segment::write_atomic(&txt, (text_lines.join("\n") + "\n").as_bytes()).map_err(|e| {
        WorldError::Write {
            path: txt.clone(),
            message: e.to_string(),
        }
    })?;
    let summary = WorldSummary {
        config: cfg.clone(),
        heldout,
        align_rows: align.len(),
        sft_rows: sft.len(),
        eval_relation: relation.len(),
        eval_attribution: attribution.len(),
        eval_order: order.len(),
        eval_mmvp_pairs: mmvp_index / 2,
        eval_tasks: tasks.len(),
        fit_tasks: fit.len(),
    };
    write_json(&out.join("world.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(seed: u64) -> WorldConfig {
        WorldConfig {
            train_scenes: 24,
            eval_scenes: 12,
            ..WorldConfig::nano(seed)
        }
    }

    #[test]
    fn generation_is_deterministic_and_heldout_is_disjoint() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = generate(&tiny(3), a.path()).unwrap();
        generate(&tiny(3), b.path()).unwrap();
        for f in [
            "align.json",
            "sft.json",
            "text.txt",
            "eval/vg_relation.json",
            "eval/mmvp/Questions.csv",
            "images/train/000005.png",
            "masks/train/000005.json",
            "masks_noisy/eval/000003.json",
            "masks_felzenszwalb/train/000005.json",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(f)).unwrap(),
                std::fs::read(b.path().join(f)).unwrap(),
                "{f}"
            );
        }
        // The segmenter's masks partition the image and find more than the background.
        for split in ["train/000005", "eval/000003"] {
            let set =
                MaskSet::read_coco_json(a.path().join(format!("masks_felzenszwalb/{split}.json")))
                    .unwrap();
            assert!(set.len() >= 2, "{split}: {} masks", set.len());
            assert_eq!(set.iter().map(|m| m.area()).sum::<u64>(), 64 * 64);
        }
        assert_eq!(s.heldout.len(), 6);
        assert_eq!(s.align_rows, 24);
        // No training text names a held-out pair; held-out evaluation items do.
        let train = std::fs::read_to_string(a.path().join("sft.json")).unwrap()
            + &std::fs::read_to_string(a.path().join("align.json")).unwrap();
        for (c, sh) in &s.heldout {
            let phrase = format!("{} {}", c.word(), sh.word());
            let striped = format!("{} striped {}", c.word(), sh.word());
            assert!(
                !train.contains(&phrase) && !train.contains(&striped),
                "{phrase} in training text"
            );
        }
        let order: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(a.path().join("eval/coco_order.json")).unwrap(),
        )
        .unwrap();
        let heldout_items: Vec<&serde_json::Value> =
            order.iter().filter(|v| v["split"] == "heldout").collect();
        assert_eq!(heldout_items.len(), 6);
        for v in heldout_items {
            let c = v["caption_options"][0].as_str().unwrap();
            assert!(
                s.heldout.iter().any(|(col, sh)| {
                    c.contains(&format!("{} {}", col.word(), sh.word()))
                        || c.contains(&format!("{} striped {}", col.word(), sh.word()))
                }),
                "{c}"
            );
        }
        // Masks read back through the training data path and fit their images.
        let m = MaskSet::read_coco_json(a.path().join("masks/train/000000.json")).unwrap();
        m.expect_size(64, 64).unwrap();
        assert!(generate(&tiny(4), a.path()).is_ok());
        assert_ne!(
            std::fs::read(a.path().join("align.json")).unwrap(),
            std::fs::read(b.path().join("align.json")).unwrap()
        );
    }

    #[test]
    fn heldout_pairs_leave_every_colour_and_shape_seen() {
        for seed in 0..20 {
            let h = heldout_pairs(seed, 6);
            assert_eq!(h.len(), 6);
            for s in Shape::ALL {
                assert!(Colour::ALL.iter().any(|c| !h.contains(&(*c, *s))));
            }
        }
    }
}
