//! Loading SAM 2 checkpoints in both layouts users have: transformers' `Sam2Model`
//! (`save_pretrained`: `config.json` + safetensors) and the original `sam2` package's
//! `sam2.1_hiera_*.pt` (`torch.save({"model": state_dict})`, read as data, never unpickled
//! into objects). Names are resolved through one table from transformers' names, the names
//! the modules carry.

use std::path::Path;

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use og_weights::Weights;

use crate::config::{HieraConfig, NeckConfig, Sam2Config};
use crate::decoder::{FeedForward, Sam2Attention};
use crate::error::{Result, Sam2Error};
use crate::model::Sam2Model;

/// Where a checkpoint keeps SAM 2's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// transformers' `Sam2Model`.
    Transformers,
    /// The `sam2` package's `SAM2Base` state dict, under `prefix` (`"model."` in the released
    /// `.pt` files).
    Original { prefix: &'static str },
}

/// Top-level modules: transformers' prefix, the original one.
const MODULES: &[(&str, &str)] = &[
    ("vision_encoder.backbone.", "image_encoder.trunk."),
    ("vision_encoder.neck.", "image_encoder.neck."),
    ("prompt_encoder.", "sam_prompt_encoder."),
    ("mask_decoder.", "sam_mask_decoder."),
];

/// Fragments inside a module, most specific first (each applied once, in order).
const FRAGMENTS: &[(&str, &str)] = &[
    ("mask_embed.conv1", "mask_downscaling.0"),
    ("mask_embed.layer_norm1", "mask_downscaling.1"),
    ("mask_embed.conv2", "mask_downscaling.3"),
    ("mask_embed.layer_norm2", "mask_downscaling.4"),
    ("mask_embed.conv3", "mask_downscaling.6"),
    ("upscale_conv1", "output_upscaling.0"),
    ("upscale_layer_norm", "output_upscaling.1"),
    ("upscale_conv2", "output_upscaling.3"),
    ("patch_embed.projection", "patch_embed.proj"),
    ("layer_norm_final_attn", "norm_final_attn"),
    ("layer_norm", "norm"),
    (".o_proj", ".out_proj"),
];

