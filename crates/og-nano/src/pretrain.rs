//! Steps 2 and 3 of the experiment: a tiny CLIP pre-trained contrastively on the world's
//! image–caption pairs (then frozen — the paper's premise is a frozen retrieval-trained
//! encoder), and a tiny Llama pre-trained on the world's text. Both are written as
//! `save_pretrained` directories that [`og_llava::OgLlava::from_parts`] loads.

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Int, Tensor, TensorData};
use og_fs::SplitMix64;
use og_llava::og_llm::{LlamaConfig, LlamaForCausalLM};
use og_llava::og_vision::clip::{ClipVisionConfig, ClipVisionTransformer};
use og_train::optim::lr_at;

use crate::probe::Attribute;

/// Optimisation of a pre-training step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub seed: u64,
    /// Print a progress line every this many steps (0: silent).
    pub log_every: usize,
}

/// What a pre-training run measured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PretrainReport {
    pub steps: usize,
    /// Loss per step.
    pub losses: Vec<f64>,
    pub seconds: f64,
}

impl PretrainReport {
    /// Mean loss of the first and the last `k` steps.
    pub fn first_last(&self, k: usize) -> (f64, f64) {
        let k = k.clamp(1, self.losses.len().max(1));
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        (
            mean(&self.losses[..k.min(self.losses.len())]),
            mean(&self.losses[self.losses.len().saturating_sub(k)..]),
        )
    }
}

fn adamw() -> AdamWConfig {
    // PyTorch's defaults, not burn's (ε 1e-5, weight decay 1e-4).
    AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0)
}

fn progress(what: &str, step: usize, total: usize, loss: f64, t0: Instant, every: usize) {
    if every > 0 && (step.is_multiple_of(every) || step == total) {
        let el = t0.elapsed().as_secs_f64();
        let eta = el / step as f64 * (total - step) as f64;
        eprintln!("{what}: step {step}/{total} loss {loss:.4} ({el:.0}s, ETA {eta:.0}s)");
    }
}

/// The loop both pre-trainings share: `steps` AdamW steps on `loss(model, rng)` with warm-up
/// + cosine, the backend seeded first, a progress line every `log_every` steps.
fn fit<B: AutodiffBackend, M: AutodiffModule<B>>(
    mut model: M,
    train: &PretrainConfig,
    what: &str,
    mut loss: impl FnMut(&M, &mut SplitMix64) -> og_llava::og_llm::Result<Tensor<B, 1>>,
) -> og_llava::og_llm::Result<(M::InnerModule, PretrainReport)> {
    let mut optim = adamw().init::<B, M>();
    let mut rng = SplitMix64(train.seed);
    let mut report = PretrainReport::default();
    let t0 = Instant::now();
    for step in 0..train.steps {
        let l = loss(&model, &mut rng)?;
        let value: f64 = l.clone().into_scalar().elem();
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(
            lr_at(train.lr, step, train.steps, train.warmup_ratio),
            model,
            grads,
        );
        report.losses.push(value);
        progress(what, step + 1, train.steps, value, t0, train.log_every);
    }
    report.steps = train.steps;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok((model.valid(), report))
}

/// Right-pads id rows with 0; returns rows, padding flags `[b, t]` and lengths.
fn pad(rows: &[&Vec<u32>]) -> (Vec<Vec<u32>>, Vec<bool>, Vec<usize>) {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let mut out = Vec::with_capacity(rows.len());
    let mut padding = Vec::with_capacity(rows.len() * t);
    for r in rows {
        let mut v = (*r).clone();
        v.resize(t, 0);
        padding.extend((0..t).map(|j| j >= r.len()));
        out.push(v);
    }
    (out, padding, rows.iter().map(|r| r.len()).collect())
}

/// Mean next-token cross-entropy over the real tokens of `rows`.
pub fn lm_loss<B: Backend>(
    model: &LlamaForCausalLM<B>,
    rows: &[&Vec<u32>],
    device: &B::Device,
) -> og_llava::og_llm::Result<Tensor<B, 1>> {
    let (ids, padding, lens) = pad(rows);
    let (b, t) = (ids.len(), ids[0].len());
    let positions: Vec<Vec<i64>> = vec![(0..t as i64).collect(); b];
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [b, t]), device);
    let hidden = model.forward_hidden(model.embed(&ids)?, &positions, Some(mask), None)?;
    let mut pick = Vec::new();
    let mut targets = Vec::new();
    for (i, row) in ids.iter().enumerate() {
        for (j, &tok) in row.iter().enumerate().take(lens[i]).skip(1) {
            pick.push((i * t + j - 1) as i64);
            targets.push(tok as i64);
        }
    }
    let n = pick.len();
    let d = hidden.dims()[2];
    let h = hidden.reshape([b * t, d]).select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(pick, [n]), device),
    );
    let logp = log_softmax(model.head(h.unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0), 1);
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
    Ok(logp.gather(1, tgt).neg().mean())
}

