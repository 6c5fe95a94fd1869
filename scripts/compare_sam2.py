#!/usr/bin/env python3
"""SAM 2 on the CPU: ours (Burn, Flex backend) vs PyTorch, random weights, same threads.

- encoder: the image encoder at SAM 2.1 Hiera-L, 1024 px (transformers' Sam2Model
  `get_image_embeddings`: Hiera, neck, the decoder's high-res projections).
- amg: the whole automatic mask generator on a photo (the sam2 package's
  SAM2AutomaticMaskGenerator, Hiera-L), every candidate mask kept (thresholds 0, no NMS) so
  both sides do the same work whatever random weights predict.

Prints seconds (median of REPEATS after a warm-up), ours / theirs, peak RSS.

Usage: pip install torch transformers pillow; SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2
       python3 scripts/compare_sam2.py [REPEATS] [POINTS_PER_SIDE]
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PHOTO = os.path.join(ROOT, "fixtures", "images", "astronaut.webp")


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_encoder(repeats):
    from transformers import Sam2Config, Sam2Model
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=144, num_attention_heads=2,
                    blocks_per_stage=[2, 6, 36, 4], embed_dim_per_stage=[144, 288, 576, 1152],
                    num_attention_heads_per_stage=[2, 4, 8, 16],
                    window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43],
                    window_positional_embedding_background_size=[7, 7])
    cfg = Sam2Config(vision_config=dict(backbone_config=backbone,
                                        backbone_channel_list=[1152, 576, 288, 144]))
    model = Sam2Model(cfg).eval()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        return median_time(lambda: model.get_image_embeddings(x), repeats)


def torch_amg(repeats, points):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2
    model = build_sam2("configs/sam2.1/sam2.1_hiera_l.yaml", ckpt_path=None, device="cpu")
    amg = SAM2AutomaticMaskGenerator(model, points_per_side=points, points_per_batch=64,
                                     pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                     box_nms_thresh=1.0)
    photo = np.array(Image.open(PHOTO).convert("RGB"))
    with torch.inference_mode():
        return median_time(lambda: amg.generate(photo), repeats)


def ours(mode, repeats, points):
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "og-sam2", "--example",
                    "sam2_timing"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "examples", "sam2_timing")
    out = subprocess.run(["/usr/bin/time", "-f", "%M %P", exe, "hiera_large", str(repeats),
                          "flex", mode, str(points), PHOTO],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rss, cpu = out.stderr.strip().splitlines()[-1].split()
    r["rss_mb"], r["cpu"] = int(rss) / 1024, cpu
    return r


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    points = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    report = {"torch": torch.__version__, "threads": threads, "repeats": repeats,
              "points_per_side": points}
    report["torch_encoder_s"] = torch_encoder(repeats)
    report["torch_amg_s"] = torch_amg(repeats, points)
    report["torch_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["ours_encoder"] = ours("encoder", repeats, points)
    report["ours_amg"] = ours("amg", repeats, points)
    print(json.dumps(report, indent=1))
    for mode in ("encoder", "amg"):
        theirs, mine = report[f"torch_{mode}_s"], report[f"ours_{mode}"]["median_s"]
        print(f"{mode}: PyTorch {theirs:.2f} s, ours {mine:.2f} s -> ours runs at "
              f"{theirs / mine:.2f}x PyTorch's speed")


if __name__ == "__main__":
    main()
