#!/usr/bin/env python3
"""Dev-time fixtures for og-vision (tests never run Python).

Writes under fixtures/vision/:
  clip_vision_tiny/   tiny random CLIPVisionModel (quick_gelu), save_pretrained
  clip_tiny/          tiny random CLIPModel (vision tower with gelu), save_pretrained
  llava_tiny/         tiny random LlavaForConditionalGeneration, save_pretrained
  <name>_io.safetensors  pixel_values and every hidden state (+ llava: projector output)
  preprocess.json     CLIPImageProcessor (PIL bicubic) on fixtures/images/*, sampled pixels

fixtures/images/ holds the four photos of the shared assets (PNG ones stored as lossless WebP).

Usage: pip install torch transformers safetensors pillow && python3 scripts/make_vision_fixtures.py
"""
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig,
                          CLIPVisionModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
OUT = os.path.join(ROOT, "vision")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            image_size=30, patch_size=6, layer_norm_eps=1e-5)


def dump_io(name, vision_model, pixel_values, extra=None):
    with torch.no_grad():
        out = vision_model(pixel_values=pixel_values, output_hidden_states=True)
    tensors = {"pixel_values": pixel_values.contiguous()}
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.clone()
    tensors["last_hidden_state"] = out.last_hidden_state.clone()
    tensors["pooler_output"] = out.pooler_output.contiguous()
    tensors["features"] = out.hidden_states[-2][:, 1:].clone()
    if extra:
        tensors.update(extra(tensors["features"]))
    save_file(tensors, os.path.join(OUT, f"{name}_io.safetensors"))


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    pixel_values = torch.randn(2, 3, TINY["image_size"], TINY["image_size"])

    vcfg = CLIPVisionConfig(**TINY, hidden_act="quick_gelu")
    m = CLIPVisionModel(vcfg).eval()
    m.save_pretrained(os.path.join(OUT, "clip_vision_tiny"))
    dump_io("clip_vision_tiny", m, pixel_values)

    # The whole pipeline on a photo: the tiny tower's own processor (30 px), saved with it.
    tiny_proc = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    tiny_proc.save_pretrained(os.path.join(OUT, "clip_vision_tiny"))
    photo = Image.open(os.path.join(ROOT, "images", "chelsea.webp")).convert("RGB")
    pv = torch.from_numpy(tiny_proc(images=photo, return_tensors="np")["pixel_values"])
    with torch.no_grad():
        hs = m(pixel_values=pv, output_hidden_states=True).hidden_states
    save_file({"pixel_values": pv.contiguous(), "features": hs[-2][:, 1:].clone()},
              os.path.join(OUT, "clip_vision_tiny_chelsea.safetensors"))

    cfg = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(**TINY, hidden_act="gelu"), projection_dim=8)
    m = CLIPModel(cfg).eval()
    m.save_pretrained(os.path.join(OUT, "clip_tiny"))
    dump_io("clip_tiny", m.vision_model, pixel_values)

    lcfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **TINY, hidden_act="quick_gelu"),
        text_config=LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=48,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                max_position_embeddings=64).to_dict(),
        image_token_index=63, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    m = LlavaForConditionalGeneration(lcfg).eval()
    m.save_pretrained(os.path.join(OUT, "llava_tiny"))

    def projector(features):
        with torch.no_grad():
            return {"projector_out": m.model.multi_modal_projector(features).contiguous()}

    dump_io("llava_tiny", m.model.vision_tower, pixel_values, projector)

    # Preprocessing: CLIPImageProcessor as openai/clip-vit-large-patch14-336 configures it.
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              do_center_crop=True, resample=3)
    mean = np.array(proc.image_mean).reshape(3, 1, 1)
    std = np.array(proc.image_std).reshape(3, 1, 1)
    cases = []
    for name in sorted(os.listdir(os.path.join(ROOT, "images"))):
        img = Image.open(os.path.join(ROOT, "images", name)).convert("RGB")
        for mode in ("clip", "llava_pad"):
            src = img
            if mode == "llava_pad":
                w, h = img.size
                bg = tuple(int(x * 255) for x in proc.image_mean)
                s = max(w, h)
                src = Image.new("RGB", (s, s), bg)
                src.paste(img, ((s - w) // 2, (s - h) // 2))
            pv = proc(images=src, return_tensors="np")["pixel_values"][0]
            levels = np.rint((pv * std + mean) * 255.0).clip(0, 255).astype(np.int64)  # [3,S,S]
            ys = list(range(3, 336, 7))
            samples = levels[:, ys][:, :, ys]
            cases.append({"image": name, "mode": mode, "size": 336, "grid_start": 3, "grid_step": 7,
                          "samples": samples.flatten().tolist(),
                          "mean_level": float(levels.mean()),
                          "normalized_first": float(pv[0, 0, 0])})
    with open(os.path.join(OUT, "preprocess.json"), "w") as f:
        json.dump({"cases": cases}, f, separators=(",", ":"))
    print("vision fixtures written")


if __name__ == "__main__":
    main()
