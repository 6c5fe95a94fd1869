#!/usr/bin/env python3
"""Whole training steps in PyTorch, for og-train's step parity test.

The tiny llava-hf fixture (fixtures/vision/llava_tiny) with a PEFT LoRA (r=4, alpha=8, dropout
0) on the language model's q_proj and v_proj, B drawn non-zero so A trains from the first step;
the projector trains too. Two padded prompts with one image each, the answer tokens supervised.
Three steps of: loss (transformers' token mean) → backward → clip_grad_norm_(0.5) →
torch.optim.AdamW(lr 1e-2, betas (0.9, 0.999), eps 1e-8, weight decay 0).

Writes fixtures/train/step_parity.safetensors: the batch (input_ids, attention_mask, labels,
pixel_values), each step's loss and pre-clip gradient norm, and every trainable tensor before
(`init.NAME`) and after (`final.NAME`) the three steps, under og-train's names and in burn's
layout (Linear weights [in, out], LoRA A [in, r], B [r, out]).

Usage: pip install torch transformers peft safetensors && python3 scripts/make_train_fixtures.py
"""
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
STEPS, LR, CLIP = 3, 1e-2, 0.5


def ours(name, tensor):
    """og-train's name and burn's layout for a trainable of the PEFT-wrapped Llava."""
    t = tensor.detach().t().contiguous() if tensor.dim() == 2 else tensor.detach().clone()
    if ".multi_modal_projector." in name:
        return "multi_modal_projector." + name.split(".multi_modal_projector.")[1], t
    layer = name.split(".language_model.")[1].replace(".default", "")
    return "base_model.model.model." + layer, t


def main():
    model = LlavaForConditionalGeneration.from_pretrained(os.path.join(ROOT, "vision", "llava_tiny"))
    img = model.config.image_token_index
    torch.manual_seed(11)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    for p in peft.parameters():
        p.requires_grad_(False)
    params = []
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_(0.0, 0.1)
        if "lora_" in name or "multi_modal_projector" in name:
            p.requires_grad_(True)
            params.append((name, p))
    peft.train()

    v = 25
    a = [1, 5, 6] + [img] * v + [7, 8, 9, 10]
    b = [1, 11] + [img] * v + [12, 13]
    t = max(len(a), len(b))
    ids = torch.zeros(2, t, dtype=torch.long)
    mask = torch.zeros(2, t, dtype=torch.long)
    labels = torch.full((2, t), -100, dtype=torch.long)
    for i, (row, answer) in enumerate(((a, 4), (b, 2))):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        labels[i, len(row) - answer:len(row)] = torch.tensor(row[-answer:])
    pixel_values = torch.randn(2, 3, 30, 30)

    out = {"input_ids": ids, "attention_mask": mask, "labels": labels,
           "pixel_values": pixel_values.contiguous()}
    for name, p in params:
        k, x = ours(name, p)
        out["init." + k] = x
    opt = torch.optim.AdamW([p for _, p in params], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, norms = [], []
    for _ in range(STEPS):
        loss = peft(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_([p for _, p in params], CLIP)))
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    for name, p in params:
        k, x = ours(name, p)
        out["final." + k] = x
    out["losses"] = torch.tensor(losses, dtype=torch.float32)
    out["grad_norms"] = torch.tensor(norms, dtype=torch.float32)
    os.makedirs(os.path.join(ROOT, "train"), exist_ok=True)
    save_file(out, os.path.join(ROOT, "train", "step_parity.safetensors"))
    print("train fixture written: losses", losses, "grad norms", norms)


if __name__ == "__main__":
    main()