/// Whole names with no module-wise counterpart.
const WHOLE: &[(&str, &str)] = &[
    ("no_memory_embedding", "no_mem_embed"),
    (
        "shared_image_embedding.positional_embedding",
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (
        "prompt_encoder.shared_embedding.positional_embedding",
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
];

impl Layout {
    /// The checkpoint's name of the tensor transformers calls `hf`.
    pub fn name(&self, hf: &str) -> String {
        let Layout::Original { prefix } = self else {
            return hf.to_string();
        };
        if let Some((_, o)) = WHOLE.iter().find(|(h, _)| *h == hf) {
            return format!("{prefix}{o}");
        }
        let mut name = MODULES
            .iter()
            .find_map(|(h, o)| hf.strip_prefix(h).map(|rest| format!("{o}{rest}")))
            .unwrap_or_else(|| hf.to_string());
        for (h, o) in FRAGMENTS {
            if name.contains(h) {
                name = name.replacen(h, o, 1);
            }
        }
        format!("{prefix}{name}")
    }

    /// The FPN neck's `k`-th convolution (the original wraps it in a module).
    fn neck_conv(&self, k: usize) -> String {
        match self {
            Layout::Transformers => format!("vision_encoder.neck.convs.{k}"),
            Layout::Original { prefix } => format!("{prefix}image_encoder.neck.convs.{k}.conv"),
        }
    }

    /// The `i`-th linear layer of an MLP of `n` (transformers: `proj_in`, `layers.*`,
    /// `proj_out`; the original: `layers.0..n`).
    fn mlp_layer(&self, base: &str, i: usize, n: usize) -> String {
        match self {
            Layout::Transformers if i == 0 => format!("{base}.proj_in"),
            Layout::Transformers if i + 1 == n => format!("{base}.proj_out"),
            Layout::Transformers => format!("{base}.layers.{}", i - 1),
            Layout::Original { .. } => format!("{}.layers.{i}", self.name(base)),
        }
    }
}

/// The four released SAM 2.1 image encoders (the `sam2` package's configs): name, width, heads,
/// blocks per stage, global-attention blocks, windows, background size.
type Variant = (
    &'static str,
    usize,
    usize,
    [usize; 4],
    [usize; 3],
    [usize; 4],
    usize,
);
const RELEASED: &[Variant] = &[
    (
        "hiera_tiny",
        96,
        1,
        [1, 2, 7, 2],
        [5, 7, 9],
        [8, 4, 14, 7],
        7,
    ),
    (
        "hiera_small",
        96,
        1,
        [1, 2, 11, 2],
        [7, 10, 13],
        [8, 4, 14, 7],
        7,
    ),
    (
        "hiera_base_plus",
        112,
        2,
        [2, 3, 16, 3],
        [12, 16, 20],
        [8, 4, 14, 7],
        14,
    ),
    (
        "hiera_large",
        144,
        2,
        [2, 6, 36, 4],
        [23, 33, 43],
        [8, 4, 16, 8],
        7,
    ),
];

impl Sam2Config {
    /// A released SAM 2 / 2.1 model by name (`hiera_tiny`, `hiera_small`, `hiera_base_plus`,
    /// `hiera_large`): 1024-pixel input, the released decoder.
    pub fn released(name: &str) -> Option<Self> {
        let &(_, c, heads, blocks, global, windows, bkg) = RELEASED.iter().find(|v| v.0 == name)?;
        let dims: Vec<usize> = (0..4).map(|i| c << i).collect();
        let mut channels = dims.clone();
        channels.reverse();
        Some(Sam2Config {
            hiera: HieraConfig {
                hidden_size: c,
                window_positional_embedding_background_size: [bkg, bkg],
                blocks_per_stage: blocks.to_vec(),
                embed_dim_per_stage: dims,
                num_attention_heads_per_stage: (0..4).map(|i| heads << i).collect(),
                window_size_per_stage: windows.to_vec(),
                global_attention_blocks: global.to_vec(),
                ..HieraConfig::default()
            },
            neck: NeckConfig {
                backbone_channel_list: channels,
                ..NeckConfig::default()
            },
            ..Sam2Config::default()
        })
    }

    /// The released model whose Hiera has the checkpoint's width and block count.
    fn released_matching(w: &Weights, prefix: &str) -> Result<Self> {
        let conv = format!("{prefix}image_encoder.trunk.patch_embed.proj.weight");
        let width = w.shape(&conv).and_then(|s| s.first().copied());
        let blocks = (0..)
            .take_while(|i| {
                w.contains(&format!(
                    "{prefix}image_encoder.trunk.blocks.{i}.norm1.weight"
                ))
            })
            .count();
        RELEASED
            .iter()
            .find(|v| Some(v.1) == width && v.3.iter().sum::<usize>() == blocks)
            .and_then(|v| Sam2Config::released(v.0))
            .ok_or_else(|| Sam2Error::Config {
                path: w.origin().to_path_buf(),
                message: format!(
                    "a Hiera of width {width:?} with {blocks} blocks is none of the released SAM 2 \
                     models (tiny, small, base-plus, large); put a transformers config.json \
                     beside the checkpoint"
                ),
            })
    }
}

impl<B: Backend> Sam2Model<B> {
    /// Opens SAM 2 weights in either layout: a transformers `save_pretrained` directory, or an
    /// original `.pt`/`.pth` checkpoint (its model from a `config.json` beside it, else the
    /// released model its shapes match).
    pub fn open(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let is_torch = path.extension().is_some_and(|e| e == "pt" || e == "pth");
        if !is_torch {
            let config = Sam2Config::from_hf(path)?;
            return config
                .init::<B>(device)?
                .load_weights(&Weights::open(path)?, Layout::Transformers);
        }
        let weights = Weights::open_pytorch(path)?;
        for p in ["model.", ""] {
            if weights.contains(&format!("{p}image_encoder.patch_embed.proj.weight")) {
                return Err(Sam2Error::Config {
                    path: path.to_path_buf(),
                    message: "a Segment Anything (v1) checkpoint (a ViT image encoder, no Hiera \
                              trunk): this loader reads SAM 2 / 2.1"
                        .into(),
                });
            }
        }
        let prefix = ["model.", ""]
            .into_iter()
            .find(|p| weights.contains(&format!("{p}image_encoder.trunk.patch_embed.proj.weight")))
            .ok_or_else(|| Sam2Error::Config {
                path: path.to_path_buf(),
                message: "no SAM 2 image encoder in the checkpoint (looked for \
                          [model.]image_encoder.trunk.patch_embed.proj.weight)"
                    .into(),
            })?;
        let beside = path.with_file_name("config.json");
        let config = if beside.is_file() {
            Sam2Config::from_hf(&beside)?
        } else {
            Sam2Config::released_matching(&weights, prefix)?
        };
        config
            .init::<B>(device)?
            .load_weights(&weights, Layout::Original { prefix })
    }

    /// Loads every parameter from an opened checkpoint of the given layout.
    pub fn load_weights(mut self, w: &Weights, layout: Layout) -> Result<Self> {
        let n = |hf: &str| layout.name(hf);
        w.load_param(
            &n("shared_image_embedding.positional_embedding"),
            &mut self.shared_image_embedding.positional_embedding,
        )?;
        w.load_param(&n("no_memory_embedding"), &mut self.no_memory_embedding)?;
        self.load_vision(w, layout)?;
        self.load_prompt_encoder(w, layout)?;
        self.load_mask_decoder(w, layout)?;
        let blocks = self.vision_encoder.backbone.blocks.len();
        let extra = n(&format!(
            "vision_encoder.backbone.blocks.{blocks}.layer_norm1.weight"
        ));
        if w.contains(&extra) {
            return Err(Sam2Error::Config {
                path: w.origin().to_path_buf(),
                message: format!(
                    "the checkpoint has more than the {blocks} Hiera blocks its config declares"
                ),
            });
        }
        Ok(self)
    }

    fn load_vision(&mut self, w: &Weights, layout: Layout) -> Result<()> {
        let n = |hf: String| layout.name(&hf);
        let p = "vision_encoder.backbone";
        let h = &mut self.vision_encoder.backbone;
        w.load_conv2d(
            &n(format!("{p}.patch_embed.projection")),
            &mut h.patch_embed.projection,
        )?;
        w.load_param(&n(format!("{p}.pos_embed")), &mut h.pos_embed)?;
        w.load_param(&n(format!("{p}.pos_embed_window")), &mut h.pos_embed_window)?;
        for (i, b) in h.blocks.iter_mut().enumerate() {
            let l = format!("{p}.blocks.{i}");
            w.load_layer_norm(&n(format!("{l}.layer_norm1")), &mut b.layer_norm1)?;
            w.load_layer_norm(&n(format!("{l}.layer_norm2")), &mut b.layer_norm2)?;
            w.load_linear(&n(format!("{l}.attn.qkv")), &mut b.attn.qkv)?;
            w.load_linear(&n(format!("{l}.attn.proj")), &mut b.attn.proj)?;
            w.load_linear(
                &layout.mlp_layer(&format!("{l}.mlp"), 0, 2),
                &mut b.mlp.proj_in,
            )?;
            w.load_linear(
                &layout.mlp_layer(&format!("{l}.mlp"), 1, 2),
                &mut b.mlp.proj_out,
            )?;
            if let Some(proj) = &mut b.proj {
                w.load_linear(&n(format!("{l}.proj")), proj)?;
            }
        }
        for (k, conv) in self.vision_encoder.neck.convs.iter_mut().enumerate() {
            w.load_conv2d(&layout.neck_conv(k), conv)?;
        }
        Ok(())
    }

    fn load_prompt_encoder(&mut self, w: &Weights, layout: Layout) -> Result<()> {
        let n = |hf: &str| layout.name(hf);
        let e = &mut self.prompt_encoder;
        w.load_param(
            &n("prompt_encoder.shared_embedding.positional_embedding"),
            &mut e.shared_embedding.positional_embedding,
        )?;
        let m = &mut e.mask_embed;
        w.load_conv2d(&n("prompt_encoder.mask_embed.conv1"), &mut m.conv1)?;
        w.load_conv2d(&n("prompt_encoder.mask_embed.conv2"), &mut m.conv2)?;
        w.load_conv2d(&n("prompt_encoder.mask_embed.conv3"), &mut m.conv3)?;
        w.load_layer_norm(
            &n("prompt_encoder.mask_embed.layer_norm1"),
            &mut m.layer_norm1,
        )?;
        w.load_layer_norm(
            &n("prompt_encoder.mask_embed.layer_norm2"),
            &mut m.layer_norm2,
        )?;
        for (name, emb) in [
            ("no_mask_embed", &mut e.no_mask_embed),
            ("not_a_point_embed", &mut e.not_a_point_embed),
        ] {
            w.load_param(
                &n(&format!("prompt_encoder.{name}.weight")),
                &mut emb.weight,
            )?;
        }
        match layout {
            Layout::Transformers => {
                w.load_param(
                    "prompt_encoder.point_embed.weight",
                    &mut e.point_embed.weight,
                )?;
            }
            // One `[1, C]` embedding per point type.
            Layout::Original { prefix } => {
                let [types, c] = e.point_embed.weight.dims();
                let device = e.point_embed.weight.device();
                let rows = (0..types)
                    .map(|k| {
                        let name =
                            format!("{prefix}sam_prompt_encoder.point_embeddings.{k}.weight");
                        w.tensor::<B, 2>(&name, [1, c], &device)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                e.point_embed.weight = Param::from_tensor(Tensor::cat(rows, 0));
            }
        }
        Ok(())
    }

    fn load_mask_decoder(&mut self, w: &Weights, layout: Layout) -> Result<()> {
        let n = |hf: String| layout.name(&hf);
        let p = "mask_decoder";
        let d = &mut self.mask_decoder;
        for (name, emb) in [
            ("iou_token", &mut d.iou_token),
            ("mask_tokens", &mut d.mask_tokens),
            ("obj_score_token", &mut d.obj_score_token),
        ] {
            w.load_param(&n(format!("{p}.{name}.weight")), &mut emb.weight)?;
        }
        let t = &mut d.transformer;
        for (i, l) in t.layers.iter_mut().enumerate() {
            let base = format!("{p}.transformer.layers.{i}");
            for (name, a) in [
                ("self_attn", &mut l.self_attn),
                (
                    "cross_attn_token_to_image",
                    &mut l.cross_attn_token_to_image,
                ),
                (
                    "cross_attn_image_to_token",
                    &mut l.cross_attn_image_to_token,
                ),
            ] {
                load_attention(w, layout, &format!("{base}.{name}"), a)?;
            }
            load_feed_forward(w, layout, &format!("{base}.mlp"), &mut l.mlp)?;
            for (k, ln) in [
                &mut l.layer_norm1,
                &mut l.layer_norm2,
                &mut l.layer_norm3,
                &mut l.layer_norm4,
            ]
            .into_iter()
            .enumerate()
            {
                w.load_layer_norm(&n(format!("{base}.layer_norm{}", k + 1)), ln)?;
            }
        }
        load_attention(
            w,
            layout,
            &format!("{p}.transformer.final_attn_token_to_image"),
            &mut t.final_attn_token_to_image,
        )?;
        w.load_layer_norm(
            &n(format!("{p}.transformer.layer_norm_final_attn")),
            &mut t.layer_norm_final_attn,
        )?;
        w.load_conv_transpose2d(&n(format!("{p}.upscale_conv1")), &mut d.upscale_conv1)?;
        w.load_conv_transpose2d(&n(format!("{p}.upscale_conv2")), &mut d.upscale_conv2)?;
        w.load_layer_norm(
            &n(format!("{p}.upscale_layer_norm")),
            &mut d.upscale_layer_norm,
        )?;
        for (i, mlp) in d.output_hypernetworks_mlps.iter_mut().enumerate() {
            load_feed_forward(
                w,
                layout,
                &format!("{p}.output_hypernetworks_mlps.{i}"),
                mlp,
            )?;
        }
        load_feed_forward(
            w,
            layout,
            &format!("{p}.iou_prediction_head"),
            &mut d.iou_prediction_head,
        )?;
        load_feed_forward(
            w,
            layout,
            &format!("{p}.pred_obj_score_head"),
            &mut d.pred_obj_score_head,
        )?;
        w.load_conv2d(&n(format!("{p}.conv_s0")), &mut d.conv_s0)?;
        w.load_conv2d(&n(format!("{p}.conv_s1")), &mut d.conv_s1)?;
        Ok(())
    }
}

fn load_attention<B: Backend>(
    w: &Weights,
    layout: Layout,
    base: &str,
    a: &mut Sam2Attention<B>,
) -> Result<()> {
    for (name, lin) in [
        ("q_proj", &mut a.q_proj),
        ("k_proj", &mut a.k_proj),
        ("v_proj", &mut a.v_proj),
        ("o_proj", &mut a.o_proj),
    ] {
        w.load_linear(&layout.name(&format!("{base}.{name}")), lin)?;
    }
    Ok(())
}

fn load_feed_forward<B: Backend>(
    w: &Weights,
    layout: Layout,
    base: &str,
    f: &mut FeedForward<B>,
) -> Result<()> {
    let n = f.layers.len() + 2;
    w.load_linear(&layout.mlp_layer(base, 0, n), &mut f.proj_in)?;
    for (i, l) in f.layers.iter_mut().enumerate() {
        w.load_linear(&layout.mlp_layer(base, i + 1, n), l)?;
    }
    w.load_linear(&layout.mlp_layer(base, n - 1, n), &mut f.proj_out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_follow_the_sam2_package() {
        let o = Layout::Original { prefix: "model." };
        for (hf, orig) in [
            (
                "vision_encoder.backbone.blocks.3.layer_norm1.weight",
                "model.image_encoder.trunk.blocks.3.norm1.weight",
            ),
            (
                "vision_encoder.backbone.patch_embed.projection.bias",
                "model.image_encoder.trunk.patch_embed.proj.bias",
            ),
            (
                "prompt_encoder.mask_embed.layer_norm2.weight",
                "model.sam_prompt_encoder.mask_downscaling.4.weight",
            ),
            (
                "mask_decoder.transformer.layers.1.cross_attn_token_to_image.o_proj.bias",
                "model.sam_mask_decoder.transformer.layers.1.cross_attn_token_to_image.out_proj.bias",
            ),
            (
                "mask_decoder.transformer.layer_norm_final_attn.weight",
                "model.sam_mask_decoder.transformer.norm_final_attn.weight",
            ),
            (
                "mask_decoder.upscale_layer_norm.bias",
                "model.sam_mask_decoder.output_upscaling.1.bias",
            ),
            ("no_memory_embedding", "model.no_mem_embed"),
        ] {
            assert_eq!(o.name(hf), orig);
        }
        assert_eq!(
            o.mlp_layer("mask_decoder.iou_prediction_head", 2, 3),
            "model.sam_mask_decoder.iou_prediction_head.layers.2"
        );
        assert_eq!(Layout::Transformers.mlp_layer("m", 1, 3), "m.layers.0");
        assert_eq!(o.neck_conv(2), "model.image_encoder.neck.convs.2.conv");
    }

    #[test]
    fn released_configs_are_valid() {
        for v in RELEASED {
            let c = Sam2Config::released(v.0).unwrap();
            c.validate().unwrap();
            assert_eq!(c.hiera.blocks().len(), v.3.iter().sum::<usize>());
        }
        assert!(Sam2Config::released("hiera_huge").is_none());
    }
}
