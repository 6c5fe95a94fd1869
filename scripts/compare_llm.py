#!/usr/bin/env python3
"""Decode speed on the CPU: ours (Burn, Flex) vs transformers eager, SmolLM2-135M shape.

Same config, random weights, greedy with KV cache, the same number of threads (the machine's
cores). Prints prefill seconds, decode tokens/s and ours / theirs.

Usage: pip install torch transformers && python3 scripts/compare_llm.py [PROMPT] [NEW]
"""
import json
import statistics
import os
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def measure(prompt=32, new=32, repeats=5, backends=("flex", "ndarray")):
    """Prefill seconds (median of `repeats`) and decode tokens/s, transformers and ours."""
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                      max_position_embeddings=8192, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([[3 + (i * 7) % 1000 for i in range(prompt)]])

    def prefill():
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            return out.past_key_values, out.logits[:, -1:].argmax(-1)

    def run():
        t0 = time.perf_counter()
        past, nxt = prefill()
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(new):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return seconds, new / (time.perf_counter() - t1)

    run()
    theirs_prefill = statistics.median(run()[0] for _ in range(repeats))
    theirs_tps = statistics.median(run()[1] for _ in range(3))
    del model
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "og-llm", "--example", "llm_timing"],
                   cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "examples", "llm_timing")
    ours = {}
    for backend in backends:
        out = subprocess.run([exe, "smollm2", str(prompt), str(new), backend, str(repeats)], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
        ours[backend] = json.loads(out.strip().splitlines()[-1])
    return {"torch": torch.__version__, "threads": threads, "prompt": prompt, "new": new,
            "transformers": {"prefill_s": theirs_prefill, "decode_tok_s": theirs_tps}, "ours": ours}


def main():
    prompt = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    new = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    m = measure(prompt, new)
    t = m["transformers"]
    print(f"torch {m['torch']}, {m['threads']} threads, SmolLM2-135M shape, prompt {prompt}, {new} new tokens")
    print(f"transformers eager: prefill {t['prefill_s']:.3f} s, decode {t['decode_tok_s']:.1f} tok/s")
    for backend, r in m["ours"].items():
        print(f"ours {backend:<7}: prefill {r['prefill_s']:.3f} s ({t['prefill_s'] / r['prefill_s']:.2f}x), "
              f"decode {r['decode_tok_s']:.1f} tok/s ({r['decode_tok_s'] / t['decode_tok_s']:.2f}x)")


if __name__ == "__main__":
    main()
