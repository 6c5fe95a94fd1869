#!/usr/bin/env python3
"""Dev-time fixtures for og-llm (tests never run Python).

Tiny random LlamaForCausalLM checkpoints (save_pretrained) under fixtures/llm/<name>/ and, per
model, <name>_io.safetensors with inputs and transformers' outputs:
  gqa        4 heads / 2 kv heads, default RoPE, untied head, new config spelling
  llama3     head_dim 12 != hidden/heads, 1 kv head, llama3 RoPE scaling, tied head,
             attention and MLP biases
  linear_old linear RoPE scaling written in the old spelling (rope_theta + rope_scaling)

io tensors: input_ids [2,10] (row 1 right-padded after 7), attention_mask, position_ids
(standard), logits; seg_position_ids (segment-aware style) and seg_logits; greedy
(prompt = row 0's first 5 ids, 12 new tokens, no EOS).

Usage: pip install torch transformers safetensors && python3 scripts/make_llm_fixtures.py
"""
import json
import zlib
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "llm")

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.3,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(name, **kw):
    torch.manual_seed(zlib.crc32(name.encode()))
    cfg = LlamaConfig(**{**BASE, **kw})
    model = LlamaForCausalLM(cfg).eval()
    # Random (non-unit) norms so RMSNorm weights are exercised.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            if n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    path = os.path.join(OUT, name)
    model.save_pretrained(path)
    return model, path


def dump(name, model):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 64, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    pos = torch.arange(10).unsqueeze(0).repeat(2, 1)
    seg = torch.tensor([[0, 1, 2, 2, 2, 2, 3, 3, 4, 5], [0, 1, 1, 1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        seg_logits = model(input_ids=ids, attention_mask=mask, position_ids=seg).logits
        prompt = ids[:1, :5]
        greedy = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                pad_token_id=0, use_cache=True)
        greedy_nocache = model.generate(prompt, max_new_tokens=12, do_sample=False,
                                        eos_token_id=None, pad_token_id=0, use_cache=False)
    assert torch.equal(greedy, greedy_nocache)
    save_file({
        "input_ids": ids.to(torch.int64).contiguous(), "attention_mask": mask.contiguous(),
        "position_ids": pos.contiguous(), "logits": logits.contiguous(),
        "seg_position_ids": seg.contiguous(), "seg_logits": seg_logits.contiguous(),
        "greedy": greedy.contiguous(),
    }, os.path.join(OUT, f"{name}_io.safetensors"))


def lora(model):
    """A PEFT LoRA adapter with random A and B (init_lora_weights=False) on the gqa model."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(11)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                     target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg).eval()
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(10.0)  # make the adapter's effect large enough to matter in the test
    peft_model.save_pretrained(os.path.join(OUT, "gqa_lora"))
    os.remove(os.path.join(OUT, "gqa_lora", "README.md"))
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 64, (2, 10), generator=g)
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(OUT, "gqa_lora_io.safetensors"))
    peft_model.unload()


def main():
    os.makedirs(OUT, exist_ok=True)
    m, _ = build("gqa", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    dump("gqa", m)
    lora(m)
    m, _ = build("llama3", num_attention_heads=4, num_key_value_heads=1, head_dim=12,
                 tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                 rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                      low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=16))
    dump("llama3", m)
    _, path = build("linear_old", num_attention_heads=2, num_key_value_heads=2,
                    rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp["rope_theta"]
    cfg["rope_scaling"] = {"type": "linear", "factor": rp["factor"]}
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    reloaded = LlamaForCausalLM.from_pretrained(path).eval()
    dump("linear_old", reloaded)
    print("llm fixtures written")


if __name__ == "__main__":
    main()
