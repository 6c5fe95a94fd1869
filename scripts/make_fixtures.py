#!/usr/bin/env python3
"""Dev-time fixture generator (tests never run Python).

Writes, under fixtures/:
  phi/listing1.json   masks (as pycocotools compressed RLE) and the patch indices the paper's
                      Listing 1 keeps, computed with PyTorch's adaptive_avg_pool1d.
  rle/pycocotools.json masks (row-major bits for small ones) and pycocotools' encoding of them
                      (compressed string, uncompressed counts, area, bbox).

Usage: pip install torch numpy pycocotools && python3 scripts/make_fixtures.py
"""
import json
import os

import numpy as np
import torch
from pycocotools import mask as mask_utils

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def listing1(mask: torch.Tensor, output_size: int, threshold_count: float) -> torch.Tensor:
    """Listing 1 of the paper (the released downsample_mask_to_1d_counts), verbatim semantics."""
    mask_flat = mask.float().flatten().contiguous().unsqueeze(0).unsqueeze(0)
    bin_size = mask.numel() / output_size
    pooled = torch.nn.functional.adaptive_avg_pool1d(mask_flat, output_size).squeeze()
    counts = pooled * bin_size
    return counts >= threshold_count


def blob_mask(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.5, max(h / 2.5, 1.0)), rng.uniform(0.5, max(w / 2.5, 1.0))
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return m


def encode(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return r["counts"].decode("ascii")


def uncompressed_counts(m):
    flat = m.flatten(order="F").astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            run, cur = 0, v
        run += 1
    counts.append(run)
    return counts


def main():
    rng = np.random.default_rng(20261126)
    cases = []
    shapes = [(37, 53), (13, 7), (24, 24), (300, 451), (480, 640), (336, 336), (101, 999)]
    for (h, w) in shapes:
        for kind in ("blob", "noise", "full", "empty", "sparse"):
            if kind == "noise" and h * w > 5000:
                continue
            if kind == "blob":
                m = blob_mask(rng, h, w)
            elif kind == "noise":
                m = rng.random((h, w)) < 0.3
            elif kind == "full":
                m = np.ones((h, w), dtype=bool)
            elif kind == "empty":
                m = np.zeros((h, w), dtype=bool)
            else:
                m = np.zeros((h, w), dtype=bool)
                for _ in range(5):
                    m[rng.integers(0, h), rng.integers(0, w)] = True
            for n in (576, 100):
                for alpha in (0.5, 0.3, 1.0, 2.5, 7.0):
                    kept = listing1(torch.from_numpy(m), n, alpha)
                    cases.append({
                        "height": h, "width": w, "kind": kind, "bins": n, "alpha": alpha,
                        "counts": encode(m),
                        "kept": torch.nonzero(kept).flatten().tolist(),
                    })
    # Boundary cases where PyTorch's f32 arithmetic and exact arithmetic disagree: with
    # L = 41·576 a bin holding one pixel counts 0.99999994 < 1.0 in f32; with L = 23·576 a bin
    # holding seven pixels counts 6.9999995 < 7.0.
    for (h, w, per_bin, alpha) in ((123, 192, 1, 1.0), (96, 138, 7, 7.0)):
        L, n = h * w, 576
        flat = np.zeros(L, dtype=bool)
        for i in range(0, n, 3):
            start = (i * L) // n
            flat[start:start + per_bin] = True
        m = flat.reshape(h, w)
        for a in (alpha, alpha - 1e-3, 0.5):
            kept = listing1(torch.from_numpy(m), n, a)
            cases.append({
                "height": h, "width": w, "kind": "f32-boundary", "bins": n, "alpha": a,
                "counts": encode(m),
                "kept": torch.nonzero(kept).flatten().tolist(),
            })
    os.makedirs(os.path.join(ROOT, "phi"), exist_ok=True)
    with open(os.path.join(ROOT, "phi", "listing1.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, separators=(",", ":"))

    rles = []
    for (h, w) in [(1, 1), (3, 4), (17, 9), (40, 60), (200, 300)]:
        for kind in ("blob", "noise", "full", "empty"):
            if kind == "noise" and h * w > 3000:
                continue
            if kind == "blob":
                m = blob_mask(rng, h, w)
            elif kind == "noise":
                m = rng.random((h, w)) < 0.5
            elif kind == "full":
                m = np.ones((h, w), dtype=bool)
            else:
                m = np.zeros((h, w), dtype=bool)
            r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            entry = {
                "height": h, "width": w, "kind": kind,
                "counts": r["counts"].decode("ascii"),
                "uncompressed": uncompressed_counts(m),
                "area": int(mask_utils.area(r)),
                "bbox": [float(v) for v in mask_utils.toBbox(r)],
            }
            if h * w <= 3000:
                entry["bits"] = "".join("1" if v else "0" for v in m.flatten())
            rles.append(entry)
    # A round trip through frPyObjects: uncompressed → compressed, as COCO tools do.
    h, w = 17, 9
    m = blob_mask(rng, h, w)
    conv = mask_utils.frPyObjects({"size": [h, w], "counts": uncompressed_counts(m)}, h, w)
    rles.append({"height": h, "width": w, "kind": "frPyObjects", "counts": conv["counts"].decode("ascii"),
                 "uncompressed": uncompressed_counts(m), "area": int(mask_utils.area(conv)),
                 "bbox": [float(v) for v in mask_utils.toBbox(conv)],
                 "bits": "".join("1" if v else "0" for v in m.flatten())})
    os.makedirs(os.path.join(ROOT, "rle"), exist_ok=True)
    with open(os.path.join(ROOT, "rle", "pycocotools.json"), "w") as f:
        json.dump({"cases": rles}, f, separators=(",", ":"))
    print(f"{len(cases)} Listing-1 cases, {len(rles)} RLE cases")


if __name__ == "__main__":
    main()
