//! SAM 2's prompt encoder, as transformers' `Sam2PromptEncoder`: points and box corners become
//! random-Fourier position encodings (Tancik et al. 2020) plus learned type embeddings (sparse
//! tokens); a low-resolution mask becomes a dense embedding through a small convolution stack.

use std::f64::consts::PI;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::PromptEncoderConfig;
use crate::error::{Result, Sam2Error};

/// Point labels as SAM 2 reads them.
pub mod label {
    /// A point on the object.
    pub const FOREGROUND: i32 = 1;
    /// A point off the object.
    pub const BACKGROUND: i32 = 0;
    /// "Not a point": the learned not-a-point embedding.
    pub const NOT_A_POINT: i32 = -1;
    /// Padding: contributes nothing.
    pub const PADDING: i32 = -10;
}

/// Point prompts of a batch of images.
#[derive(Debug, Clone)]
pub struct Points<B: Backend> {
    /// `[B, P, N, 2]`: (x, y) in the model's input frame (pixels of the resized image), for
    /// `P` masks per image, `N` points per mask.
    pub coords: Tensor<B, 4>,
    /// `B·P·N` labels, row-major ([`label`]; 2 and 3 are the box corners' types).
    pub labels: Vec<i32>,
}

/// Everything that may prompt the mask decoder for a batch of images.
#[derive(Debug, Clone, Default)]
pub struct Prompts<B: Backend> {
    pub points: Option<Points<B>>,
    /// `[B, P, 4]`: (x1, y1, x2, y2) in the model's input frame.
    pub boxes: Option<Tensor<B, 3>>,
    /// `[B, 1, 4e, 4e]` mask logits (e the embedding grid side).
    pub masks: Option<Tensor<B, 4>>,
}

/// Random Fourier features of 2-D coordinates: `[sin(2π·c·G), cos(2π·c·G)]` with
/// `c = 2·xy − 1` and a fixed Gaussian `G` of shape `[2, C/2]`.
#[derive(Module, Debug)]
pub struct PositionalEmbedding<B: Backend> {
    pub positional_embedding: Param<Tensor<B, 2>>,
}

/// The dense mask prompt: two stride-2 convolutions with channels-first LayerNorm and GELU,
/// then a 1×1 convolution to the model width.
#[derive(Module, Debug)]
pub struct MaskEmbedding<B: Backend> {
    pub conv1: Conv2d<B>,
    pub layer_norm1: LayerNorm<B>,
    pub conv2: Conv2d<B>,
    pub layer_norm2: LayerNorm<B>,
    pub conv3: Conv2d<B>,
}

/// The prompt encoder.
#[derive(Module, Debug)]
pub struct PromptEncoder<B: Backend> {
    pub shared_embedding: PositionalEmbedding<B>,
    pub mask_embed: MaskEmbedding<B>,
    pub no_mask_embed: Embedding<B>,
    /// Type embeddings: 0 background, 1 foreground, 2 top-left corner, 3 bottom-right corner.
    pub point_embed: Embedding<B>,
    pub not_a_point_embed: Embedding<B>,
    input_image_size: usize,
    embedding_side: usize,
}

impl PromptEncoderConfig {
    /// The position encoding's random matrix (weights normally come from a checkpoint).
    pub fn init_positional<B: Backend>(&self, device: &B::Device) -> PositionalEmbedding<B> {
        PositionalEmbedding {
            positional_embedding: burn::nn::Initializer::Normal {
                mean: 0.0,
                std: self.scale,
            }
            .init([2, self.hidden_size / 2], device),
        }
    }

