//! SAM 2's configuration: transformers' `Sam2Config` (`config.json` of a `Sam2Model`
//! `save_pretrained` directory), read through a mirror of the file and validated into the typed
//! [`Sam2Config`]. Defaults are transformers' (SAM 2.1 Hiera-T).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, Sam2Error};

/// The Hiera image encoder (`vision_config.backbone_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct HieraConfig {
    pub hidden_size: usize,
    pub num_channels: usize,
    pub image_size: [usize; 2],
    pub patch_kernel_size: [usize; 2],
    pub patch_stride: [usize; 2],
    pub patch_padding: [usize; 2],
    /// The pooling stride of the first block of stages 1..=`num_query_pool_stages`.
    pub query_stride: [usize; 2],
    /// The size of the learned background position embedding, interpolated to the grid.
    pub window_positional_embedding_background_size: [usize; 2],
    pub num_query_pool_stages: usize,
    pub blocks_per_stage: Vec<usize>,
    pub embed_dim_per_stage: Vec<usize>,
    pub num_attention_heads_per_stage: Vec<usize>,
    pub window_size_per_stage: Vec<usize>,
    /// Blocks (counted over all stages) that attend globally instead of within windows.
    pub global_attention_blocks: Vec<usize>,
    pub mlp_ratio: f64,
    pub layer_norm_eps: f64,
}

/// The FPN neck (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct NeckConfig {
    /// Channels of the Hiera stages, deepest first.
    pub backbone_channel_list: Vec<usize>,
    pub fpn_hidden_size: usize,
    /// Stage indices whose FPN level adds the upsampled deeper level.
    pub fpn_top_down_levels: Vec<usize>,
    pub num_feature_levels: usize,
}

/// The prompt encoder (`prompt_encoder_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEncoderConfig {
    pub hidden_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub mask_input_channels: usize,
    pub num_point_embeddings: usize,
    pub layer_norm_eps: f64,
    /// The standard deviation of the random Fourier features.
    pub scale: f64,
}

/// The mask decoder (`mask_decoder_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskDecoderConfig {
    pub hidden_size: usize,
    pub mlp_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub attention_downsample_rate: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    pub dynamic_multimask_via_stability: bool,
    pub dynamic_multimask_stability_delta: f64,
    pub dynamic_multimask_stability_thresh: f64,
}

/// A whole SAM 2 image model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sam2Config {
    pub hiera: HieraConfig,
    pub neck: NeckConfig,
    pub prompt: PromptEncoderConfig,
    pub decoder: MaskDecoderConfig,
}

impl Default for HieraConfig {
    fn default() -> Self {
        Self {
            hidden_size: 96,
            num_channels: 3,
            image_size: [1024, 1024],
            patch_kernel_size: [7, 7],
            patch_stride: [4, 4],
            patch_padding: [3, 3],
            query_stride: [2, 2],
            window_positional_embedding_background_size: [7, 7],
            num_query_pool_stages: 3,
            blocks_per_stage: vec![1, 2, 7, 2],
            embed_dim_per_stage: vec![96, 192, 384, 768],
            num_attention_heads_per_stage: vec![1, 2, 4, 8],
            window_size_per_stage: vec![8, 4, 14, 7],
            global_attention_blocks: vec![5, 7, 9],
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-6,
        }
    }
}

impl Default for NeckConfig {
    fn default() -> Self {
        Self {
            backbone_channel_list: vec![768, 384, 192, 96],
            fpn_hidden_size: 256,
            fpn_top_down_levels: vec![2, 3],
            num_feature_levels: 3,
        }
    }
}

impl Default for PromptEncoderConfig {
    fn default() -> Self {
        Self {
            hidden_size: 256,
            image_size: 1024,
            patch_size: 16,
            mask_input_channels: 16,
            num_point_embeddings: 4,
            layer_norm_eps: 1e-6,
            scale: 1.0,
        }
    }
}

