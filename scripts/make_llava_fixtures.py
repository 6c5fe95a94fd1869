#!/usr/bin/env python3
"""Dev-time fixture for the composed model (tests never run Python).

Runs transformers' LlavaForConditionalGeneration (fixtures/vision/llava_tiny) on two prompts of
different lengths, each with one image (its 25 visual tokens written as 25 image-token ids, as
transformers expects), right-padded, and saves inputs and logits to
fixtures/llava/llava_tiny_io.safetensors.

Usage: pip install torch transformers safetensors && python3 scripts/make_llava_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def main():
    model = LlavaForConditionalGeneration.from_pretrained(os.path.join(ROOT, "vision", "llava_tiny")).eval()
    img = model.config.image_token_index
    v = 25
    torch.manual_seed(3)
    pixel_values = torch.randn(2, 3, 30, 30)
    a = [1, 5, 6] + [img] * v + [7, 8, 9, 10]
    b = [1, 11] + [img] * v + [12, 13]
    t = max(len(a), len(b))
    ids = torch.zeros(2, t, dtype=torch.long)
    mask = torch.zeros(2, t, dtype=torch.long)
    for i, row in enumerate((a, b)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits
    os.makedirs(os.path.join(ROOT, "llava"), exist_ok=True)
    save_file({"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values.contiguous(),
               "logits": logits.contiguous()}, os.path.join(ROOT, "llava", "llava_tiny_io.safetensors"))
    print("llava fixture written", tuple(logits.shape))
    # Two images in one prompt (transformers consumes pixel_values in placeholder order).
    multi = [1, 5] + [img] * v + [6, 7] + [img] * v + [8]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([multi]), pixel_values=pixel_values).logits
    save_file({"input_ids": torch.tensor(multi), "pixel_values": pixel_values.contiguous(),
               "logits": logits.contiguous()}, os.path.join(ROOT, "llava", "multi_image_io.safetensors"))
    og_path(model)
    released(model)


def released(model):
    """The released OG-LLaVA layout: a LLaVA-style config.json, a PEFT adapter saved as
    adapter_model.bin and non_lora_trainables.bin (torch.save, keys under
    base_model.model.model.: mm_projector.0/.2 and mm_bom_mask_token), over a base Llama
    directory and a separate CLIP tower (fixtures/vision/clip_vision_tiny). Reference logits from
    transformers + peft (unmerged adapter) with OGVT built in PyTorch: the plain grid and mask
    groups each preceded by the BoM token in encoder space."""
    import json
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import listing1
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionModel, LlamaForCausalLM

    out_dir = os.path.join(ROOT, "llava", "released")
    base_dir = os.path.join(ROOT, "llava", "released_base")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(5)
    tcfg = model.config.text_config
    base = LlamaForCausalLM(tcfg).eval()
    base.model.load_state_dict(model.model.language_model.state_dict())
    base.lm_head.load_state_dict(model.lm_head.state_dict())
    base.save_pretrained(base_dir)
    tower = CLIPVisionModel.from_pretrained(os.path.join(ROOT, "vision", "clip_vision_tiny")).eval()
    f, d = tower.config.hidden_size, tcfg.hidden_size

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(base, lora).eval()
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(10.0)
    peft_model.save_pretrained(out_dir, safe_serialization=False)
    os.remove(os.path.join(out_dir, "README.md"))  # peft's model card: noise in a fixture

    projector = torch.nn.Sequential(torch.nn.Linear(f, d), torch.nn.GELU(), torch.nn.Linear(d, d)).eval()
    bom = torch.randn(1, f)
    trainables = {f"base_model.model.model.mm_projector.{k}": v for k, v in projector.state_dict().items()}
    trainables["base_model.model.model.mm_bom_mask_token.mm_bom_mask_token"] = bom
    torch.save(trainables, os.path.join(out_dir, "non_lora_trainables.bin"))

    cfg = tcfg.to_dict()
    cfg.update({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
                "mm_vision_tower": "clip_vision_tiny", "mm_projector_type": "mlp2x_gelu",
                "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
                "mm_hidden_size": f, "mm_use_im_start_end": False, "mm_use_im_patch_token": False})
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2, default=str)

    torch.manual_seed(6)
    pixel_values = torch.randn(1, 3, 30, 30)
    yy, xx = torch.meshgrid(torch.arange(30), torch.arange(30), indexing="ij")
    masks = torch.stack([
        ((yy - 15) ** 2 + (xx - 15) ** 2) <= 49,
        (yy < 9) & (xx >= 18),
    ])
    prompt = [1, 5, 6, -200, 7, 8, 9]
    emb = peft_model.get_input_embeddings()
    res = {"pixel_values": pixel_values.contiguous(), "masks": masks.to(torch.uint8).contiguous(),
           "input_ids": torch.tensor(prompt)}
    with torch.no_grad():
        feats = tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][0, 1:]
        plain = feats
        groups = torch.cat([torch.cat([bom, feats[listing1(m, 25, 0.5)]], 0) for m in masks], 0)
        for name, y in (("plain", plain), ("og", groups)):
            e = torch.cat([emb(torch.tensor(prompt[:3])), projector(y), emb(torch.tensor(prompt[4:]))], 0)
            res[f"{name}_logits"] = peft_model(inputs_embeds=e.unsqueeze(0)).logits.contiguous()
    save_file(res, os.path.join(ROOT, "llava", "released_io.safetensors"))
    print("released layout fixture written", {k: tuple(v.shape) for k, v in res.items()})


def og_path(model):
    """OGVT built the paper's way (Listing 1 Φ / patch-aligned Φ, row selection, concatenation,
    the checkpoint's projector) fed as inputs_embeds to the language model."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import listing1
    torch.manual_seed(4)
    pixel_values = torch.randn(1, 3, 30, 30)
    yy, xx = torch.meshgrid(torch.arange(30), torch.arange(30), indexing="ij")
    masks = torch.stack([
        ((yy - 8) ** 2 + (xx - 20) ** 2) <= 36,          # a disc
        (yy >= 13) & (yy < 27) & (xx >= 2) & (xx < 11),  # a rectangle
        torch.zeros(30, 30, dtype=torch.bool),            # empty: dropped
        (yy == 29) & (xx == 29),                          # one pixel
    ])
    with torch.no_grad():
        hs = model.model.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        feats = hs[-2][0, 1:]  # [25, 32]

        def patch_aligned(m):
            # identity frame (30 px image, 6 px patches): a patch is kept if it holds a pixel
            cover = m.float().reshape(5, 6, 5, 6).sum(dim=(1, 3)).flatten()
            return cover >= 0.5

        out = {"pixel_values": pixel_values.contiguous(), "masks": masks.to(torch.uint8).contiguous()}
        prompt = [1, 5, 6, model.config.image_token_index, 7, 8, 9]
        out["input_ids"] = torch.tensor(prompt)
        emb = model.get_input_embeddings()
        for name, phi in (("raster", lambda m: listing1(m, 25, 0.5)), ("patch", patch_aligned)):
            rows = [feats[phi(m)] for m in masks if phi(m).any()]
            y = torch.cat(rows, 0)
            ogvt = model.model.multi_modal_projector(y)
            ids = torch.tensor(prompt)
            e = torch.cat([emb(ids[:3]), ogvt, emb(ids[4:])], 0).unsqueeze(0)
            logits = model.model.language_model(inputs_embeds=e).last_hidden_state
            logits = model.lm_head(logits)
            out[f"{name}_logits"] = logits.contiguous()
            out[f"{name}_tokens"] = torch.tensor(y.shape[0])
    save_file(out, os.path.join(ROOT, "llava", "og_path_io.safetensors"))
    print("og path fixture written", {k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