/// Pre-trains `cfg`'s Llama from scratch on token sequences (each BOS … EOS).
pub fn pretrain_llm<B: AutodiffBackend>(
    sequences: &[Vec<u32>],
    cfg: &LlamaConfig,
    train: &PretrainConfig,
    device: &B::Device,
) -> og_llava::og_llm::Result<(LlamaForCausalLM<B::InnerBackend>, PretrainReport)> {
    B::seed(device, train.seed);
    let model: LlamaForCausalLM<B> = cfg.init(device)?;
    fit(model, train, "llm", |m, rng| {
        let rows: Vec<&Vec<u32>> = (0..train.batch_size)
            .map(|_| &sequences[rng.below(sequences.len())])
            .collect();
        lm_loss(m, &rows, device)
    })
}

/// An object objective beside the contrastive one: each object's mean patch feature — the
/// layer the connector reads, over the cells [`crate::probe::object_cells`] picks — classified
/// by a linear head into each attribute's classes; the attributes' cross-entropies, summed and
/// times `weight`, are added to the contrastive loss. Captions name shapes and sizes, but a
/// batch's images can be told apart by their colours alone, and contrastive pre-training at
/// this scale leaves shape and size out of the patch features (the probe measures it); this
/// objective supervises them directly, as detection-style training does for region features. Empty
/// `attributes` (the default): contrastive only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectObjective {
    pub attributes: Vec<Attribute>,
    pub weight: f64,
}

impl ObjectObjective {
    pub fn is_active(&self) -> bool {
        !self.attributes.is_empty() && self.weight > 0.0
    }

    fn classes(&self) -> usize {
        self.attributes.iter().map(|a| a.classes()).sum()
    }
}

/// One object of a pre-training image: the patch cells that stand for it and its class for
/// each of the objective's attributes (in their order).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectTarget {
    pub cells: Vec<usize>,
    pub labels: Vec<usize>,
}

/// A tiny CLIP: vision tower, a causal text transformer pooled at its last token, projections
/// and a learned temperature (symmetric InfoNCE, Radford et al.), and the head of the
/// [`ObjectObjective`] when it is active.
#[derive(Module, Debug)]
pub struct TinyClip<B: Backend> {
    pub vision: ClipVisionTransformer<B>,
    pub text: LlamaForCausalLM<B>,
    pub visual_projection: Linear<B>,
    pub text_projection: Linear<B>,
    /// log(1/τ), initialised to log(1/0.07) and clamped at log(100).
    pub logit_scale: Param<Tensor<B, 1>>,
    pub object_head: Option<Linear<B>>,
}