impl Default for MaskDecoderConfig {
    fn default() -> Self {
        Self {
            hidden_size: 256,
            mlp_dim: 2048,
            num_hidden_layers: 2,
            num_attention_heads: 8,
            attention_downsample_rate: 2,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            dynamic_multimask_via_stability: true,
            dynamic_multimask_stability_delta: 0.05,
            dynamic_multimask_stability_thresh: 0.98,
        }
    }
}

/// transformers writes sizes as one integer or as `[h, w]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum HfSize {
    One(usize),
    Two([usize; 2]),
}

impl HfSize {
    fn pair(self) -> [usize; 2] {
        match self {
            HfSize::One(n) => [n, n],
            HfSize::Two(p) => p,
        }
    }
}

/// `config.json` of a `Sam2Model`, as spelled.
#[derive(Debug, Default, Deserialize)]
struct HfSam2File {
    model_type: Option<String>,
    vision_config: Option<HfVision>,
    prompt_encoder_config: Option<HfPrompt>,
    mask_decoder_config: Option<HfDecoder>,
}

#[derive(Debug, Default, Deserialize)]
struct HfVision {
    backbone_config: Option<HfHiera>,
    backbone_channel_list: Option<Vec<usize>>,
    fpn_hidden_size: Option<usize>,
    fpn_kernel_size: Option<usize>,
    fpn_stride: Option<usize>,
    fpn_padding: Option<usize>,
    fpn_top_down_levels: Option<Vec<usize>>,
    num_feature_levels: Option<usize>,
    fpn_interpolation_mode: Option<String>,
    hidden_act: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HfHiera {
    hidden_size: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<HfSize>,
    patch_kernel_size: Option<HfSize>,
    patch_stride: Option<HfSize>,
    patch_padding: Option<HfSize>,
    query_stride: Option<HfSize>,
    window_positional_embedding_background_size: Option<HfSize>,
    num_query_pool_stages: Option<usize>,
    blocks_per_stage: Option<Vec<usize>>,
    embed_dim_per_stage: Option<Vec<usize>>,
    num_attention_heads_per_stage: Option<Vec<usize>>,
    window_size_per_stage: Option<Vec<usize>>,
    global_attention_blocks: Option<Vec<usize>>,
    mlp_ratio: Option<f64>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct HfPrompt {
    hidden_size: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    mask_input_channels: Option<usize>,
    num_point_embeddings: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    scale: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct HfDecoder {
    hidden_size: Option<usize>,
    hidden_act: Option<String>,
    mlp_dim: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    attention_downsample_rate: Option<usize>,
    num_multimask_outputs: Option<usize>,
    iou_head_depth: Option<usize>,
    iou_head_hidden_dim: Option<usize>,
    dynamic_multimask_via_stability: Option<bool>,
    dynamic_multimask_stability_delta: Option<f64>,
    dynamic_multimask_stability_thresh: Option<f64>,
}

/// Only GELU is built (what every released SAM 2 uses).
fn gelu_only(field: &str, act: &Option<String>) -> std::result::Result<(), String> {
    match act.as_deref() {
        None | Some("gelu") => Ok(()),
        Some(other) => Err(format!(
            "{field}: activation {other:?} is not supported (gelu)"
        )),
    }
}

impl TryFrom<HfSam2File> for Sam2Config {
    type Error = String;

    fn try_from(f: HfSam2File) -> std::result::Result<Self, String> {
        if let Some(t) = f.model_type.as_deref()
            && t != "sam2"
        {
            return Err(format!(
                "model_type {t:?} is not a SAM 2 image model (\"sam2\")"
            ));
        }
        let v = f.vision_config.unwrap_or_default();
        gelu_only("vision_config.hidden_act", &v.hidden_act)?;
        let fpn_conv = (
            v.fpn_kernel_size.unwrap_or(1),
            v.fpn_stride.unwrap_or(1),
            v.fpn_padding.unwrap_or(0),
        );
        if fpn_conv != (1, 1, 0) {
            return Err(format!(
                "vision_config: FPN convolutions of kernel/stride/padding {fpn_conv:?} are not \
                 supported (1, 1, 0)"
            ));
        }
        if let Some(mode) = v.fpn_interpolation_mode.as_deref()
            && mode != "nearest"
        {
            return Err(format!(
                "vision_config.fpn_interpolation_mode {mode:?} is not supported (nearest)"
            ));
        }
        let dn = NeckConfig::default();
        let neck = NeckConfig {
            backbone_channel_list: v.backbone_channel_list.unwrap_or(dn.backbone_channel_list),
            fpn_hidden_size: v.fpn_hidden_size.unwrap_or(dn.fpn_hidden_size),
            fpn_top_down_levels: v.fpn_top_down_levels.unwrap_or(dn.fpn_top_down_levels),
            num_feature_levels: v.num_feature_levels.unwrap_or(dn.num_feature_levels),
        };
        let h = v.backbone_config.unwrap_or_default();
        gelu_only("vision_config.backbone_config.hidden_act", &h.hidden_act)?;
        let dh = HieraConfig::default();
        let hidden_size = h.hidden_size.unwrap_or(dh.hidden_size);
        let hiera = HieraConfig {
            hidden_size,
            num_channels: h.num_channels.unwrap_or(dh.num_channels),
            image_size: h.image_size.map_or(dh.image_size, HfSize::pair),
            patch_kernel_size: h
                .patch_kernel_size
                .map_or(dh.patch_kernel_size, HfSize::pair),
            patch_stride: h.patch_stride.map_or(dh.patch_stride, HfSize::pair),
            patch_padding: h.patch_padding.map_or(dh.patch_padding, HfSize::pair),
            query_stride: h.query_stride.map_or(dh.query_stride, HfSize::pair),
            window_positional_embedding_background_size: h
                .window_positional_embedding_background_size
                .map_or(dh.window_positional_embedding_background_size, HfSize::pair),
            num_query_pool_stages: h.num_query_pool_stages.unwrap_or(dh.num_query_pool_stages),
            blocks_per_stage: h.blocks_per_stage.unwrap_or(dh.blocks_per_stage),
            embed_dim_per_stage: h.embed_dim_per_stage.unwrap_or(dh.embed_dim_per_stage),
            num_attention_heads_per_stage: h
                .num_attention_heads_per_stage
                .unwrap_or(dh.num_attention_heads_per_stage),
            window_size_per_stage: h.window_size_per_stage.unwrap_or(dh.window_size_per_stage),
            global_attention_blocks: h
                .global_attention_blocks
                .unwrap_or(dh.global_attention_blocks),
            mlp_ratio: h.mlp_ratio.unwrap_or(dh.mlp_ratio),
            layer_norm_eps: h.layer_norm_eps.unwrap_or(dh.layer_norm_eps),
        };
        if let Some(heads) = h.num_attention_heads
            && hiera.num_attention_heads_per_stage.first() != Some(&heads)
        {
            return Err(format!(
                "vision_config.backbone_config: num_attention_heads {heads} differs from the \
                 first stage's {:?}",
                hiera.num_attention_heads_per_stage.first()
            ));
        }
        let p = f.prompt_encoder_config.unwrap_or_default();
        gelu_only("prompt_encoder_config.hidden_act", &p.hidden_act)?;
        let dp = PromptEncoderConfig::default();
        let prompt = PromptEncoderConfig {
            hidden_size: p.hidden_size.unwrap_or(dp.hidden_size),
            image_size: p.image_size.unwrap_or(dp.image_size),
            patch_size: p.patch_size.unwrap_or(dp.patch_size),
            mask_input_channels: p.mask_input_channels.unwrap_or(dp.mask_input_channels),
            num_point_embeddings: p.num_point_embeddings.unwrap_or(dp.num_point_embeddings),
            layer_norm_eps: p.layer_norm_eps.unwrap_or(dp.layer_norm_eps),
            scale: p.scale.unwrap_or(dp.scale),
        };
        let d = f.mask_decoder_config.unwrap_or_default();
        gelu_only("mask_decoder_config.hidden_act", &d.hidden_act)?;
        let dd = MaskDecoderConfig::default();
        let decoder = MaskDecoderConfig {
            hidden_size: d.hidden_size.unwrap_or(dd.hidden_size),
            mlp_dim: d.mlp_dim.unwrap_or(dd.mlp_dim),
            num_hidden_layers: d.num_hidden_layers.unwrap_or(dd.num_hidden_layers),
            num_attention_heads: d.num_attention_heads.unwrap_or(dd.num_attention_heads),
            attention_downsample_rate: d
                .attention_downsample_rate
                .unwrap_or(dd.attention_downsample_rate),
            num_multimask_outputs: d.num_multimask_outputs.unwrap_or(dd.num_multimask_outputs),
            iou_head_depth: d.iou_head_depth.unwrap_or(dd.iou_head_depth),
            iou_head_hidden_dim: d.iou_head_hidden_dim.unwrap_or(dd.iou_head_hidden_dim),
            dynamic_multimask_via_stability: d
                .dynamic_multimask_via_stability
                .unwrap_or(dd.dynamic_multimask_via_stability),
            dynamic_multimask_stability_delta: d
                .dynamic_multimask_stability_delta
                .unwrap_or(dd.dynamic_multimask_stability_delta),
            dynamic_multimask_stability_thresh: d
                .dynamic_multimask_stability_thresh
                .unwrap_or(dd.dynamic_multimask_stability_thresh),
        };
        let config = Sam2Config {
            hiera,
            neck,
            prompt,
            decoder,
        };
        config.check()?;
        Ok(config)
    }
}

/// The grid side after a convolution of `kernel`, `stride` and `padding`.
fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    (size + 2 * padding)
        .checked_sub(kernel)
        .map(|n| n / stride + 1)
}

impl HieraConfig {
    /// The number of stages.
    pub fn num_stages(&self) -> usize {
        self.blocks_per_stage.len()
    }

    /// The patch grid `[h, w]` of an image of the configured size.
    pub fn grid(&self) -> [usize; 2] {
        let side = |i: usize| {
            conv_out(
                self.image_size[i],
                self.patch_kernel_size[i],
                self.patch_stride[i],
                self.patch_padding[i],
            )
            .unwrap_or(0)
        };
        [side(0), side(1)]
    }

    /// `(dim, dim_out, heads, window, query_stride)` of every block, in order: the first
    /// block of a stage takes the previous stage's width and window and, for stages
    /// `1..=num_query_pool_stages`, pools its queries; global blocks have window 0.
    pub fn blocks(&self) -> Vec<BlockShape> {
        let mut out = Vec::new();
        for (stage, &n) in self.blocks_per_stage.iter().enumerate() {
            for block in 0..n {
                let first_of_later = stage > 0 && block == 0;
                let from = if first_of_later { stage - 1 } else { stage };
                let index = out.len();
                let window = if self.global_attention_blocks.contains(&index) {
                    0
                } else {
                    self.window_size_per_stage[from]
                };
                out.push(BlockShape {
                    dim: self.embed_dim_per_stage[from],
                    dim_out: self.embed_dim_per_stage[stage],
                    heads: self.num_attention_heads_per_stage[stage],
                    window,
                    query_stride: (first_of_later && stage <= self.num_query_pool_stages)
                        .then_some(self.query_stride),
                });
            }
        }
        out
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.num_stages();
        if n == 0 || self.blocks_per_stage.contains(&0) {
            return Err(format!(
                "blocks_per_stage {:?}: every stage needs a block",
                self.blocks_per_stage
            ));
        }
        for (name, list) in [
            ("embed_dim_per_stage", &self.embed_dim_per_stage),
            (
                "num_attention_heads_per_stage",
                &self.num_attention_heads_per_stage,
            ),
            ("window_size_per_stage", &self.window_size_per_stage),
        ] {
            if list.len() != n {
                return Err(format!("{name} has {} entries for {n} stages", list.len()));
            }
        }
        if self.embed_dim_per_stage[0] != self.hidden_size {
            return Err(format!(
                "hidden_size {} differs from the first stage's width {}",
                self.hidden_size, self.embed_dim_per_stage[0]
            ));
        }
        for (stage, (&d, &h)) in self
            .embed_dim_per_stage
            .iter()
            .zip(&self.num_attention_heads_per_stage)
            .enumerate()
        {
            if d == 0 || h == 0 || !d.is_multiple_of(h) {
                return Err(format!(
                    "stage {stage}: width {d} is not divisible into {h} heads"
                ));
            }
        }
        let [gh, gw] = self.grid();
        let [bh, bw] = self.window_positional_embedding_background_size;
        let w0 = self.window_size_per_stage[0];
        if gh == 0
            || gw == 0
            || bh == 0
            || bw == 0
            || w0 == 0
            || !gh.is_multiple_of(w0)
            || !gw.is_multiple_of(w0)
        {
            return Err(format!(
                "the {gh}x{gw} patch grid is not tiled by the stage-0 window {w0} (and needs a \
                 non-empty background position embedding, {bh}x{bw})"
            ));
        }
        if self.query_stride != [self.query_stride[0]; 2] || self.query_stride[0] == 0 {
            return Err(format!(
                "query_stride {:?}: only equal, non-zero strides are supported",
                self.query_stride
            ));
        }
        let q = self.query_stride[0];
        let (mut h, mut w) = (gh, gw);
        for (i, b) in self.blocks().iter().enumerate() {
            if b.query_stride.is_some() {
                if b.window < q {
                    return Err(format!(
                        "block {i} pools its queries with stride {q} but its window is {} \
                         (global blocks cannot start a pooled stage)",
                        b.window
                    ));
                }
                h /= q;
                w /= q;
                if h == 0 || w == 0 {
                    return Err(format!("block {i}: the grid pools away to nothing"));
                }
            }
        }
        Ok(())
    }
}

/// The shape of one Hiera block (see [`HieraConfig::blocks`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockShape {
    pub dim: usize,
    pub dim_out: usize,
    pub heads: usize,
    pub window: usize,
    pub query_stride: Option<[usize; 2]>,
}

impl Sam2Config {
    /// Reads `config.json` of a transformers `Sam2Model` (a directory or the file itself).
    pub fn from_hf(path: impl AsRef<Path>) -> Result<Self> {
        let (file, value) = og_weights::read_config(path)?;
        let mirror: HfSam2File =
            og_weights::mirror(&value).map_err(|message| Sam2Error::Config {
                path: file.clone(),
                message,
            })?;
        Sam2Config::try_from(mirror).map_err(|message| Sam2Error::Config {
            path: file,
            message,
        })
    }

