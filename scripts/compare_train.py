#!/usr/bin/env python3
"""Training speed on the CPU: ours (`og-llava train`) vs PyTorch eager (transformers + peft).

The same small LLaVA (CLIP 4×128 @112px/14 → 64 patches, Llama 4×256, vocab 512, random
weights), the same 64 conversations (one image each, 3 prompt words, 16 supervised answer
words), stage 2: projector + LoRA r=16 on q_proj/v_proj of the LLM, batch 4, AdamW, global-norm
clip 0.3, f32, the same number of threads (ours on Flex, the default training backend, unless
OG_DEVICE says otherwise). The plain path (no masks) on both sides, since transformers has no OG path. Ours runs twice: one
replica (burn's ops use the cores inside each op) and one data-parallel replica per core with the
micro-batch split between them (`--devices N`: same global batch, same step). Prints seconds per step (steps 3..N; ours from metrics.jsonl) and
steps/s ours ÷ theirs. Our side includes its loader (image decode, preprocessing, tokenising) in
the step time; PyTorch's batches are prebuilt tensors.

Usage: pip install torch transformers peft pillow && python3 scripts/compare_train.py [STEPS]
(builds target/release/og-llava if needed; OG_DEVICE=flex (default)|ndarray picks our backend;
OG_BLAS=1 builds and runs target-blas/release/og-llava with `--features openblas`: NdArray's
matmuls through the system OpenBLAS, `apt-get install libopenblas-dev`)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VOCAB, IMG, PATCHES, BATCH = 512, 511, 64, 4


def build(dirpath):
    vcfg = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                            image_size=112, patch_size=14, projection_dim=128)
    tcfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=IMG,
                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                      image_seq_length=PATCHES, projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    model.save_pretrained(dirpath)
    vocab = {("<pad>" if i == 0 else "<|begin_of_text|>" if i == 1 else "<|end_of_text|>" if i == 2
              else "<image>" if i == IMG else f"w{i}"): i for i in range(VOCAB)}
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
    tok = {"version": "1.0", "added_tokens": [special(1, "<|begin_of_text|>"), special(2, "<|end_of_text|>"),
                                              special(IMG, "<image>")],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}}
    with open(os.path.join(dirpath, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(dirpath, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                   "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"}, f)
    with open(os.path.join(dirpath, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": 112, "size": 112, "do_center_crop": True, "resample": 3,
                   "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "rescale_factor": 1 / 255}, f)
    return model


def data(dirpath, n=64):
    os.makedirs(os.path.join(dirpath, "images"), exist_ok=True)
    rows, batches = [], []
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        colour = tuple(int(x) for x in torch.randint(0, 256, (3,), generator=g))
        Image.new("RGB", (112, 112), colour).save(os.path.join(dirpath, "images", f"{i}.png"))
        prompt = [int(x) for x in torch.randint(3, 500, (3,), generator=g)]
        answer = [int(x) for x in torch.randint(3, 500, (16,), generator=g)]
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + " ".join(f"w{t}" for t in prompt)},
            {"from": "gpt", "value": " ".join(f"w{t}" for t in answer)}]})
        batches.append(([1] + [IMG] * PATCHES + prompt + answer, [-100] * (1 + PATCHES + 3) + answer))
    with open(os.path.join(dirpath, "data.json"), "w") as f:
        json.dump(rows, f)
    return batches


def pytorch(model, examples, steps, lr=1e-4):
    from peft import LoraConfig, get_peft_model
    for p in model.parameters():
        p.requires_grad_(False)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                            target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    for p in peft.base_model.model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    peft.train()
    times = []
    for step in range(steps):
        batch = [examples[(step * BATCH + k) % len(examples)] for k in range(BATCH)]
        ids = torch.tensor([b[0] for b in batch])
        labels = torch.tensor([b[1] for b in batch])
        pixels = torch.randn(BATCH, 3, 112, 112)
        t0 = time.perf_counter()
        loss = peft(input_ids=ids, pixel_values=pixels, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.3)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return times


def ours(dirpath, steps, replicas=1, device="ndarray"):
    out = os.path.join(dirpath, f"run{replicas}")
    cfg = {"stage": "sft", "base": {"kind": "llava_hf", "path": os.path.join(dirpath, "model")},
           "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
           "data": {"json": os.path.join(dirpath, "data.json"), "images": os.path.join(dirpath, "images"),
                    "workers": 1, "pad_to_square": False},
           "output_dir": out, "model_max_length": 512, "epochs": 100, "max_steps": steps,
           "batch_size": BATCH // replicas, "grad_accumulation": 1, "lr_connector": 1e-4, "lr_lora": 1e-4,
           "warmup_ratio": 0.0, "weight_decay": 0.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
           "max_grad_norm": 0.3, "seed": 0, "checkpoint_every": 1000000}
    path = os.path.join(dirpath, f"run{replicas}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    target = "target-blas" if os.environ.get("OG_BLAS") else "target"
    features = ["--features", "openblas"] if os.environ.get("OG_BLAS") else []
    binary = os.path.join(ROOT, target, "release", "og-llava")
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "og-llava-cli"] + features, cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": os.path.join(ROOT, target)})
    subprocess.run([binary, "train", "--device", device, "--devices", str(replicas),
                    "--config", path], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        m = [json.loads(l) for l in f]
    return [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(m, m[1:])], m


def measure(steps=12, device=None, replicas=None):
    """Milliseconds per step: PyTorch eager + peft, and ours for each replica count (one process;
    `replicas` defaults to 1 and, when the batch divides, one replica per core)."""
    device = device or os.environ.get("OG_DEVICE", "flex")
    cores = os.cpu_count()
    replicas = replicas or sorted({1, cores if BATCH % cores == 0 else 1})
    torch.set_num_threads(cores)
    with tempfile.TemporaryDirectory() as d:
        model = build(os.path.join(d, "model"))
        examples = data(d)
        theirs = pytorch(model, examples, steps)[2:]
        result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                  "blas": bool(os.environ.get("OG_BLAS")), "steps": steps,
                  "pytorch_step_s": sum(theirs) / len(theirs), "ours": {}}
        for n in replicas:
            mine, m = ours(d, steps, n, device)
            mine = mine[1:]
            part = lambda k: sum(x[k] for x in m[2:]) / len(m[2:])
            result["ours"][str(n)] = {
                "step_s": sum(mine) / len(mine), "tokens_per_s": m[-1]["tokens_per_s"],
                "final_loss": m[-1]["loss"], "data_s": part("data_s"), "forward_s": part("forward_s"),
                "backward_s": part("backward_s"), "optimizer_s": part("optimizer_s")}
    return result


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    m = measure(steps)
    t = m["pytorch_step_s"]
    print(f"PyTorch eager: {t * 1000:.1f} ms/step ({steps - 2} steps, {m['threads']} threads)")
    blas = " + OpenBLAS" if m["blas"] else ""
    for n, r in m["ours"].items():
        n = int(n)
        print(f"ours ({m['device']}{blas}, {n} replica(s) × batch {BATCH // n}): {r['step_s'] * 1000:.1f} ms/step, "
              f"{r['tokens_per_s']:.0f} supervised tok/s, final loss {r['final_loss']:.3f}")
        print(f"  steps/s ours / theirs = {t / r['step_s']:.2f}")
        print(f"  ours per step (replica 0): data wait {r['data_s'] * 1000:.1f} ms, forward {r['forward_s'] * 1000:.1f} ms, "
              f"backward {r['backward_s'] * 1000:.1f} ms, optimiser + all-reduce {r['optimizer_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