    /// A randomly initialised prompt encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PromptEncoder<B> {
        let c = self.hidden_size;
        let m = self.mask_input_channels;
        let ln = |d| {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let conv = |i, o, k: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([k, k])
                .init(device)
        };
        PromptEncoder {
            shared_embedding: self.init_positional(device),
            mask_embed: MaskEmbedding {
                conv1: conv(1, m / 4, 2),
                layer_norm1: ln(m / 4),
                conv2: conv(m / 4, m, 2),
                layer_norm2: ln(m),
                conv3: conv(m, c, 1),
            },
            no_mask_embed: EmbeddingConfig::new(1, c).init(device),
            point_embed: EmbeddingConfig::new(self.num_point_embeddings, c).init(device),
            not_a_point_embed: EmbeddingConfig::new(1, c).init(device),
            input_image_size: self.image_size,
            embedding_side: self.image_size / self.patch_size,
        }
    }
}

impl<B: Backend> PositionalEmbedding<B> {
    /// # Shapes
    /// `[M, 2]` coordinates in `[0, 1]²` → `[M, C]`
    pub fn forward(&self, coords: Tensor<B, 2>) -> Tensor<B, 2> {
        let c = (coords * 2.0 - 1.0).matmul(self.positional_embedding.val()) * (2.0 * PI);
        Tensor::cat(vec![c.clone().sin(), c.cos()], 1)
    }
}

