//! Steps 1–4 of the experiment, shared by every arm: the world, the tokenizer, the frozen tiny
//! CLIP and the pre-trained tiny Llama, reused from the output folder when it holds them for
//! the same configuration.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use og_llava::og_llm::{ChatTokenizer, LlamaConfig, Message, Role};
use og_llava::og_vision::ImageProcessor;
use serde::{Deserialize, Serialize};

use crate::evaluate::read_eval;
use crate::experiment::{ExperimentConfig, ExperimentError, say, step_err};
use crate::pretrain::{
    ClipData, ObjectTarget, PretrainReport, pretrain_clip, pretrain_llm, save_vision,
};
use crate::probe::{object_cells, read_scenes};
use crate::scene::Object;
use crate::world::{WorldSummary, generate};

/// Steps 1–4, shared by every arm: the world, the tokenizer, the frozen tiny CLIP and the
/// pre-trained tiny Llama. Reused from `out` when `base.json` there records the same
/// configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Base {
    pub config: ExperimentConfig,
    pub world: WorldSummary,
    pub vocab_size: usize,
    pub clip: PretrainReport,
    pub lm: PretrainReport,
}

/// What steps 1–4 depend on (stage budgets and evaluation options do not matter to them).
pub(crate) fn base_key(cfg: &ExperimentConfig) -> serde_json::Value {
    serde_json::json!({
        "world": cfg.world, "vision": cfg.vision, "llm_hidden": cfg.llm_hidden,
        "llm_layers": cfg.llm_layers, "clip": cfg.clip, "clip_objects": cfg.clip_objects,
        "lm": cfg.lm, "lm_scene_context": cfg.lm_scene_context, "seed": cfg.seed,
    })
}

/// Builds (or reuses) the [`Base`] in `out`.
pub fn prepare_base<B: AutodiffBackend>(
    cfg: &ExperimentConfig,
    out: &Path,
    device: &B::Device,
    progress: bool,
) -> Result<Base, ExperimentError> {
    if let Some(base) = reusable(cfg, out) {
        say(
            progress,
            "steps 1-4 reused (world, tokenizer, tiny CLIP, tiny Llama)",
        );
        return Ok(base);
    }
    let world_dir = out.join("world");
    say(progress, "1/6 world");
    let world = generate(&cfg.world, &world_dir).map_err(step_err("world"))?;

    say(progress, "2/6 tokenizer");
    let llm_dir = out.join("llm");
    let text =
        std::fs::read_to_string(world_dir.join("text.txt")).map_err(step_err("tokenizer"))?;
    let (vocab, tok) = train_world_tokenizer(&world_dir, &text, &llm_dir)?;
    let llm_cfg = llm_config(cfg, vocab, &tok);

    say(
        progress,
        "3/6 tiny CLIP (contrastive pre-training, object objective if set)",
    );
    let examples = clip_examples(cfg, out, &tok)?;
    let text_tower = LlamaConfig {
        num_hidden_layers: 1,
        ..llm_cfg.clone()
    };
    let (clip, clip_report) = pretrain_clip::<B>(
        &examples.data(),
        &cfg.vision,
        &text_tower,
        cfg.vision.hidden_size,
        &cfg.clip_objects,
        &cfg.clip,
        device,
    )
    .map_err(step_err("clip"))?;
    save_vision(&clip, &cfg.vision, &out.join("clip")).map_err(step_err("clip"))?;
    drop(clip);

    say(progress, "4/6 tiny Llama (language-model pre-training)");
    let sequences = lm_sequences(cfg, &world_dir, &text, &tok)?;
    let (llm, lm_report) =
        pretrain_llm::<B>(&sequences, &llm_cfg, &cfg.lm, device).map_err(step_err("llm"))?;
    llm.save_pretrained(&llm_dir, &llm_cfg)
        .map_err(step_err("llm"))?;
    let base = Base {
        config: cfg.clone(),
        world,
        vocab_size: vocab,
        clip: clip_report,
        lm: lm_report,
    };
    og_segment::write_atomic(
        &out.join("base.json"),
        serde_json::to_string_pretty(&base)
            .expect("json")
            .as_bytes(),
    )
    .map_err(step_err("report"))?;
    Ok(base)
}

