//! The SAM 2 image model, as transformers' `Sam2Model` without the video memory: encode an
//! image once ([`Sam2Model::image_embeddings`]), then decode masks for any number of prompts
//! ([`Sam2Model::predict`]).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::Sam2Config;
use crate::decoder::{DecoderInputs, MaskDecoder, MaskPrediction};
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
    /// A randomly initialised model (weights normally come from [`Sam2Model::open`]).
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
}
