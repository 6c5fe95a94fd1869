#!/usr/bin/env python3
"""Dev-time fixtures for og-sam2 (tests never run Python).

Writes under fixtures/sam2/, for each tiny random `Sam2Model` shaped like a Hiera variant:
  <name>/              save_pretrained (config.json + model.safetensors)
  <name>_io.safetensors  pixel values, the Hiera stage outputs, the FPN levels, the image
                         embeddings the mask decoder reads, and for every prompt case its
                         low-resolution mask logits, IoU scores and object-score logits

and, from the `sam2` package (facebookresearch/sam2, the code the released OG-LLaVA pipeline
runs), a tiny random SAM2Base in the original checkpoint layout:
  original_t/model.pt     torch.save({"model": state_dict}), as sam2.1_hiera_*.pt are written
  original_t/config.json  the same model as a transformers Sam2Config
  original_t_io.safetensors  the SAM2Transforms pixels of a photo, the predictor's features,
                         and low-resolution masks / IoU for point and box prompts
  original_t_amg*.json   SAM2AutomaticMaskGenerator output (coco_rle) on that photo
  sam1_layout.pt         two tensors named as a Segment Anything (v1) checkpoint names them
  small_regions.json     the package's remove_small_regions (OpenCV, 8-connectivity) on a
                         blobby mask: holes and islands at two areas (needs opencv-python)

Every parameter is perturbed away from its initial value (zeros, ones) so that a tensor that
is not loaded shows up as a difference.

Usage: pip install torch transformers safetensors pillow pycocotools
       SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2
       python3 scripts/make_sam2_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers import Sam2Config, Sam2Model

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "sam2")

# Tiny versions of the four released Hiera shapes: tiny and small (one head and one block in
# stage 0, 7x7 background, small with a longer stage 2 and two global blocks), base-plus (two
# heads, two stage-0 blocks, a larger background) and large (two heads, two stage-0 blocks,
# stage-3 windows of its own, a non-square background). Stage windows that do not divide the
# grid exercise the padded window partition.
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
    "hiera_s": dict(hidden_size=8, num_attention_heads=1, blocks_per_stage=[1, 2, 5, 2],
                    embed_dim_per_stage=[8, 16, 32, 64],
                    num_attention_heads_per_stage=[1, 2, 4, 4],
                    window_size_per_stage=[4, 2, 3, 2], global_attention_blocks=[4, 6],
                    window_positional_embedding_background_size=[7, 7]),
    "hiera_b": dict(hidden_size=12, num_attention_heads=2, blocks_per_stage=[2, 3, 3, 2],
                    embed_dim_per_stage=[12, 24, 48, 96],
                    num_attention_heads_per_stage=[2, 4, 4, 8],
                    window_size_per_stage=[4, 4, 2, 2], global_attention_blocks=[6],
                    window_positional_embedding_background_size=[6, 6]),
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


def tiny_sam2_base():
    """A tiny SAM2Base built from the package's own SAM 2.1 Hiera-T config, shrunk."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    cfg = OmegaConf.load(os.path.join(os.path.dirname(sam2.__file__),
                                      "configs/sam2.1/sam2.1_hiera_t.yaml"))
    m = cfg.model
    b = VARIANTS["hiera_t"]
    t = m.image_encoder.trunk
    t.embed_dim, t.num_heads, t.stages = b["hidden_size"], 1, b["blocks_per_stage"]
    t.global_att_blocks = b["global_attention_blocks"]
    t.window_pos_embed_bkg_spatial_size = b["window_positional_embedding_background_size"]
    t.window_spec = b["window_size_per_stage"]
    n = m.image_encoder.neck
    n.d_model, n.position_encoding.num_pos_feats = FPN, FPN
    n.backbone_channel_list = list(reversed([8, 16, 32, 64]))
    # The video memory is not part of the image model; it only has to be constructible.
    ma = m.memory_attention
    ma.d_model, ma.num_layers, ma.layer.d_model, ma.layer.dim_feedforward = FPN, 1, FPN, FPN
    for a in (ma.layer.self_attention, ma.layer.cross_attention):
        a.embedding_dim, a.feat_sizes = FPN, [IMAGE // 16, IMAGE // 16]
    ma.layer.cross_attention.kv_in_dim = 16
    me = m.memory_encoder
    me.out_dim, me.position_encoding.num_pos_feats, me.fuser.layer.dim = 16, 16, FPN
    m.image_size = IMAGE
    model = instantiate(m, _recursive_=True)
    # SAM2Base hard-codes a 2048-wide decoder MLP and 8 heads; a smaller decoder of the same
    # kind keeps the fixture small.
    d = model.sam_mask_decoder
    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=FPN, mlp_dim=64, num_heads=2),
        transformer_dim=FPN, iou_head_depth=3, iou_head_hidden_dim=24,
        use_high_res_features=True, iou_prediction_use_sigmoid=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=d.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=d.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=d.dynamic_multimask_stability_thresh)
    return model.eval()


