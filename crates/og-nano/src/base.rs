//! Steps 1–4 of the experiment, shared by every arm: the world, the tokenizer, the frozen tiny
//! CLIP and the pre-trained tiny Llama, reused from the output folder when it holds them for
//! the same configuration.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use og_llava::og_llm::{ChatTokenizer, LlamaConfig, Message, Role};
use og_llava::og_vision::ImageProcessor;
use serde::{Deserialize, Serialize};

use crate::evaluate::read_eval;
use crate::experiment::{ExperimentConfig, ExperimentError, say, step_err};
use crate::pretrain::{PretrainReport, pretrain_clip, pretrain_llm, save_vision};
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
        "llm_layers": cfg.llm_layers, "clip": cfg.clip, "lm": cfg.lm, "seed": cfg.seed,
    })
}

/// Builds (or reuses) the [`Base`] in `out`.
pub fn prepare_base<B: AutodiffBackend>(
    cfg: &ExperimentConfig,
    out: &Path,
    device: &B::Device,
    progress: bool,
) -> Result<Base, ExperimentError> {
    let marker = out.join("base.json");
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Ok(base) = serde_json::from_str::<Base>(&text)
        && base_key(&base.config) == base_key(cfg)
        && out.join("clip/model.safetensors").is_file()
        && out.join("llm/model.safetensors").is_file()
        && out.join("world/scenes.jsonl").is_file()
        && out.join("world/eval/tasks.jsonl").is_file()
    {
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
    let text =
        std::fs::read_to_string(world_dir.join("text.txt")).map_err(step_err("tokenizer"))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // The evaluation texts' words (questions, options, the generation prompts), so no
    // evaluation prompt holds an unknown word (only the vocabulary is learned from them).
    for it in read_eval(&world_dir)? {
        let order: Vec<usize> = (0..it.options.len()).collect();
        lines.push(og_eval::protocol::paper_prompt(&it, &order));
        lines.push(it.question.clone());
        lines.extend(it.options.iter().cloned());
    }
    let llm_dir = out.join("llm");
    let vocab =
        crate::tokenizer::train_tokenizer(&lines, &llm_dir).map_err(step_err("tokenizer"))?;
    let tok = ChatTokenizer::from_dir(&llm_dir).map_err(step_err("tokenizer"))?;
    let (bos, eos) = (tok.bos_id(), tok.eos_id());
    let wrap = |ids: Vec<u32>| -> Vec<u32> { bos.into_iter().chain(ids).chain(eos).collect() };

    say(progress, "3/6 tiny CLIP (contrastive pre-training)");
    let llm_cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: cfg.llm_hidden,
        intermediate_size: cfg.llm_hidden * 8 / 3,
        num_hidden_layers: cfg.llm_layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: cfg.llm_hidden / 4,
        tie_word_embeddings: true,
        bos_token_id: bos,
        eos_token_ids: eos.into_iter().collect(),
        max_position_embeddings: 1024,
        ..LlamaConfig::tiny()
    };
    let processor = ImageProcessor::from_hf_dir(
        out.join("none"),
        cfg.vision.image_size,
        cfg.vision.patch_size,
        false,
    )
    .map_err(step_err("clip"))?;
    let captions_text =
        std::fs::read_to_string(world_dir.join("captions.jsonl")).map_err(step_err("clip"))?;
    let mut pixels = Vec::new();
    let mut captions = Vec::new();
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
        captions.push(wrap(tok.encode(cap, false).map_err(step_err("clip"))?));
    }
    let text_tower = LlamaConfig {
        num_hidden_layers: 1,
        ..llm_cfg.clone()
    };
    let (clip, clip_report) = pretrain_clip::<B>(
        &pixels,
        &captions,
        &cfg.vision,
        &text_tower,
        cfg.vision.hidden_size,
        &cfg.clip,
        device,
    )
    .map_err(step_err("clip"))?;
    save_vision(&clip, &cfg.vision, &out.join("clip")).map_err(step_err("clip"))?;
    drop(clip);

    say(progress, "4/6 tiny Llama (language-model pre-training)");
    let mut sequences: Vec<Vec<u32>> = Vec::new();
    for l in text.lines() {
        sequences.push(wrap(tok.encode(l, false).map_err(step_err("llm"))?));
    }
    // The chat layout too (text-only turns), so stage 2 starts from a model that knows it.
    let sft: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(world_dir.join("sft.json")).map_err(step_err("llm"))?,
    )
    .map_err(step_err("llm"))?;
    for row in &sft {
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
                    t["value"].as_str().unwrap_or("").replace("<image>\n", ""),
                )
            })
            .collect();
        let rendered = tok.render(&msgs, false).map_err(step_err("llm"))?;
        sequences.push(tok.encode(&rendered, false).map_err(step_err("llm"))?);
    }
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
        &marker,
        serde_json::to_string_pretty(&base)
            .expect("json")
            .as_bytes(),
    )
    .map_err(step_err("report"))?;
    Ok(base)
}
