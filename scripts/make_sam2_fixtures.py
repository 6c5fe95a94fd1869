#!/usr/bin/env python3
"""Dev-time fixtures for og-sam2 (tests never run Python).

Writes under fixtures/sam2/, for each tiny random `Sam2Model` shaped like a Hiera variant:
  <name>/              save_pretrained (config.json + model.safetensors)
  <name>_io.safetensors  pixel values, the Hiera stage outputs, the FPN levels, the image
                         embeddings the mask decoder reads, and for every prompt case its
                         low-resolution mask logits, IoU scores and object-score logits

Every parameter is perturbed away from its initial value (zeros, ones) so that a tensor that
is not loaded shows up as a difference.

Usage: pip install torch transformers safetensors && python3 scripts/make_sam2_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers import Sam2Config, Sam2Model

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "sam2")

# Tiny versions of the released Hiera shapes: tiny/small (one head and one block in stage 0,
# 7x7 background) and base-plus/large (two heads, two blocks in stage 0, another background
# size). Stage windows that do not divide the grid exercise the padded window partition.
VARIANTS = {
    "hiera_t": dict(hidden_size=8, num_attention_heads=1, blocks_per_stage=[1, 2, 3, 2],
                    embed_dim_per_stage=[8, 16, 32, 64],
                    num_attention_heads_per_stage=[1, 2, 4, 4],
                    window_size_per_stage=[4, 2, 3, 2], global_attention_blocks=[4],
                    window_positional_embedding_background_size=[7, 7]),
    "hiera_l": dict(hidden_size=12, num_attention_heads=2, blocks_per_stage=[2, 3, 4, 2],
                    embed_dim_per_stage=[12, 24, 48, 96],
                    num_attention_heads_per_stage=[2, 2, 4, 4],
                    window_size_per_stage=[4, 2, 3, 2], global_attention_blocks=[6, 8],
                    window_positional_embedding_background_size=[3, 5]),
}
IMAGE = 64
FPN = 32


def config(backbone):
    return Sam2Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam2_hiera_det_model", image_size=[IMAGE, IMAGE],
                                 **backbone),
            backbone_channel_list=list(reversed(backbone["embed_dim_per_stage"])),
            backbone_feature_sizes=[[IMAGE // 4, IMAGE // 4], [IMAGE // 8, IMAGE // 8],
                                    [IMAGE // 16, IMAGE // 16]],
            fpn_hidden_size=FPN),
        prompt_encoder_config=dict(hidden_size=FPN, image_size=IMAGE, patch_size=16,
                                   mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=FPN, mlp_dim=64, num_attention_heads=2,
                                 iou_head_hidden_dim=24))


def perturb(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def prompt_cases(batch):
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(batch, 3, 2, 2, generator=g) * IMAGE
    labels = torch.tensor([[1, 0], [1, -1], [0, -10]]).expand(batch, 3, 2).clone()
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 2.0, 60.0, 30.0],
                          [0.0, 0.0, 63.0, 63.0]]).expand(batch, 3, 4).clone()
    masks = torch.randn(batch, 1, 16, 16, generator=g)
    return {
        "points": dict(input_points=pts, input_labels=labels),
        "boxes": dict(input_boxes=boxes),
        "points_boxes": dict(input_points=pts, input_labels=labels, input_boxes=boxes),
        "points_mask": dict(input_points=pts[:, :1], input_labels=labels[:, :1],
                            input_masks=masks),
        "none": dict(),
    }


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    for name, backbone in VARIANTS.items():
        model = Sam2Model(config(backbone)).eval()
        perturb(model)
        model.save_pretrained(os.path.join(OUT, name))
        pixels = torch.randn(2, 3, IMAGE, IMAGE)
        t = {"pixel_values": pixels}
        with torch.no_grad():
            hiera = model.vision_encoder.backbone(pixels)
            for i, h in enumerate(hiera.intermediate_hidden_states):
                t[f"stage.{i}"] = h.contiguous()
            vis = model.vision_encoder(pixels)
            for i, f in enumerate(vis.fpn_hidden_states):
                t[f"fpn.{i}"] = f.contiguous()
            emb = model.get_image_embeddings(pixels)
            for i, e in enumerate(emb):
                t[f"embedding.{i}"] = e.contiguous()
            t["image_pe"] = model.get_image_wide_positional_embeddings().contiguous()
            for case, kw in prompt_cases(2).items():
                for k, v in kw.items():
                    t[f"{case}.{k}"] = v.float().clone()
                for multi in (True, False):
                    # Without multimask output the decoder picks by stability: threshold 0
                    # always keeps token 0, 2 never does (both branches of the selection).
                    for thresh in ((None,) if multi else (0.0, 2.0)):
                        if thresh is not None:
                            model.mask_decoder.dynamic_multimask_stability_thresh = thresh
                        out = model(image_embeddings=emb, multimask_output=multi, **kw)
                        key = f"{case}.{'multi' if multi else f'single{int(thresh)}'}"
                        t[f"{key}.masks"] = out.pred_masks.contiguous()
                        t[f"{key}.iou"] = out.iou_scores.contiguous()
                        t[f"{key}.object"] = out.object_score_logits.contiguous()
                model.mask_decoder.dynamic_multimask_stability_thresh = 0.98
        save_file(t, os.path.join(OUT, f"{name}_io.safetensors"))
        print(name, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