    /// Checks the configuration is one this crate can build.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(Sam2Error::Invalid)
    }

    /// The image-embedding grid side (`image_size / patch_size` of the prompt encoder).
    pub fn embedding_side(&self) -> usize {
        self.prompt.image_size / self.prompt.patch_size.max(1)
    }

    fn check(&self) -> std::result::Result<(), String> {
        self.hiera
            .check()
            .map_err(|e| format!("vision_config.backbone_config: {e}"))?;
        let stages = self.hiera.num_stages();
        let mut reversed = self.hiera.embed_dim_per_stage.clone();
        reversed.reverse();
        if self.neck.backbone_channel_list != reversed {
            return Err(format!(
                "vision_config.backbone_channel_list {:?} is not the stage widths deepest first \
                 {reversed:?}",
                self.neck.backbone_channel_list
            ));
        }
        if self.neck.num_feature_levels != 3 || stages < 3 {
            return Err(format!(
                "vision_config.num_feature_levels {} with {stages} stages: the mask decoder \
                 reads three levels",
                self.neck.num_feature_levels
            ));
        }
        let c = self.neck.fpn_hidden_size;
        if self.prompt.hidden_size != c || self.decoder.hidden_size != c {
            return Err(format!(
                "prompt encoder ({}) and mask decoder ({}) widths must equal the FPN width {c}",
                self.prompt.hidden_size, self.decoder.hidden_size
            ));
        }
        if !c.is_multiple_of(8) {
            return Err(format!("the FPN width {c} must be a multiple of 8"));
        }
        let d = &self.decoder;
        let internal = c / d.attention_downsample_rate.max(1);
        if d.attention_downsample_rate == 0
            || d.num_attention_heads == 0
            || !internal.is_multiple_of(d.num_attention_heads)
            || !c.is_multiple_of(d.num_attention_heads)
        {
            return Err(format!(
                "mask_decoder_config: width {c} (downsampled by {}) is not divisible into {} \
                 heads",
                d.attention_downsample_rate, d.num_attention_heads
            ));
        }
        if d.num_hidden_layers < 2 || d.iou_head_depth < 2 {
            return Err(
                "mask_decoder_config: num_hidden_layers and iou_head_depth must be at least 2"
                    .into(),
            );
        }
        if !self.prompt.mask_input_channels.is_multiple_of(4)
            || self.prompt.mask_input_channels == 0
        {
            return Err(format!(
                "prompt_encoder_config.mask_input_channels {} must be a positive multiple of 4",
                self.prompt.mask_input_channels
            ));
        }
        if self.prompt.num_point_embeddings < 4 {
            return Err("prompt_encoder_config.num_point_embeddings must be at least 4".into());
        }
        // The three levels the decoder reads: the stage grids at strides 1, 2 and 4 of the
        // patch grid; the coarsest must be the prompt encoder's embedding grid.
        let [gh, gw] = self.hiera.grid();
        let e = self.embedding_side();
        if self.prompt.patch_size == 0 || gh != gw || gh != 4 * e {
            return Err(format!(
                "the {gh}x{gw} patch grid does not give the prompt encoder's {e}x{e} embedding \
                 grid at a quarter of its side (image_size {} / patch_size {})",
                self.prompt.image_size, self.prompt.patch_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> std::result::Result<Sam2Config, String> {
        let f: HfSam2File = og_weights::mirror(&json)?;
        Sam2Config::try_from(f)
    }

    #[test]
    fn defaults_are_hiera_tiny_and_valid() {
        let c = parse(serde_json::json!({"model_type": "sam2"})).unwrap();
        assert_eq!(c, Sam2Config::default());
        assert_eq!(c.hiera.grid(), [256, 256]);
        let blocks = c.hiera.blocks();
        assert_eq!(blocks.len(), 12);
        // Stage 1 starts from stage 0's width and window, pooling its queries.
        assert_eq!(
            blocks[1],
            BlockShape {
                dim: 96,
                dim_out: 192,
                heads: 2,
                window: 8,
                query_stride: Some([2, 2])
            }
        );
        assert_eq!(blocks[5].window, 0);
        assert_eq!(blocks[4].window, 14);
    }

    #[test]
    fn wrong_types_and_impossible_models_are_named() {
        let e =
            parse(serde_json::json!({"vision_config": {"backbone_config": {"mlp_ratio": "4"}}}))
                .unwrap_err();
        assert!(e.contains("vision_config.backbone_config.mlp_ratio"), "{e}");
        let e = parse(serde_json::json!({"model_type": "sam"})).unwrap_err();
        assert!(e.contains("not a SAM 2"), "{e}");
        // A global block that starts a pooled stage (transformers divides by zero there).
        let e = parse(serde_json::json!({"vision_config": {"backbone_config":
            {"global_attention_blocks": [3]}}}))
        .unwrap_err();
        assert!(e.contains("block 3"), "{e}");
        let e =
            parse(serde_json::json!({"mask_decoder_config": {"hidden_size": 128}})).unwrap_err();
        assert!(e.contains("FPN width"), "{e}");
    }
}