def original():
    import json

    import numpy as np
    from PIL import Image
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(3)
    model = tiny_sam2_base()
    perturb(model)
    # Random weights give logits near 0 (every mask unstable): sharper point encodings and
    # larger mask logits give masks that pass SAM's stability filter.
    with torch.no_grad():
        model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(4)
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[2].weight.mul_(150)
    out = os.path.join(OUT, "original_t")
    os.makedirs(out, exist_ok=True)
    # The video-memory modules are left out to keep the file small (the loader ignores them
    # either way; a few small video tensors stay to show that).
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("memory_encoder.", "memory_attention."))}
    torch.save({"model": state}, os.path.join(out, "model.pt"))
    hf = config(VARIANTS["hiera_t"]).to_dict()
    hf["mask_decoder_config"].update(mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=24)
    hf["prompt_encoder_config"].update(mask_input_channels=16)
    # The package doubles the heads at every stage.
    hf["vision_config"]["backbone_config"]["num_attention_heads_per_stage"] = [1, 2, 4, 8]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)

    photo = np.array(Image.open(os.path.join(OUT, "..", "images", "chelsea.webp")).convert("RGB"))
    # The predictor hard-codes the 1024-pixel feature sizes.
    sizes = [(IMAGE // 4, IMAGE // 4), (IMAGE // 8, IMAGE // 8), (IMAGE // 16, IMAGE // 16)]
    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = sizes
    t = {"pixel_values": predictor._transforms(photo)[None].contiguous()}
    predictor.set_image(photo)
    t["embedding.0"] = predictor._features["high_res_feats"][0].contiguous()
    t["embedding.1"] = predictor._features["high_res_feats"][1].contiguous()
    t["embedding.2"] = predictor._features["image_embed"].contiguous()
    point = np.array([[120.0, 80.0], [300.0, 200.0]])
    box = np.array([40.0, 30.0, 350.0, 260.0])
    for name, kw in {"point": dict(point_coords=point, point_labels=np.array([1, 0])),
                     "box": dict(box=box)}.items():
        masks, iou, low = predictor.predict(multimask_output=True, return_logits=True, **kw)
        t[f"{name}.low_res"] = torch.from_numpy(low).contiguous()
        t[f"{name}.iou"] = torch.from_numpy(iou).contiguous()
    save_file(t, os.path.join(OUT, "original_t_io.safetensors"))

    # A Segment Anything (v1) checkpoint's key layout, to be refused by name.
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(4, 3, 2, 2),
                "image_encoder.blocks.0.norm1.weight": torch.ones(4)},
               os.path.join(OUT, "sam1_layout.pt"))

    # Thresholds in the gaps of this random model's scores (IoU ~0.48 | ~0.60..0.62,
    # stability ~0.35..0.40 | ~0.82..0.90); its masks barely depend on the point, so box NMS
    # at 0.7 keeps one: the main fixture turns NMS off to compare every surviving mask.
    for suffix, extra in {"": dict(box_nms_thresh=1.0), "_nms": dict(box_nms_thresh=0.7),
                          "_crops": dict(box_nms_thresh=1.0, crop_n_layers=1,
                                         crop_nms_thresh=1.0)}.items():
        amg = SAM2AutomaticMaskGenerator(model, points_per_side=8, points_per_batch=6,
                                         pred_iou_thresh=0.55, stability_score_thresh=0.6,
                                         stability_score_offset=1.0, output_mode="coco_rle",
                                         **extra)
        amg.predictor._bb_feat_sizes = sizes
        anns = amg.generate(photo)
        with open(os.path.join(OUT, f"original_t_amg{suffix}.json"), "w") as f:
            json.dump(anns, f)
        print(f"amg{suffix}:", len(anns), "masks",
              sorted(round(a["predicted_iou"], 3) for a in anns)[:5])


def small_regions():
    import json

    import numpy as np
    from pycocotools import mask as mask_utils
    from sam2.utils.amg import remove_small_regions

    rng = np.random.default_rng(4)
    noise = rng.standard_normal((48, 64))
    # Smoothed noise thresholded: blobs with holes, islands and diagonal-only contacts.
    for _ in range(2):
        noise = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1)) / 3
    mask = noise > 0.15

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        return r["counts"].decode()

    cases = []
    for mode in ("holes", "islands"):
        for area in (4, 40):
            out, changed = remove_small_regions(mask, area, mode)
            cases.append({"mode": mode, "area": area, "changed": bool(changed),
                          "output": rle(out)})
    with open(os.path.join(OUT, "small_regions.json"), "w") as f:
        json.dump({"height": 48, "width": 64, "input": rle(mask), "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
    original()
    small_regions()
