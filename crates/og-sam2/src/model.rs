//! The SAM 2 image model, as transformers' `Sam2Model` without the video memory: encode an
//! image once ([`Sam2Model::image_embeddings`]), then decode masks for any number of prompts
//! ([`Sam2Model::predict`]).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use og_weights::Weights;

use crate::config::Sam2Config;
use crate::decoder::{DecoderInputs, FeedForward, MaskDecoder, MaskPrediction, Sam2Attention};
use crate::error::{Result, Sam2Error};
use crate::hiera::VisionEncoder;
use crate::prompt::{PositionalEmbedding, PromptEncoder, Prompts};

/// SAM 2 for images. Field names are transformers' parameter names.
#[derive(Module, Debug)]
pub struct Sam2Model<B: Backend> {
    /// The position encoding of the image grid (a copy of the prompt encoder's in released
    /// checkpoints, stored separately).
    pub shared_image_embedding: PositionalEmbedding<B>,
    pub vision_encoder: VisionEncoder<B>,
    pub prompt_encoder: PromptEncoder<B>,
    pub mask_decoder: MaskDecoder<B>,
    /// `[1, 1, C]`, added to the coarsest level when there is no video memory.
    pub no_memory_embedding: Param<Tensor<B, 3>>,
    image_size: [usize; 2],
}

/// An encoded batch of images: what [`Sam2Model::predict`] reads.
#[derive(Debug, Clone)]
pub struct ImageEmbeddings<B: Backend> {
    /// `[B, C/8, 4e, 4e]` and `[B, C/4, 2e, 2e]`: the two finer FPN levels after the decoder's
    /// `conv_s0`/`conv_s1`.
    pub high_res: [Tensor<B, 4>; 2],
    /// `[B, C, e, e]`: the coarsest level plus the no-memory embedding.
    pub embedding: Tensor<B, 4>,
}

impl Sam2Config {
    /// A randomly initialised model (weights normally come from [`Sam2Model::load_hf`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Sam2Model<B>> {
        self.validate()?;
        Ok(Sam2Model {
            shared_image_embedding: self.prompt.init_positional(device),
            vision_encoder: VisionEncoder {
                backbone: self.hiera.init(device),
                neck: self.neck.init(device),
            },
            prompt_encoder: self.prompt.init(device),
            mask_decoder: self.decoder.init(device),
            no_memory_embedding: Param::from_tensor(Tensor::zeros(
                [1, 1, self.neck.fpn_hidden_size],
                device,
            )),
            image_size: self.hiera.image_size,
        })
    }
}

impl<B: Backend> Sam2Model<B> {
    /// Builds the model of a transformers `Sam2Model` `save_pretrained` directory.
    pub fn load_hf(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = Sam2Config::from_hf(dir)?;
        let weights = Weights::open(dir)?;
        config.init::<B>(device)?.load_weights(&weights)
    }

    /// The `[H, W]` of the images the model reads.
    pub fn image_size(&self) -> [usize; 2] {
        self.image_size
    }

    /// Encodes images.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` normalised pixels at [`Sam2Model::image_size`].
    pub fn image_embeddings(&self, pixels: Tensor<B, 4>) -> Result<ImageEmbeddings<B>> {
        let [_, c, h, w] = pixels.dims();
        let want_c = self
            .vision_encoder
            .backbone
            .patch_embed
            .projection
            .weight
            .dims()[1];
        if c != want_c || [h, w] != self.image_size {
            return Err(Sam2Error::Input(format!(
                "pixel values are [_, {c}, {h}, {w}]; the model reads [_, {want_c}, {}, {}]",
                self.image_size[0], self.image_size[1]
            )));
        }
        let levels = self.vision_encoder.forward(pixels);
        let [s0, s1, coarse] = [&levels[0], &levels[1], &levels[2]].map(Clone::clone);
        let cc = coarse.dims()[1];
        let memory = self.no_memory_embedding.val().reshape([1, cc, 1, 1]);
        Ok(ImageEmbeddings {
            high_res: [
                self.mask_decoder.conv_s0.forward(s0),
                self.mask_decoder.conv_s1.forward(s1),
            ],
            embedding: coarse + memory,
        })
    }

