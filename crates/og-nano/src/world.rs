//! Writing a whole world to disk: images, masks, training conversations, text for the
//! tokenizer and language-model pre-training, evaluation sets, and `world.json`.
//!
//! Layout under the output directory:
//! - `images/{train,eval}/NNNNNN.png`; `masks/{train,eval}/NNNNNN.json` (COCO RLE, ground truth
//!   from the renderer); with `noisy_masks`, `masks_noisy/...` (merged, dilated, dropped);
//! - `align.json` (caption conversations, stage 1) and `sft.json` (question–answer
//!   conversations, 1 to `sft_turns` questions (3 in the presets), a quarter starting with a caption request and a quarter of the
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
    /// Object centres on multiples of this many pixels, one radius per size (0: continuous);
    /// see [`SceneSpec::grid`].
    #[serde(default)]
    pub grid: u32,
    /// Questions per SFT conversation: 1 to this many (LLaVA-665k groups the questions of
    /// one image into one multi-turn conversation).
    #[serde(default = "default_sft_turns")]
    pub sft_turns: usize,
}

fn default_sft_turns() -> usize {
    3
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
            grid: 0,
            sft_turns: default_sft_turns(),
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
    create_dirs(cfg, out)?;
    let heldout = heldout_pairs(cfg.seed, cfg.heldout_pairs);
    let mut world = Generator {
        cfg,
        out,
        heldout: heldout.clone(),
        spec: SceneSpec {
            size: cfg.image_size,
            min_objects: cfg.min_objects,
            max_objects: cfg.max_objects,
            striped: cfg.striped,
            grid: cfg.grid,
        },
        rng: SplitMix64(cfg.seed),
        // Task items draw from their own stream, so the training data does not depend on them.
        task_rng: SplitMix64(cfg.seed ^ 0x7a5c_17e4_0000_u64),
        scenes: Vec::new(),
    };
    let train = world.training_scenes()?;
    let eval = world.evaluation_scenes()?;
    write_json(&out.join("align.json"), &train.align)?;
    write_json(&out.join("sft.json"), &train.sft)?;
    write_json(&out.join("eval/vg_relation.json"), &eval.relation)?;
    write_json(&out.join("eval/vg_attribution.json"), &eval.attribution)?;
    write_json(&out.join("eval/coco_order.json"), &eval.order)?;
    write_jsonl(&out.join("eval/tasks.jsonl"), &eval.tasks)?;
    write_jsonl(&out.join("scenes.jsonl"), &world.scenes)?;
    write_jsonl(&out.join("eval/tasks_fit.jsonl"), &train.fit)?;
    write_lines(&out.join("eval/mmvp/Questions.csv"), &eval.mmvp)?;
    write_lines(&out.join("text.txt"), &train.text_lines)?;
    let summary = WorldSummary {
        config: cfg.clone(),
        heldout,
        align_rows: train.align.len(),
        sft_rows: train.sft.len(),
        eval_relation: eval.relation.len(),
        eval_attribution: eval.attribution.len(),
        eval_order: eval.order.len(),
        eval_mmvp_pairs: eval.mmvp_images / 2,
        eval_tasks: eval.tasks.len(),
        fit_tasks: train.fit.len(),
    };
    write_json(&out.join("world.json"), &summary)?;
    Ok(summary)
}

/// The output folders `cfg` writes into.
fn create_dirs(cfg: &WorldConfig, out: &Path) -> R<()> {
    let mut dirs = vec![
        "images/train",
        "images/eval",
        "masks/train",
        "masks/eval",
        "eval/mmvp",
    ];
    if cfg.noisy_masks {
        dirs.extend(["masks_noisy/train", "masks_noisy/eval"]);
    }
    if cfg.felzenszwalb_masks {
        dirs.extend(["masks_felzenszwalb/train", "masks_felzenszwalb/eval"]);
    }
    for d in dirs {
        std::fs::create_dir_all(out.join(d)).map_err(io(&out.join(d)))?;
    }
    Ok(())
}

