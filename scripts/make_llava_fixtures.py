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


if __name__ == "__main__":
    main()