/// The [`Base`] in `out` when `base.json` there records the same configuration and its
/// files are all there.
fn reusable(cfg: &ExperimentConfig, out: &Path) -> Option<Base> {
    let text = std::fs::read_to_string(out.join("base.json")).ok()?;
    let base = serde_json::from_str::<Base>(&text).ok()?;
    let complete = [
        "clip/model.safetensors",
        "llm/model.safetensors",
        "world/scenes.jsonl",
        "world/eval/tasks.jsonl",
    ]
    .iter()
    .all(|f| out.join(f).is_file());
    (base_key(&base.config) == base_key(cfg) && complete).then_some(base)
}

/// Trains the world's tokenizer into `llm_dir` on its `text` and the evaluation texts' words
/// (questions, options, the generation prompts), so no evaluation prompt holds an unknown
/// word (only the vocabulary is learned from them). Returns its size and the tokenizer.
fn train_world_tokenizer(
    world_dir: &Path,
    text: &str,
    llm_dir: &Path,
) -> Result<(usize, ChatTokenizer), ExperimentError> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for it in read_eval(world_dir)? {
        let order: Vec<usize> = (0..it.options.len()).collect();
        lines.push(og_eval::protocol::paper_prompt(&it, &order));
        lines.push(it.question.clone());
        lines.extend(it.options.iter().cloned());
    }
    let vocab =
        crate::tokenizer::train_tokenizer(&lines, llm_dir).map_err(step_err("tokenizer"))?;
    let tok = ChatTokenizer::from_dir(llm_dir).map_err(step_err("tokenizer"))?;
    Ok((vocab, tok))
}

/// The tiny Llama of `cfg` over the trained tokenizer.
fn llm_config(cfg: &ExperimentConfig, vocab: usize, tok: &ChatTokenizer) -> LlamaConfig {
    LlamaConfig {
        vocab_size: vocab,
        hidden_size: cfg.llm_hidden,
        intermediate_size: cfg.llm_hidden * 8 / 3,
        num_hidden_layers: cfg.llm_layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: cfg.llm_hidden / 4,
        tie_word_embeddings: true,
        bos_token_id: tok.bos_id(),
        eos_token_ids: tok.eos_id().into_iter().collect(),
        max_position_embeddings: 1024,
        ..LlamaConfig::tiny()
    }
}

/// `ids` between the tokenizer's BOS and EOS.
fn wrap(tok: &ChatTokenizer, ids: Vec<u32>) -> Vec<u32> {
    tok.bos_id()
        .into_iter()
        .chain(ids)
        .chain(tok.eos_id())
        .collect()
}

/// CLIP pre-training's examples, owned (see [`ClipData`]).
struct ClipExamples {
    pixels: Vec<Vec<f32>>,
    captions: Vec<Vec<u32>>,
    objects: Vec<Vec<ObjectTarget>>,
}

impl ClipExamples {
    fn data(&self) -> ClipData<'_> {
        ClipData {
            pixels: &self.pixels,
            captions: &self.captions,
            objects: &self.objects,
        }
    }
}