impl<B: Backend> TinyClip<B> {
    pub fn new(
        vision: &ClipVisionConfig,
        text: &LlamaConfig,
        embed: usize,
        objective: &ObjectObjective,
        device: &B::Device,
    ) -> og_llava::og_llm::Result<Self> {
        let vision_tower = vision
            .init(device)
            .map_err(|e| og_llava::og_llm::LlmError::Config(e.to_string()))?;
        Ok(Self {
            vision: vision_tower,
            text: text.init(device)?,
            visual_projection: LinearConfig::new(vision.hidden_size, embed)
                .with_bias(false)
                .init(device),
            text_projection: LinearConfig::new(text.hidden_size, embed)
                .with_bias(false)
                .init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats([(1.0f32 / 0.07).ln()], device)),
            object_head: objective
                .is_active()
                .then(|| LinearConfig::new(vision.hidden_size, objective.classes()).init(device)),
        })
    }

    fn normalise(x: Tensor<B, 2>) -> Tensor<B, 2> {
        let n = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-6);
        x / n
    }

    /// The symmetric contrastive loss of a batch of matching (image, caption) pairs, plus the
    /// [`ObjectObjective`] over `objects` (each image's objects) when the model has its head
    /// (built for an active objective).
    pub fn loss(
        &self,
        pixels: Tensor<B, 4>,
        captions: &[&Vec<u32>],
        objects: &[&[ObjectTarget]],
        objective: &ObjectObjective,
        device: &B::Device,
    ) -> og_llava::og_llm::Result<Tensor<B, 1>> {
        let (features, img) = self
            .vision
            .features_and_pooled(pixels)
            .map_err(|e| og_llava::og_llm::LlmError::Input(e.to_string()))?;
        let contrastive = self.contrastive(img, captions, device)?;
        Ok(match &self.object_head {
            Some(head) => {
                contrastive
                    + self.object_loss(head, features, objects, objective, device)?
                        * objective.weight
            }
            None => contrastive,
        })
    }

    /// The objective's cross-entropies, summed over its attributes (unweighted).
    ///
    /// # Shapes
    /// `features`: `[batch, V, F]`
    fn object_loss(
        &self,
        head: &Linear<B>,
        features: Tensor<B, 3>,
        objects: &[&[ObjectTarget]],
        objective: &ObjectObjective,
        device: &B::Device,
    ) -> og_llava::og_llm::Result<Tensor<B, 1>> {
        let [b, v, f] = features.dims();
        if objects.len() != b {
            return Err(og_llava::og_llm::LlmError::Input(format!(
                "object targets for {} images, a batch of {b}",
                objects.len()
            )));
        }
        // Row k of `pool` averages object k's cells of its image.
        let targets: Vec<(usize, &ObjectTarget)> = objects
            .iter()
            .enumerate()
            .flat_map(|(i, objs)| {
                objs.iter()
                    .filter(|o| !o.cells.is_empty())
                    .map(move |o| (i, o))
            })
            .collect();
        let n = targets.len();
        if n == 0 {
            return Ok(Tensor::zeros([1], device));
        }
        let mut pool = vec![0f32; n * b * v];
        for (k, (i, o)) in targets.iter().enumerate() {
            let cells: Vec<usize> = o.cells.iter().copied().filter(|&c| c < v).collect();
            for &c in &cells {
                pool[k * b * v + i * v + c] = 1.0 / cells.len() as f32;
            }
        }
        let pool = Tensor::<B, 2>::from_data(TensorData::new(pool, [n, b * v]), device);
        let logits = head.forward(pool.matmul(features.reshape([b * v, f])));
        let mut total = Tensor::<B, 1>::zeros([1], device);
        let mut offset = 0;
        for (a, attribute) in objective.attributes.iter().enumerate() {
            let k = attribute.classes();
            let labels: Vec<i64> = targets.iter().map(|(_, o)| o.labels[a] as i64).collect();
            let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
            let logp = log_softmax(logits.clone().slice([0..n, offset..offset + k]), 1);
            total = total + logp.gather(1, tgt).neg().mean();
            offset += k;
        }
        Ok(total)
    }

    /// Symmetric InfoNCE between the pooled images `img` (`[batch, F]`) and the captions.
    fn contrastive(
        &self,
        img: Tensor<B, 2>,
        captions: &[&Vec<u32>],
        device: &B::Device,
    ) -> og_llava::og_llm::Result<Tensor<B, 1>> {
        let b = captions.len();
        let img = Self::normalise(self.visual_projection.forward(img));
        let (ids, padding, lens) = pad(captions);
        let t = ids[0].len();
        let positions: Vec<Vec<i64>> = vec![(0..t as i64).collect(); b];
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [b, t]), device);
        let hidden =
            self.text
                .forward_hidden(self.text.embed(&ids)?, &positions, Some(mask), None)?;
        let d = hidden.dims()[2];
        let last: Vec<i64> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (i * t + l - 1) as i64)
            .collect();
        let pooled = hidden.reshape([b * t, d]).select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), device),
        );
        let txt = Self::normalise(self.text_projection.forward(pooled));
        let scale = self
            .logit_scale
            .val()
            .clamp_max(100f32.ln())
            .exp()
            .unsqueeze_dim::<2>(0);
        let logits = img.matmul(txt.transpose()) * scale;
        let diag = Tensor::<B, 1, Int>::arange(0..b as i64, device).reshape([b, 1]);
        let ce = |l: Tensor<B, 2>| log_softmax(l, 1).gather(1, diag.clone()).neg().mean();
        Ok((ce(logits.clone()) + ce(logits.transpose())) / 2.0)
    }
}

/// What a tiny CLIP is pre-trained on: per image, its pixel_values (`[3, S, S]` flattened),
/// its caption's ids and its objects (empty without an object objective).
pub struct ClipData<'a> {
    pub pixels: &'a [Vec<f32>],
    pub captions: &'a [Vec<u32>],
    pub objects: &'a [Vec<ObjectTarget>],
}

