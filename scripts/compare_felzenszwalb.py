#!/usr/bin/env python3
"""Felzenszwalb: ours (Rust, release, one thread) vs scikit-image, speed and agreement.

On every photo of a folder (default: the fixture photos; pass the full-size ones with
--images), for scikit-image's default parameters and the CLI's: the median time of
scikit-image's `felzenszwalb` here, our criterion time from `cargo bench -p og-segment --bench
felzenszwalb` run on the same folder, and the adjusted Rand index between the two partitions
(ours read back from `og-llava segment`). Ratio = scikit-image time / ours (> 1: faster).

Every photo is decoded once by Pillow and handed to both sides as PNG: JPEG decoders differ
(the `image` crate's and Pillow's libjpeg-turbo disagree on some pixels by a level or two), and
this compares the segmentations, not the decoders.

Usage: pip install scikit-image pillow pycocotools && python3 scripts/compare_felzenszwalb.py
       [--images DIR] [--repeats N]
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.segmentation import felzenszwalb

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Keep in step with crates/og-segment/benches/felzenszwalb.rs.
PARAMS = {"skimage-default": (1.0, 0.8, 20), "cli-default": (500.0, 0.8, 200)}


def photos(folder):
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*"))
                   if p.lower().endswith((".png", ".jpg")) and "_labels" not in p)
    return {os.path.splitext(os.path.basename(p))[0]: p for p in paths}


def ari(a, b):
    """Adjusted Rand index of two label maps."""
    _, ia = np.unique(a.ravel(), return_inverse=True)
    _, ib = np.unique(b.ravel(), return_inverse=True)
    joint = np.bincount(ia * (ib.max() + 1) + ib)
    pairs = lambda n: (n * (n - 1) / 2.0).sum()
    index, sa, sb = pairs(joint), pairs(np.bincount(ia)), pairs(np.bincount(ib))
    expected = sa * sb / (ia.size * (ia.size - 1) / 2.0)
    top = (sa + sb) / 2.0
    return 1.0 if top == expected else (index - expected) / (top - expected)


def ours_labels(binary, path, scale, sigma, min_size):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m.json")
        subprocess.run([binary, "segment", "--image", path, "--out", out, "--scale", str(scale),
                        "--sigma", str(sigma), "--min-size", str(min_size), "--max-pixels",
                        str(1 << 29)], check=True, capture_output=True)
        records = json.load(open(out))
    h, w = records[0]["segmentation"]["size"]
    labels = np.full((h, w), -1)
    for k, r in enumerate(records):
        labels[mask_utils.decode(r["segmentation"]).astype(bool)] = k
    return labels


def criterion_seconds(name, params):
    path = os.path.join(ROOT, "target", "criterion", "felzenszwalb", f"{name}_{params}", "new",
                        "estimates.json")
    return json.load(open(path))["median"]["point_estimate"] * 1e-9


def measure(images=None, repeats=5):
    with tempfile.TemporaryDirectory() as decoded:
        for name, path in photos(images or os.path.join(ROOT, "fixtures", "felzenszwalb")).items():
            Image.open(path).convert("RGB").save(os.path.join(decoded, f"{name}.png"))
        return measure_folder(decoded, repeats)


def measure_folder(images, repeats):
    env = dict(os.environ, OG_BENCH_IMAGES=images)
    subprocess.run(["cargo", "bench", "--quiet", "-p", "og-segment", "--bench", "felzenszwalb"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "og-llava-cli"], cwd=ROOT,
                   check=True)
    binary = os.path.join(ROOT, "target", "release", "og-llava")
    rows = []
    for name, path in photos(images).items():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for params, (scale, sigma, min_size) in PARAMS.items():
            run = lambda: felzenszwalb(rgb, scale=scale, sigma=sigma, min_size=min_size,
                                       channel_axis=-1)
            reference = run()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            ours = ours_labels(binary, path, scale, sigma, min_size)
            rows.append({"image": name, "size": list(rgb.shape[:2]), "params": params,
                         "skimage_s": statistics.median(times),
                         "ours_s": criterion_seconds(name, params),
                         "segments": [int(ours.max()) + 1, int(reference.max()) + 1],
                         "identical": bool((ours == reference).all()),
                         "ari": ari(ours, reference)})
            rows[-1]["ratio"] = rows[-1]["skimage_s"] / rows[-1]["ours_s"]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rows = measure(a.images, a.repeats)
    print("| image | H×W | parameters | scikit-image | ours | ratio | segments (ours/skimage) | "
          "identical | ARI |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['size'][0]}×{r['size'][1]} | {r['params']} | "
              f"{r['skimage_s'] * 1e3:.1f} ms | {r['ours_s'] * 1e3:.1f} ms | {r['ratio']:.2f}× | "
              f"{r['segments'][0]}/{r['segments'][1]} | {r['identical']} | {r['ari']:.6f} |")
    geo = float(np.exp(np.mean([np.log(r["ratio"]) for r in rows])))
    print(f"\ngeometric mean ratio {geo:.2f}× over {len(rows)} runs")


if __name__ == "__main__":
    main()