    /// The position encoding of the `e`×`e` embedding grid, `[1, C, e, e]` (cell centres).
    pub fn image_positional_embeddings(&self) -> Tensor<B, 4> {
        let e = self.prompt_encoder.embedding_side();
        let device = self.no_memory_embedding.device();
        let coords: Vec<f32> = (0..e * e)
            .flat_map(|i| {
                let (y, x) = (i / e, i % e);
                [(x as f32 + 0.5) / e as f32, (y as f32 + 0.5) / e as f32]
            })
            .collect();
        let coords = Tensor::<B, 2>::from_data(TensorData::new(coords, [e * e, 2]), &device);
        let pe = self.shared_image_embedding.forward(coords);
        let c = pe.dims()[1];
        pe.swap_dims(0, 1).reshape([1, c, e, e])
    }

    /// Decodes masks for the prompts of each encoded image.
    pub fn predict(
        &self,
        images: &ImageEmbeddings<B>,
        prompts: &Prompts<B>,
        multimask: bool,
    ) -> Result<MaskPrediction<B>> {
        let batch = images.embedding.dims()[0];
        let (sparse, dense) = self.prompt_encoder.forward(prompts, batch)?;
        Ok(self.mask_decoder.forward(
            DecoderInputs {
                image_embeddings: images.embedding.clone(),
                image_pe: self.image_positional_embeddings(),
                sparse,
                dense,
                high_res: images.high_res.clone(),
            },
            multimask,
        ))
    }

    /// Loads every parameter from a transformers `Sam2Model` checkpoint.
    pub fn load_weights(mut self, w: &Weights) -> Result<Self> {
        w.load_param(
            "shared_image_embedding.positional_embedding",
            &mut self.shared_image_embedding.positional_embedding,
        )?;
        w.load_param("no_memory_embedding", &mut self.no_memory_embedding)?;
        self.load_vision(w)?;
        self.load_prompt_encoder(w)?;
        self.load_mask_decoder(w)?;
        let extra = format!(
            "vision_encoder.backbone.blocks.{}.layer_norm1.weight",
            self.vision_encoder.backbone.blocks.len()
        );
        if w.contains(&extra) {
            return Err(Sam2Error::Config {
                path: w.origin().to_path_buf(),
                message: format!(
                    "the checkpoint has more than the {} Hiera blocks its config declares",
                    self.vision_encoder.backbone.blocks.len()
                ),
            });
        }
        Ok(self)
    }

    fn load_vision(&mut self, w: &Weights) -> Result<()> {
        let p = "vision_encoder.backbone";
        let h = &mut self.vision_encoder.backbone;
        w.load_conv2d(
            &format!("{p}.patch_embed.projection"),
            &mut h.patch_embed.projection,
        )?;
        w.load_param(&format!("{p}.pos_embed"), &mut h.pos_embed)?;
        w.load_param(&format!("{p}.pos_embed_window"), &mut h.pos_embed_window)?;
        for (i, b) in h.blocks.iter_mut().enumerate() {
            let l = format!("{p}.blocks.{i}");
            w.load_layer_norm(&format!("{l}.layer_norm1"), &mut b.layer_norm1)?;
            w.load_layer_norm(&format!("{l}.layer_norm2"), &mut b.layer_norm2)?;
            w.load_linear(&format!("{l}.attn.qkv"), &mut b.attn.qkv)?;
            w.load_linear(&format!("{l}.attn.proj"), &mut b.attn.proj)?;
            w.load_linear(&format!("{l}.mlp.proj_in"), &mut b.mlp.proj_in)?;
            w.load_linear(&format!("{l}.mlp.proj_out"), &mut b.mlp.proj_out)?;
            if let Some(proj) = &mut b.proj {
                w.load_linear(&format!("{l}.proj"), proj)?;
            }
        }
        for (i, conv) in self.vision_encoder.neck.convs.iter_mut().enumerate() {
            w.load_conv2d(&format!("vision_encoder.neck.convs.{i}"), conv)?;
        }
        Ok(())
    }

    fn load_prompt_encoder(&mut self, w: &Weights) -> Result<()> {
        let p = "prompt_encoder";
        let e = &mut self.prompt_encoder;
        w.load_param(
            &format!("{p}.shared_embedding.positional_embedding"),
            &mut e.shared_embedding.positional_embedding,
        )?;
        let m = &mut e.mask_embed;
        w.load_conv2d(&format!("{p}.mask_embed.conv1"), &mut m.conv1)?;
        w.load_conv2d(&format!("{p}.mask_embed.conv2"), &mut m.conv2)?;
        w.load_conv2d(&format!("{p}.mask_embed.conv3"), &mut m.conv3)?;
        w.load_layer_norm(&format!("{p}.mask_embed.layer_norm1"), &mut m.layer_norm1)?;
        w.load_layer_norm(&format!("{p}.mask_embed.layer_norm2"), &mut m.layer_norm2)?;
        for (name, emb) in [
            ("no_mask_embed", &mut e.no_mask_embed),
            ("point_embed", &mut e.point_embed),
            ("not_a_point_embed", &mut e.not_a_point_embed),
        ] {
            w.load_param(&format!("{p}.{name}.weight"), &mut emb.weight)?;
        }
        Ok(())
    }