/// Pre-trains a [`TinyClip`] on `data` with `objective` beside the contrastive loss.
pub fn pretrain_clip<B: AutodiffBackend>(
    data: &ClipData<'_>,
    vision: &ClipVisionConfig,
    text: &LlamaConfig,
    embed: usize,
    objective: &ObjectObjective,
    train: &PretrainConfig,
    device: &B::Device,
) -> og_llava::og_llm::Result<(TinyClip<B::InnerBackend>, PretrainReport)> {
    let ClipData {
        pixels,
        captions,
        objects,
    } = *data;
    if objective.is_active() && objects.len() != pixels.len() {
        return Err(og_llava::og_llm::LlmError::Input(format!(
            "the object objective needs every image's objects: {} of {} images have them",
            objects.len(),
            pixels.len()
        )));
    }
    B::seed(device, train.seed);
    let model = TinyClip::<B>::new(vision, text, embed, objective, device)?;
    let s = vision.image_size;
    fit(model, train, "clip", |m, rng| {
        // Distinct pairs in a batch (duplicates would be false negatives).
        let mut picks: Vec<usize> = Vec::with_capacity(train.batch_size);
        while picks.len() < train.batch_size.min(pixels.len()) {
            let k = rng.below(pixels.len());
            if !picks.contains(&k) {
                picks.push(k);
            }
        }
        let data: Vec<f32> = picks
            .iter()
            .flat_map(|&k| pixels[k].iter().copied())
            .collect();
        let pv = Tensor::<B, 4>::from_data(TensorData::new(data, [picks.len(), 3, s, s]), device);
        let caps: Vec<&Vec<u32>> = picks.iter().map(|&k| &captions[k]).collect();
        let objs: Vec<&[ObjectTarget]> = if objective.is_active() {
            picks.iter().map(|&k| objects[k].as_slice()).collect()
        } else {
            vec![&[]; picks.len()]
        };
        m.loss(pv, &caps, &objs, objective, device)
    })
}