/// `lines`, each ended by a newline, written atomically.
fn write_lines(path: &Path, lines: &[String]) -> R<()> {
    og_segment::write_atomic(path, (lines.join("\n") + "\n").as_bytes()).map_err(|e| {
        WorldError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// What generation shares between its training and evaluation scenes: one scene stream
/// (`rng`, whose draws fix every scene, caption and conversation), the task items' own stream,
/// and every scene's record for `scenes.jsonl`.
struct Generator<'a> {
    cfg: &'a WorldConfig,
    out: &'a Path,
    heldout: Vec<(Colour, Shape)>,
    spec: SceneSpec,
    rng: SplitMix64,
    task_rng: SplitMix64,
    scenes: Vec<serde_json::Value>,
}

/// The training scenes' texts.
struct TrainingTexts {
    text_lines: Vec<String>,
    align: Vec<serde_json::Value>,
    sft: Vec<serde_json::Value>,
    fit: Vec<serde_json::Value>,
}

/// The evaluation scenes' sets.
struct EvaluationSets {
    relation: Vec<serde_json::Value>,
    attribution: Vec<serde_json::Value>,
    order: Vec<serde_json::Value>,
    tasks: Vec<serde_json::Value>,
    /// MMVP's `Questions.csv`, header first.
    mmvp: Vec<String>,
    mmvp_images: usize,
}

impl Generator<'_> {
    fn is_heldout(&self, c: Colour, s: Shape) -> bool {
        self.heldout.contains(&(c, s))
    }

    /// Renders `scene` as `{split}/{name}` and writes its image and every mask set the world
    /// keeps (the noisy ones draw from the scene stream); records the scene.
    fn save_scene(&mut self, scene: &Scene, split: &str, name: &str) -> R<String> {
        let (img, masks) = scene.render();
        let out = self.out;
        save_png(&img, &out.join(format!("images/{split}/{name}.png")))?;
        save_masks(&masks, &out.join(format!("masks/{split}/{name}.json")))?;
        if self.cfg.noisy_masks {
            save_masks(
                &noisy(&masks, &mut self.rng),
                &out.join(format!("masks_noisy/{split}/{name}.json")),
            )?;
        }
        if self.cfg.felzenszwalb_masks {
            save_felzenszwalb(
                &img,
                &out.join(format!("masks_felzenszwalb/{split}/{name}.json")),
            )?;
        }
        let image = format!("{split}/{name}.png");
        self.scenes
            .push(json!({"image": image, "objects": scene.objects}));
        Ok(image)
    }

    /// Training scenes (no held-out pair): images, masks, `captions.jsonl`, and the texts of
    /// stage 1, stage 2 and the fit tasks.
    fn training_scenes(&mut self) -> R<TrainingTexts> {
        let cfg = self.cfg;
        let text_path = self.out.join("captions.jsonl");
        let mut captions =
            std::io::BufWriter::new(std::fs::File::create(&text_path).map_err(io(&text_path))?);
        let fit_scenes = (cfg.eval_scenes / 4).max(1).min(cfg.train_scenes);
        let mut texts = TrainingTexts {
            text_lines: Vec::new(),
            align: Vec::new(),
            sft: Vec::new(),
            fit: Vec::new(),
        };
        for k in 0..cfg.train_scenes {
            let seen_only = |c: Colour, s: Shape| !self.heldout.contains(&(c, s));
            let scene = loop {
                if let Some(s) = Scene::sample(&self.spec, &mut self.rng, &seen_only) {
                    break s;
                }
            };
            let name = format!("{k:06}");
            let image = self.save_scene(&scene, "train", &name)?;
            let cap = text::caption(&scene, &mut self.rng);
            writeln!(captions, "{}", json!({"image": image, "caption": cap}))
                .map_err(io(&text_path))?;
            texts.text_lines.push(cap.clone());
            texts.align.push(
                json!({"id": format!("align-{name}"), "image": image, "conversations": [
                {"from": "human", "value": "<image>\ndescribe the image."},
                {"from": "gpt", "value": cap}]}),
            );
            let conv = self.conversation(&scene, &cap, &mut texts.text_lines);
            if k < fit_scenes {
                let mut absent = |r: &mut SplitMix64| seen_pair(&self.heldout, r);
                texts.fit.extend(text::task_items(
                    &scene,
                    &image,
                    &format!("fit-{name}"),
                    cfg.min_objects..=cfg.max_objects,
                    &mut self.task_rng,
                    &mut absent,
                ));
            }
            texts
                .sft
                .push(json!({"id": format!("sft-{name}"), "image": image, "conversations": conv}));
        }
        captions.flush().map_err(io(&text_path))?;
        Ok(texts)
    }

    /// One SFT conversation about `scene` (1 to `sft_turns` questions, sometimes after a caption request;
    /// a share as multiple choice), its turns' texts added to `text_lines`.
    fn conversation(
        &mut self,
        scene: &Scene,
        cap: &str,
        text_lines: &mut Vec<String>,
    ) -> Vec<serde_json::Value> {
        let heldout = &self.heldout;
        let objects = self.cfg.min_objects..=self.cfg.max_objects;
        let rng = &mut self.rng;
        let turns = 1 + rng.below(self.cfg.sft_turns.max(1));
        let mut conv = Vec::new();
        let mut absent = |r: &mut SplitMix64| seen_pair(heldout, r);
        // LLaVA's SFT mix: some conversations start with a caption request.
        if rng.below(4) == 0 {
            conv.push(json!({"from": "human", "value": "describe the image."}));
            conv.push(json!({"from": "gpt", "value": cap}));
        }
        for _ in 0..turns {
            let (task, q, a) = text::question(scene, rng, &mut absent);
            // A share of the questions as multiple choice with option letters.
            let (q, a) = if rng.below(4) == 0 {
                text::multiple_choice(task, &q, &a, objects.clone(), rng)
            } else {
                (q, a)
            };
            text_lines.push(format!("{q} {a}"));
            conv.push(json!({"from": "human", "value": q}));
            conv.push(json!({"from": "gpt", "value": a}));
        }
        conv[0]["value"] =
            format!("<image>\n{}", conv[0]["value"].as_str().unwrap_or_default()).into();
        conv
    }

    /// Evaluation scenes, half with a held-out pair and half without: the task items and
    /// the ARO- and MMVP-format sets.
    fn evaluation_scenes(&mut self) -> R<EvaluationSets> {
        let mut sets = EvaluationSets {
            relation: Vec::new(),
            attribution: Vec::new(),
            order: Vec::new(),
            tasks: Vec::new(),
            mmvp: vec!["Index,Question,Options,Correct Answer".to_string()],
            mmvp_images: 0,
        };
        for k in 0..self.cfg.eval_scenes {
            let want_heldout = k % 2 == 1 && !self.heldout.is_empty();
            let scene = loop {
                if let Some(s) = Scene::sample(&self.spec, &mut self.rng, &|_, _| true) {
                    let has = s.objects.iter().any(|o| self.is_heldout(o.colour, o.shape));
                    if has == want_heldout {
                        break s;
                    }
                }
            };
            let split = if want_heldout { "heldout" } else { "seen" };
            let name = format!("{k:06}");
            let image = self.save_scene(&scene, "eval", &name)?;
            self.evaluation_items(&scene, &image, &name, split, &mut sets)?;
        }
        Ok(sets)
    }

    /// Every evaluation set's items of one scene, marked with its `split`.
    fn evaluation_items(
        &mut self,
        scene: &Scene,
        image: &str,
        name: &str,
        split: &str,
        sets: &mut EvaluationSets,
    ) -> R<()> {
        let mut any_pair = |r: &mut SplitMix64| (Colour::ALL[r.below(8)], Shape::ALL[r.below(5)]);
        for mut item in text::task_items(
            scene,
            image,
            &format!("eval-{name}"),
            self.cfg.min_objects..=self.cfg.max_objects,
            &mut self.task_rng,
            &mut any_pair,
        ) {
            item["split"] = split.into();
            sets.tasks.push(item);
        }
        let marked = |item: serde_json::Value| {
            let mut v = item;
            v["split"] = split.into();
            v
        };
        let rng = &mut self.rng;
        if let Some(item) = text::relation_item(scene, image, rng) {
            sets.relation
                .push(marked(serde_json::to_value(item).expect("json")));
        }
        if let Some(item) = text::attribution_item(scene, image, rng) {
            sets.attribution
                .push(marked(serde_json::to_value(item).expect("json")));
        }
        let order = text::order_item(scene, image, rng);
        sets.order
            .push(marked(serde_json::to_value(order).expect("json")));
        if let Some(pair) = text::mmvp_pair(scene, rng) {
            let mirror = text::mirrored(scene);
            for (variant, answer) in [(scene, pair.answers[0]), (&mirror, pair.answers[1])] {
                sets.mmvp_images += 1;
                let index = sets.mmvp_images;
                let (img, masks) = variant.render();
                save_png(&img, &self.out.join(format!("eval/mmvp/{index}.png")))?;
                save_masks(&masks, &self.out.join(format!("eval/mmvp/{index}.json")))?;
                let letter = ["(a)", "(b)"][answer];
                sets.mmvp.push(format!(
                    "{index},\"{}\",\"(a) {} (b) {}\",{letter}",
                    pair.question, pair.options[0], pair.options[1]
                ));
            }
        }
        Ok(())
    }
}

/// A (colour, shape) pair drawn until it is not held out (for "no" answers to existence
/// questions on training scenes).
fn seen_pair(heldout: &[(Colour, Shape)], r: &mut SplitMix64) -> (Colour, Shape) {
    loop {
        let (c, s) = (Colour::ALL[r.below(8)], Shape::ALL[r.below(5)]);
        if !heldout.contains(&(c, s)) {
            break (c, s);
        }
    }
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
    fn sft_turns_bounds_the_questions_of_a_conversation() {
        let longest = |turns: usize| {
            let dir = tempfile::tempdir().unwrap();
            let cfg = WorldConfig {
                sft_turns: turns,
                felzenszwalb_masks: false,
                noisy_masks: false,
                ..tiny(5)
            };
            generate(&cfg, dir.path()).unwrap();
            let rows: Vec<serde_json::Value> = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join("sft.json")).unwrap(),
            )
            .unwrap();
            rows.iter()
                .map(|r| {
                    let conv = r["conversations"].as_array().unwrap();
                    let caption = conv[0]["value"]
                        .as_str()
                        .unwrap()
                        .ends_with("describe the image.");
                    conv.len() / 2 - usize::from(caption)
                })
                .max()
                .unwrap()
        };
        assert!(longest(1) == 1);
        assert!((2..=3).contains(&longest(3)));
        assert!((4..=8).contains(&longest(8)));
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