    fn load_mask_decoder(&mut self, w: &Weights) -> Result<()> {
        let p = "mask_decoder";
        let d = &mut self.mask_decoder;
        for (name, emb) in [
            ("iou_token", &mut d.iou_token),
            ("mask_tokens", &mut d.mask_tokens),
            ("obj_score_token", &mut d.obj_score_token),
        ] {
            w.load_param(&format!("{p}.{name}.weight"), &mut emb.weight)?;
        }
        let t = &mut d.transformer;
        for (i, l) in t.layers.iter_mut().enumerate() {
            let n = format!("{p}.transformer.layers.{i}");
            load_attention(w, &format!("{n}.self_attn"), &mut l.self_attn)?;
            load_attention(
                w,
                &format!("{n}.cross_attn_token_to_image"),
                &mut l.cross_attn_token_to_image,
            )?;
            load_attention(
                w,
                &format!("{n}.cross_attn_image_to_token"),
                &mut l.cross_attn_image_to_token,
            )?;
            load_feed_forward(w, &format!("{n}.mlp"), &mut l.mlp)?;
            for (k, ln) in [
                &mut l.layer_norm1,
                &mut l.layer_norm2,
                &mut l.layer_norm3,
                &mut l.layer_norm4,
            ]
            .into_iter()
            .enumerate()
            {
                w.load_layer_norm(&format!("{n}.layer_norm{}", k + 1), ln)?;
            }
        }
        load_attention(
            w,
            &format!("{p}.transformer.final_attn_token_to_image"),
            &mut t.final_attn_token_to_image,
        )?;
        w.load_layer_norm(
            &format!("{p}.transformer.layer_norm_final_attn"),
            &mut t.layer_norm_final_attn,
        )?;
        w.load_conv_transpose2d(&format!("{p}.upscale_conv1"), &mut d.upscale_conv1)?;
        w.load_conv_transpose2d(&format!("{p}.upscale_conv2"), &mut d.upscale_conv2)?;
        w.load_layer_norm(
            &format!("{p}.upscale_layer_norm"),
            &mut d.upscale_layer_norm,
        )?;
        for (i, mlp) in d.output_hypernetworks_mlps.iter_mut().enumerate() {
            load_feed_forward(w, &format!("{p}.output_hypernetworks_mlps.{i}"), mlp)?;
        }
        load_feed_forward(
            w,
            &format!("{p}.iou_prediction_head"),
            &mut d.iou_prediction_head,
        )?;
        load_feed_forward(
            w,
            &format!("{p}.pred_obj_score_head"),
            &mut d.pred_obj_score_head,
        )?;
        w.load_conv2d(&format!("{p}.conv_s0"), &mut d.conv_s0)?;
        w.load_conv2d(&format!("{p}.conv_s1"), &mut d.conv_s1)?;
        Ok(())
    }
}

fn load_attention<B: Backend>(w: &Weights, name: &str, a: &mut Sam2Attention<B>) -> Result<()> {
    w.load_linear(&format!("{name}.q_proj"), &mut a.q_proj)?;
    w.load_linear(&format!("{name}.k_proj"), &mut a.k_proj)?;
    w.load_linear(&format!("{name}.v_proj"), &mut a.v_proj)?;
    w.load_linear(&format!("{name}.o_proj"), &mut a.o_proj)?;
    Ok(())
}

fn load_feed_forward<B: Backend>(w: &Weights, name: &str, f: &mut FeedForward<B>) -> Result<()> {
    w.load_linear(&format!("{name}.proj_in"), &mut f.proj_in)?;
    for (i, l) in f.layers.iter_mut().enumerate() {
        w.load_linear(&format!("{name}.layers.{i}"), l)?;
    }
    w.load_linear(&format!("{name}.proj_out"), &mut f.proj_out)?;
    Ok(())
}