/// Writes the CLIP vision tower as a `CLIPVisionModel` directory with its
/// `preprocessor_config.json` (resize to the tower's size, CLIP normalisation).
pub fn save_vision<B: Backend>(
    clip: &TinyClip<B>,
    cfg: &ClipVisionConfig,
    dir: &Path,
) -> og_llava::og_vision::Result<()> {
    clip.vision.save_pretrained(dir, cfg)?;
    let pre = serde_json::json!({
        "crop_size": {"height": cfg.image_size, "width": cfg.image_size},
        "size": {"shortest_edge": cfg.image_size},
        "do_center_crop": true, "do_normalize": true, "do_resize": true, "do_rescale": true,
        "resample": 3, "rescale_factor": 1.0 / 255.0,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    });
    std::fs::write(dir.join("preprocessor_config.json"), pre.to_string()).map_err(|source| {
        og_llava::og_vision::VisionError::Io {
            path: dir.join("preprocessor_config.json"),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex<f32>>;

    fn tiny_text(vocab: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size: vocab,
            tie_word_embeddings: true,
            ..LlamaConfig::tiny()
        }
    }

    #[test]
    fn llm_pretraining_learns_and_saves() {
        let device = Default::default();
        // Two repeating sentences: learnable in a few steps.
        let seqs = vec![vec![1, 5, 6, 7, 8, 2], vec![1, 9, 10, 11, 2]];
        let train = PretrainConfig {
            steps: 30,
            batch_size: 2,
            lr: 1e-2,
            warmup_ratio: 0.0,
            seed: 1,
            log_every: 0,
        };
        let cfg = tiny_text(16);
        let (model, report) = pretrain_llm::<A>(&seqs, &cfg, &train, &device).unwrap();
        let (first, last) = report.first_last(3);
        assert!(last < first * 0.5, "{first} → {last}");
        let dir = tempfile::tempdir().unwrap();
        model.save_pretrained(dir.path(), &cfg).unwrap();
        let back = LlamaForCausalLM::<Flex<f32>>::load_hf(dir.path(), &device).unwrap();
        let rows = [&seqs[0]];
        let a: f32 = lm_loss(&model, &rows, &device).unwrap().into_scalar();
        let b: f32 = lm_loss(&back, &rows, &device).unwrap().into_scalar();
        assert!((a - b).abs() < 1e-5);
    }

    #[test]
    fn clip_pretraining_separates_pairs_and_saves_a_loadable_tower() {
        let device = Default::default();
        let vision = ClipVisionConfig {
            image_size: 16,
            patch_size: 8,
            ..ClipVisionConfig::tiny()
        };
        // Four distinct patterns (layer norm makes constant images alike), one-word captions.
        let pixels: Vec<Vec<f32>> = (0..4)
            .map(|k| {
                (0..3 * 16 * 16)
                    .map(|i| ((i * (k + 1) + 5 * k) % 7) as f32 / 3.0 - 1.0)
                    .collect()
            })
            .collect();
        let captions: Vec<Vec<u32>> = (0..4).map(|k| vec![1, 3 + k, 2]).collect();
        let train = PretrainConfig {
            steps: 40,
            batch_size: 4,
            lr: 5e-3,
            warmup_ratio: 0.0,
            seed: 2,
            log_every: 0,
        };
        let data = ClipData {
            pixels: &pixels,
            captions: &captions,
            objects: &[],
        };
        let objective = ObjectObjective::default();
        let (clip, report) = pretrain_clip::<A>(
            &data,
            &vision,
            &tiny_text(16),
            16,
            &objective,
            &train,
            &device,
        )
        .unwrap();
        assert!(clip.object_head.is_none());
        let (first, last) = report.first_last(5);
        assert!(last < first * 0.5, "{first} → {last}");
        let dir = tempfile::tempdir().unwrap();
        save_vision(&clip, &vision, dir.path()).unwrap();
        let back = ClipVisionTransformer::<Flex<f32>>::load_hf(dir.path(), &device).unwrap();
        let pv = Tensor::<Flex<f32>, 4>::from_data(
            TensorData::new(pixels[1].clone(), [1, 3, 16, 16]),
            &device,
        );
        let d: f32 = (clip.vision.pooled(pv.clone()).unwrap() - back.pooled(pv).unwrap())
            .abs()
            .max()
            .into_scalar();
        assert!(d < 1e-5);
    }

    /// Two patch patterns that every caption ignores: only the object objective can tell them
    /// apart, and after training its head does.
    #[test]
    fn the_object_objective_teaches_what_captions_leave_out() {
        let device = Default::default();
        let vision = ClipVisionConfig {
            image_size: 16,
            patch_size: 8,
            ..ClipVisionConfig::tiny()
        };
        // Image k's four cells carry pattern (k >> cell) & 1; captions name only the image.
        let pattern = |p: usize, y: usize, x: usize| {
            if p == 0 {
                ((x + y) % 2) as f32
            } else {
                (y % 2) as f32
            }
        };
        let mut pixels = Vec::new();
        let mut objects = Vec::new();
        for k in 0..8usize {
            let label = |cell: usize| (k >> (cell % 3)) & 1;
            pixels.push(
                (0..3 * 16 * 16)
                    .map(|i| {
                        let (y, x) = ((i / 16) % 16, i % 16);
                        let cell = (y / 8) * 2 + x / 8;
                        pattern(label(cell), y, x) - 0.5 + 0.1 * k as f32
                    })
                    .collect::<Vec<f32>>(),
            );
            objects.push(
                (0..4)
                    .map(|cell| ObjectTarget {
                        cells: vec![cell],
                        labels: vec![label(cell)],
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let captions: Vec<Vec<u32>> = (0..8).map(|k| vec![1, 3 + k as u32, 2]).collect();
        let objective = ObjectObjective {
            attributes: vec![Attribute::Size],
            weight: 1.0,
        };
        let train = PretrainConfig {
            steps: 60,
            batch_size: 8,
            lr: 5e-3,
            warmup_ratio: 0.0,
            seed: 3,
            log_every: 0,
        };
        let data = ClipData {
            pixels: &pixels,
            captions: &captions,
            objects: &objects,
        };
        let (clip, _) = pretrain_clip::<A>(
            &data,
            &vision,
            &tiny_text(16),
            16,
            &objective,
            &train,
            &device,
        )
        .unwrap();
        let head = clip
            .object_head
            .as_ref()
            .expect("an active objective has a head");
        let all: Vec<f32> = pixels.iter().flatten().copied().collect();
        let pv = Tensor::<Flex<f32>, 4>::from_data(TensorData::new(all, [8, 3, 16, 16]), &device);
        let (features, _) = clip.vision.features_and_pooled(pv).unwrap();
        let refs: Vec<&[ObjectTarget]> = objects.iter().map(|o| o.as_slice()).collect();
        let loss: f32 = clip
            .object_loss(head, features, &refs, &objective, &device)
            .unwrap()
            .into_scalar();
        // Chance is ln 2 = 0.69; an untrained head and tower measured 0.49.
        assert!(loss < 0.05, "object loss after training {loss}");
    }
}
