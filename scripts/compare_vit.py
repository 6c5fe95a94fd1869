#!/usr/bin/env python3
"""CLIP ViT-L/14@336 forward on the CPU: ours (Burn, Flex backend) vs transformers eager.

Same config, random weights, batch 1, the same number of threads (2 by default: OMP/torch
threads = the machine's cores). Prints seconds per forward, ours / theirs, and peak RSS.

Usage: pip install torch transformers && python3 scripts/compare_vit.py [REPEATS]
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def measure(repeats=3, backends=("flex", "ndarray")):
    """Median seconds per forward: transformers eager and ours on each backend."""
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=336, patch_size=14)
    model = CLIPVisionModel(cfg).eval()
    x = torch.randn(1, 3, 336, 336)

    def run():
        with torch.inference_mode():
            return model(pixel_values=x, output_hidden_states=True).hidden_states[-2]

    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    theirs = statistics.median(times)
    torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del model
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "og-vision", "--example", "vit_timing"],
                   cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "examples", "vit_timing")
    results = {}
    for backend in backends:
        out = subprocess.run(["/usr/bin/time", "-f", "%M %P", exe, "l336", str(repeats), backend],
                             cwd=ROOT, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rss, cpu = out.stderr.strip().splitlines()[-1].split()
        r["rss_mb"] = int(rss) / 1024
        r["cpu"] = cpu
        results[backend] = r
    return {"torch": torch.__version__, "threads": threads, "transformers_s": theirs,
            "transformers_rss_mb": torch_rss, "ours": results}


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    m = measure(repeats)
    theirs = m["transformers_s"]
    print(f"torch {m['torch']}, {m['threads']} threads, ViT-L/14@336, batch 1")
    print(f"transformers eager (all 24 layers, hidden_states[-2]): {theirs:.3f} s, "
          f"peak RSS {m['transformers_rss_mb']:.0f} MB")
    for b, r in m["ours"].items():
        print(f"ours {b:<7}: X' {r['features_s']:.3f} s (23 layers), all 24 layers {r['all_layers_s']:.3f} s, "
              f"peak RSS {r['rss_mb']:.0f} MB, CPU {r['cpu']}")
        print(f"  speed-up vs transformers: X' {theirs / r['features_s']:.2f}x, same work (24 layers) "
              f"{theirs / r['all_layers_s']:.2f}x")


if __name__ == "__main__":
    main()
