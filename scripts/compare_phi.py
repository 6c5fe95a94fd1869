#!/usr/bin/env python3
"""Φ speed: the paper's Listing 1 in PyTorch vs our Rust Φ, on the same 50 masks.

Generates 50 blob masks at 640x480, times Listing 1 + row selection of X' [576, 1024] in
PyTorch eager (CPU), runs `phi_timing` (Rust, release) on the same masks, prints the ratios.

Usage: pip install torch numpy pycocotools && python3 scripts/compare_phi.py
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import blob_mask, listing1  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def median_us(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def measure(repeats=30):
    """Median microseconds: Listing 1 in PyTorch and our Φ variants on the same 50 masks."""
    rng = np.random.default_rng(7)
    h, w = 480, 640
    masks = [blob_mask(rng, h, w) for _ in range(50)]
    records = []
    for m in masks:
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        records.append({"segmentation": {"size": [h, w], "counts": r["counts"].decode("ascii")}})
    tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(records, tmp)
    tmp.close()

    tmasks = [torch.from_numpy(m) for m in masks]
    features = torch.randn(576, 1024)

    def torch_indices():
        return [torch.nonzero(listing1(m, 576, 0.5)).flatten() for m in tmasks]

    def torch_select():
        return torch.cat([features[listing1(m, 576, 0.5)] for m in tmasks], 0)

    torch_idx_us = median_us(torch_indices, repeats)
    torch_us = median_us(torch_select, repeats)
    try:
        out = subprocess.run(
            ["cargo", "run", "--quiet", "--release", "-p", "og-fusion", "--example", "phi_timing", "--",
             tmp.name, str(repeats)],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    finally:
        os.unlink(tmp.name)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "masks": len(masks),
            "size": [w, h], "torch_indices_us": torch_idx_us, "torch_select_us": torch_us,
            "ours": json.loads(out.strip().splitlines()[-1])}


def main():
    m = measure(int(os.environ.get("REPEATS", "30")))
    rust, torch_idx_us, torch_us = m["ours"], m["torch_indices_us"], m["torch_select_us"]
    w, h = m["size"]
    print(f"torch {m['torch']}, threads {m['threads']}, {m['masks']} masks {w}x{h} -> 576 bins")
    print(f"PyTorch Listing 1 -> indices       : {torch_idx_us:9.1f} us")
    print(f"PyTorch Listing 1 + row selection  : {torch_us:9.1f} us  ({rust['raster_rows']} rows of 1024)")
    for key in ("raster_phi_select_us", "raster_phi_only_us", "raster_from_rle_us", "patch_phi_select_us",
                "read_mask_bytes_us"):
        print(f"Rust {key:<30}: {rust[key]:9.1f} us")
    print(f"speed-up, raster Φ -> indices vs PyTorch           : {torch_idx_us / rust['raster_phi_only_us']:.1f}x (goal >= 20x)")
    print(f"speed-up, raster Φ + row copy vs PyTorch           : {torch_us / rust['raster_phi_select_us']:.1f}x")
    print(f"raster Φ -> indices / reading the mask bytes        : {rust['raster_phi_only_us'] / rust['read_mask_bytes_us']:.2f} (goal <= 2)")
    print(f"raster Φ + row copy / reading the mask bytes        : {rust['raster_phi_select_us'] / rust['read_mask_bytes_us']:.2f}")
    print(f"speed-up, patch Φ + selection vs PyTorch listing  : {torch_us / rust['patch_phi_select_us']:.1f}x")


if __name__ == "__main__":
    main()