/// LayerNorm over the channels of `[B, C, H, W]`.
pub(crate) fn layer_norm_channels_first<B: Backend>(
    ln: &LayerNorm<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    ln.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

impl<B: Backend> MaskEmbedding<B> {
    /// # Shapes
    /// `[B, 1, 4e, 4e]` → `[B, C, e, e]`
    pub fn forward(&self, masks: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = og_kernels::gelu(layer_norm_channels_first(
            &self.layer_norm1,
            self.conv1.forward(masks),
        ));
        let x = og_kernels::gelu(layer_norm_channels_first(
            &self.layer_norm2,
            self.conv2.forward(x),
        ));
        self.conv3.forward(x)
    }
}

/// Host-side per-point factors: keep the position encoding, use the not-a-point embedding,
/// one-hot of the type embedding.
fn point_factors(labels: &[i32], types: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let n = labels.len();
    let (mut keep, mut nap, mut onehot) = (vec![0.0; n], vec![0.0; n], vec![0.0; n * types]);
    for (i, &l) in labels.iter().enumerate() {
        match l {
            label::PADDING => {}
            label::NOT_A_POINT => nap[i] = 1.0,
            l if l >= 0 && (l as usize) < types => {
                keep[i] = 1.0;
                onehot[i * types + l as usize] = 1.0;
            }
            other => {
                return Err(Sam2Error::Input(format!(
                    "point label {other}: SAM 2 reads 1 (foreground), 0 (background), -1 (not a \
                     point) or -10 (padding)"
                )));
            }
        }
    }
    Ok((keep, nap, onehot))
}

impl<B: Backend> PromptEncoder<B> {
    /// The embedding grid side `e`.
    pub fn embedding_side(&self) -> usize {
        self.embedding_side
    }

    fn encode(&self, coords: Tensor<B, 2>) -> Tensor<B, 2> {
        self.shared_embedding
            .forward((coords + 0.5) / self.input_image_size as f64)
    }

    /// Point tokens `[B, P, N(+1), C]`; `pad` appends a not-a-point token per mask, as SAM
    /// does when no box follows.
    fn embed_points(&self, points: &Points<B>, pad: bool) -> Result<Tensor<B, 4>> {
        let [b, p, n, two] = points.coords.dims();
        if two != 2 || points.labels.len() != b * p * n {
            return Err(Sam2Error::Input(format!(
                "point prompts: coordinates [{b}, {p}, {n}, {two}] with {} labels (want [B, P, \
                 N, 2] and B·P·N labels)",
                points.labels.len()
            )));
        }
        let device = points.coords.device();
        let (coords, labels, n) = if pad {
            let zeros = Tensor::zeros([b, p, 1, 2], &device);
            let coords = Tensor::cat(vec![points.coords.clone(), zeros], 2);
            let labels = points
                .labels
                .chunks(n.max(1))
                .flat_map(|c| c.iter().copied().chain([label::NOT_A_POINT]))
                .collect::<Vec<_>>();
            let labels = if n == 0 {
                vec![label::NOT_A_POINT; b * p]
            } else {
                labels
            };
            (coords, labels, n + 1)
        } else {
            (points.coords.clone(), points.labels.clone(), n)
        };
        let m = b * p * n;
        let c = self.point_embed.weight.dims()[1];
        let types = self.point_embed.weight.dims()[0];
        let (keep, nap, onehot) = point_factors(&labels, types)?;
        let col = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [m, 1]), &device);
        let onehot = Tensor::<B, 2>::from_data(TensorData::new(onehot, [m, types]), &device);
        let pe = self.encode(coords.reshape([m, 2])) * col(keep);
        let nap = col(nap).matmul(self.not_a_point_embed.weight.val());
        let typed = onehot.matmul(self.point_embed.weight.val());
        Ok((pe + nap + typed).reshape([b, p, n, c]))
    }

    /// Box tokens `[B, P, 3, C]`: the two corners with their type embeddings, then a
    /// not-a-point token.
    fn embed_boxes(&self, boxes: &Tensor<B, 3>) -> Result<Tensor<B, 4>> {
        let [b, p, four] = boxes.dims();
        if four != 4 {
            return Err(Sam2Error::Input(format!(
                "box prompts are [{b}, {p}, {four}], want [B, P, 4] (x1, y1, x2, y2)"
            )));
        }
        let c = self.point_embed.weight.dims()[1];
        let corners = self.encode(boxes.clone().reshape([b * p * 2, 2]));
        let types = self.point_embed.weight.val().narrow(0, 2, 2);
        let corners = corners.reshape([b * p, 2, c]) + types.unsqueeze_dim(0);
        let nap = self
            .not_a_point_embed
            .weight
            .val()
            .reshape([1, 1, c])
            .repeat_dim(0, b * p);
        Ok(Tensor::cat(vec![corners, nap], 1).reshape([b, p, 3, c]))
    }

    /// Sparse tokens `[B, P, T, C]` and the dense embedding `[B, C, e, e]`. Without points and
    /// boxes, one not-a-point pair per image (as `Sam2Model.forward`).
    pub fn forward(
        &self,
        prompts: &Prompts<B>,
        batch: usize,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let device = self.point_embed.weight.device();
        let empty;
        let points = match (&prompts.points, &prompts.boxes) {
            (None, None) => {
                empty = Points {
                    coords: Tensor::zeros([batch, 1, 1, 2], &device),
                    labels: vec![label::NOT_A_POINT; batch],
                };
                Some(&empty)
            }
            (p, _) => p.as_ref(),
        };
        let mut sparse = Vec::new();
        if let Some(p) = points {
            sparse.push(self.embed_points(p, prompts.boxes.is_none())?);
        }
        if let Some(b) = &prompts.boxes {
            sparse.push(self.embed_boxes(b)?);
        }
        let [b0, p0, _, _] = sparse[0].dims();
        if sparse
            .iter()
            .any(|s| s.dims()[0] != b0 || s.dims()[1] != p0)
            || b0 != batch
        {
            return Err(Sam2Error::Input(format!(
                "prompts for {} images × {:?} masks; the batch has {batch} images (points and \
                 boxes must prompt the same number of masks)",
                b0,
                sparse.iter().map(|s| s.dims()[1]).collect::<Vec<_>>()
            )));
        }
        let sparse = Tensor::cat(sparse, 2);
        let e = self.embedding_side;
        let dense = match &prompts.masks {
            Some(m) => {
                let want = [batch, 1, 4 * e, 4 * e];
                if m.dims() != want {
                    return Err(Sam2Error::Input(format!(
                        "mask prompts are {:?}, want {want:?}",
                        m.dims()
                    )));
                }
                self.mask_embed.forward(m.clone())
            }
            None => {
                let c = self.no_mask_embed.weight.dims()[1];
                self.no_mask_embed
                    .weight
                    .val()
                    .reshape([1, c, 1, 1])
                    .repeat_dim(0, batch)
                    .repeat_dim(2, e)
                    .repeat_dim(3, e)
            }
        };
        Ok((sparse, dense))
    }
}
