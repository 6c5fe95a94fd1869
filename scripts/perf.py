#!/usr/bin/env python3
"""Every speed comparison against PyTorch in one run: Φ, the CLIP ViT, Llama prefill and decode,
a LoRA SFT training step. Writes `target/perf/perf.json` and `target/perf/perf.md`.

perf.json: `{name: {"ours_s", "reference_s", "ratio", "goal", "backend", ...}}` plus `"meta"`;
ratio = reference seconds / our seconds, so > 1 means faster than PyTorch. Each name is timed by
its comparison script (compare_*.py), in this process, on the same machine, one after another.

Usage: pip install torch transformers peft numpy pycocotools pillow && python3 scripts/perf.py
Environment: PERF_ONLY=vit,decode runs a subset; OG_DEVICE picks the training backend.
"""
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "target", "perf")

# Ratio goals (reference time / ours) this project holds itself to.
GOALS = {"phi": 20.0, "vit": 1.5, "prefill": 1.0, "decode": 2.0, "train_step": 1.0}
# The backend each row reports: the CLI's default for that use (`ask`/`generate`: flex;
# `train`: flex too, listed first; the others are measured too and kept in the row's detail).
INFERENCE_BACKEND = "flex"
TRAIN_BACKENDS = ("flex", "ndarray")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def row(ours_s, reference_s, **extra):
    return {"ours_s": ours_s, "reference_s": reference_s, "ratio": reference_s / ours_s, **extra}


def phi():
    import compare_phi
    m = compare_phi.measure()
    r = m["ours"]
    return {"phi": row(r["raster_phi_only_us"] * 1e-6, m["torch_indices_us"] * 1e-6, backend="host",
                       what=f"Listing 1 → kept indices, {m['masks']} masks {m['size'][0]}×{m['size'][1]}",
                       detail=m)}


def vit():
    import compare_vit
    m = compare_vit.measure(3)
    r = m["ours"][INFERENCE_BACKEND]
    return {"vit": row(r["all_layers_s"], m["transformers_s"], backend=INFERENCE_BACKEND,
                       what="CLIP ViT-L/14@336 forward, batch 1, all 24 layers (transformers computes "
                            "all of them for hidden_states[-2])", detail=m)}


def llm():
    import compare_llm
    m = compare_llm.measure()
    t, r = m["transformers"], m["ours"][INFERENCE_BACKEND]
    shape = f"SmolLM2-135M shape, prompt {m['prompt']}"
    return {
        "prefill": row(r["prefill_s"], t["prefill_s"], backend=INFERENCE_BACKEND, what=shape, detail=m),
        "decode": row(1.0 / r["decode_tok_s"], 1.0 / t["decode_tok_s"], backend=INFERENCE_BACKEND,
                      what=f"{shape}, seconds per generated token ({m['new']} tokens, KV cache)"),
    }


def train_step():
    import compare_train
    runs = {device: compare_train.measure(12, device=device, replicas=[1]) for device in TRAIN_BACKENDS}
    main = runs[TRAIN_BACKENDS[0]]
    r = main["ours"]["1"]
    others = {d: {"ours_s": m["ours"]["1"]["step_s"], "reference_s": m["pytorch_step_s"],
                  "ratio": m["pytorch_step_s"] / m["ours"]["1"]["step_s"]} for d, m in runs.items()}
    return {"train_step": row(r["step_s"], main["pytorch_step_s"], backend=TRAIN_BACKENDS[0],
                              what="small LLaVA, LoRA r=16 SFT step, batch 4, one process",
                              per_backend=others, detail=runs)}


SECTIONS = {"phi": phi, "vit": vit, "llm": llm, "train_step": train_step}


def markdown(results, meta):
    lines = [f"Measured {meta['date']} on {meta['cpu']} ({meta['threads']} threads), torch {meta['torch']}; "
             "ratio = PyTorch time / ours (> 1: faster than PyTorch).", "",
             "| path | ours | PyTorch | ratio | goal | backend |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        fmt = (lambda s: f"{s * 1e6:.0f} µs") if r["ours_s"] < 1e-3 else (lambda s: f"{s * 1e3:.1f} ms")
        goal = GOALS.get(name)
        mark = "" if goal is None else (" ✓" if r["ratio"] >= goal else " ✗")
        lines.append(f"| `{name}` | {fmt(r['ours_s'])} | {fmt(r['reference_s'])} | {r['ratio']:.2f}×{mark} | "
                     f"{'' if goal is None else f'≥ {goal}×'} | {r['backend']} |")
    lines.append("")
    for name, r in results.items():
        each = ", ".join(f"{b} {o['ratio']:.2f}×" for b, o in r.get("per_backend", {}).items())
        lines.append(f"- `{name}`: {r['what']}" + (f" (by backend: {each})" if each else ""))
    return "\n".join(lines) + "\n"


def main():
    import torch
    only = [s for s in os.environ.get("PERF_ONLY", "").split(",") if s]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        sys.exit(f"perf: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "og-llava-cli", "-p", "og-vision",
                    "-p", "og-llm", "-p", "og-fusion", "--examples", "--bins"], cwd=ROOT, check=True)
    results = {}
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        print(f"perf: {name} …", flush=True)
        results.update(fn())
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "threads": os.cpu_count(),
            "torch": torch.__version__, "goals": GOALS}
    for name, r in results.items():
        r["goal"] = GOALS.get(name)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "perf.json"), "w") as f:
        json.dump({**results, "meta": meta}, f, indent=1)
    md = markdown(results, meta)
    with open(os.path.join(OUT, "perf.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"perf: wrote {os.path.relpath(os.path.join(OUT, 'perf.json'), ROOT)} and perf.md")


if __name__ == "__main__":
    main()