/// CLIP pre-training's examples from `captions.jsonl`: pixel values, caption ids and (with
/// an active object objective) each image's object targets.
fn clip_examples(
    cfg: &ExperimentConfig,
    out: &Path,
    tok: &ChatTokenizer,
) -> Result<ClipExamples, ExperimentError> {
    let world_dir = out.join("world");
    let processor = ImageProcessor::from_hf_dir(
        out.join("none"),
        cfg.vision.image_size,
        cfg.vision.patch_size,
        false,
    )
    .map_err(step_err("clip"))?;
    let captions_text =
        std::fs::read_to_string(world_dir.join("captions.jsonl")).map_err(step_err("clip"))?;
    let scenes: HashMap<String, Vec<Object>> = if cfg.clip_objects.is_active() {
        read_scenes(&world_dir)
            .map_err(step_err("clip"))?
            .into_iter()
            .collect()
    } else {
        HashMap::new()
    };
    let (mut pixels, mut captions, mut objects) = (Vec::new(), Vec::new(), Vec::new());
    for line in captions_text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(step_err("clip"))?;
        let (Some(img), Some(cap)) = (v["image"].as_str(), v["caption"].as_str()) else {
            continue;
        };
        let image = og_llava::og_vision::load_rgb(world_dir.join("images").join(img))
            .map_err(step_err("clip"))?;
        let (data, _) = processor.pixel_data(&image).map_err(step_err("clip"))?;
        pixels.push(
            data.to_vec::<f32>()
                .map_err(|e| step_err("clip")(format!("{e:?}")))?,
        );
        captions.push(wrap(tok, tok.encode(cap, false).map_err(step_err("clip"))?));
        if cfg.clip_objects.is_active() {
            let scene = scenes
                .get(img)
                .ok_or_else(|| step_err("clip")(format!("{img} is not in scenes.jsonl")))?;
            objects.push(
                object_targets(&world_dir, img, scene, &image, cfg).map_err(step_err("clip"))?,
            );
        }
    }
    Ok(ClipExamples {
        pixels,
        captions,
        objects,
    })
}

/// The language model's pre-training sequences: every sentence of the world's `text`, and the
/// SFT conversations in the chat layout with their images left out (so stage 2 starts from a
/// model that knows the layout) — and, with `lm_scene_context`, once more with each image's
/// scene in words where the image was.
fn lm_sequences(
    cfg: &ExperimentConfig,
    world_dir: &Path,
    text: &str,
    tok: &ChatTokenizer,
) -> Result<Vec<Vec<u32>>, ExperimentError> {
    let scenes: HashMap<String, String> = if cfg.lm_scene_context {
        read_scenes(world_dir)
            .map_err(step_err("llm"))?
            .into_iter()
            .map(|(image, objects)| {
                let scene = crate::scene::Scene {
                    size: cfg.world.image_size,
                    background: [0; 3],
                    objects,
                };
                (image, crate::text::description(&scene))
            })
            .collect()
    } else {
        HashMap::new()
    };
    let mut sequences: Vec<Vec<u32>> = Vec::new();
    for l in text.lines() {
        sequences.push(wrap(tok, tok.encode(l, false).map_err(step_err("llm"))?));
    }
    let sft: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(world_dir.join("sft.json")).map_err(step_err("llm"))?,
    )
    .map_err(step_err("llm"))?;
    for row in &sft {
        let described = row["image"].as_str().and_then(|i| scenes.get(i));
        for image in std::iter::once("").chain(described.map(|d| format!("{d}\n")).as_deref()) {
            let msgs: Vec<Message> = row["conversations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let role = if t["from"] == "human" {
                        Role::User
                    } else {
                        Role::Assistant
                    };
                    Message::new(
                        role,
                        t["value"]
                            .as_str()
                            .unwrap_or("")
                            .replace("<image>\n", image),
                    )
                })
                .collect();
            let rendered = tok.render(&msgs, false).map_err(step_err("llm"))?;
            sequences.push(tok.encode(&rendered, false).map_err(step_err("llm"))?);
        }
    }
    Ok(sequences)
}

/// The object objective's targets for one image: each object's cells (from its ground-truth
/// mask, in scene order) and its class for each of the objective's attributes.
fn object_targets(
    world: &Path,
    image_name: &str,
    objects: &[Object],
    image: &image::RgbImage,
    cfg: &ExperimentConfig,
) -> Result<Vec<ObjectTarget>, String> {
    let path = world.join("masks").join(image_name).with_extension("json");
    let masks = og_llava::og_segment::MaskSet::read_coco_json(&path).map_err(|e| e.to_string())?;
    if masks.len() != objects.len() {
        return Err(format!(
            "{}: {} masks for {} objects",
            path.display(),
            masks.len(),
            objects.len()
        ));
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    Ok(masks
        .masks()
        .iter()
        .zip(objects)
        .map(|(mask, object)| ObjectTarget {
            cells: object_cells(&mask.rle.to_bitmap(), w, h, cfg.vision.grid()),
            labels: cfg
                .clip_objects
                .attributes
                .iter()
                .map(|a| a.label(object, w as f32))
                .collect(),
        })
        .collect())
}
