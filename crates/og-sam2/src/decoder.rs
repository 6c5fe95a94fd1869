//! SAM 2's mask decoder, as transformers' `Sam2MaskDecoder`: output tokens (object score, IoU,
//! masks) and prompt tokens run through a two-way transformer with the image embedding; the
//! image side is upscaled ×4 with the high-resolution Hiera features added, and each mask
//! token's hypernetwork MLP gives the weights of its mask (Kirillov et al. 2023, §3; Ravi et al.
//! 2024, §4).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::MaskDecoderConfig;
use crate::prompt::layer_norm_channels_first;

/// Attention whose projections may narrow the width (`attention_downsample_rate`).
#[derive(Module, Debug)]
pub struct Sam2Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    heads: usize,
}

/// ReLU MLP: `proj_in`, `layers`, `proj_out`, optionally a sigmoid.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub proj_in: Linear<B>,
    pub layers: Vec<Linear<B>>,
    pub proj_out: Linear<B>,
    sigmoid_output: bool,
}

/// Token self-attention, token→image attention, MLP, image→token attention.
#[derive(Module, Debug)]
pub struct TwoWayAttentionBlock<B: Backend> {
    pub self_attn: Sam2Attention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub cross_attn_token_to_image: Sam2Attention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub mlp: FeedForward<B>,
    pub layer_norm3: LayerNorm<B>,
    pub layer_norm4: LayerNorm<B>,
    pub cross_attn_image_to_token: Sam2Attention<B>,
    skip_first_layer_pe: bool,
}

/// The blocks and a final token→image attention.
#[derive(Module, Debug)]
pub struct TwoWayTransformer<B: Backend> {
    pub layers: Vec<TwoWayAttentionBlock<B>>,
    pub final_attn_token_to_image: Sam2Attention<B>,
    pub layer_norm_final_attn: LayerNorm<B>,
}

/// The mask decoder.
#[derive(Module, Debug)]
pub struct MaskDecoder<B: Backend> {
    pub iou_token: Embedding<B>,
    pub mask_tokens: Embedding<B>,
    pub obj_score_token: Embedding<B>,
    pub transformer: TwoWayTransformer<B>,
    pub upscale_conv1: ConvTranspose2d<B>,
    pub upscale_layer_norm: LayerNorm<B>,
    pub upscale_conv2: ConvTranspose2d<B>,
    pub output_hypernetworks_mlps: Vec<FeedForward<B>>,
    pub iou_prediction_head: FeedForward<B>,
    pub pred_obj_score_head: FeedForward<B>,
    /// Projects the finest FPN level (stride 4) to C/8 channels.
    pub conv_s0: Conv2d<B>,
    /// Projects the middle FPN level (stride 8) to C/4 channels.
    pub conv_s1: Conv2d<B>,
    dynamic_multimask_via_stability: bool,
    stability_delta: f64,
    stability_thresh: f64,
}

/// What the decoder predicts for `B` images × `P` prompts.
#[derive(Debug, Clone)]
pub struct MaskPrediction<B: Backend> {
    /// `[B, P, K, 4e, 4e]` mask logits (K = 3 with multimask output, else 1).
    pub masks: Tensor<B, 5>,
    /// `[B, P, K]` predicted IoU of each mask.
    pub iou_scores: Tensor<B, 3>,
    /// `[B, P, 1]` logit that the object is present.
    pub object_score_logits: Tensor<B, 3>,
}

fn linear<B: Backend>(i: usize, o: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(i, o).init(device)
}

fn feed_forward<B: Backend>(
    dims: [usize; 3],
    layers: usize,
    sigmoid_output: bool,
    device: &B::Device,
) -> FeedForward<B> {
    let [i, h, o] = dims;
    FeedForward {
        proj_in: linear(i, h, device),
        layers: (0..layers.saturating_sub(2))
            .map(|_| linear(h, h, device))
            .collect(),
        proj_out: linear(h, o, device),
        sigmoid_output,
    }
}

impl MaskDecoderConfig {
    fn attention<B: Backend>(&self, downsample: usize, device: &B::Device) -> Sam2Attention<B> {
        let (c, inner) = (self.hidden_size, self.hidden_size / downsample);
        Sam2Attention {
            q_proj: linear(c, inner, device),
            k_proj: linear(c, inner, device),
            v_proj: linear(c, inner, device),
            o_proj: linear(inner, c, device),
            heads: self.num_attention_heads,
        }
    }

    /// A randomly initialised decoder (weights normally come from a checkpoint).
    pub fn init<B: Backend>(&self, device: &B::Device) -> MaskDecoder<B> {
        let c = self.hidden_size;
        // nn.LayerNorm's default epsilon in the transformer, SAM's 1e-6 in the upscaling.
        let ln = || LayerNormConfig::new(c).with_epsilon(1e-5).init(device);
        let down = self.attention_downsample_rate;
        let layers = (0..self.num_hidden_layers)
            .map(|i| TwoWayAttentionBlock {
                self_attn: self.attention(1, device),
                layer_norm1: ln(),
                cross_attn_token_to_image: self.attention(down, device),
                layer_norm2: ln(),
                mlp: feed_forward([c, self.mlp_dim, c], self.num_hidden_layers, false, device),
                layer_norm3: ln(),
                layer_norm4: ln(),
                cross_attn_image_to_token: self.attention(down, device),
                skip_first_layer_pe: i == 0,
            })
            .collect();
        let tokens = self.num_multimask_outputs + 1;
        let up = |i, o| {
            ConvTranspose2dConfig::new([i, o], [2, 2])
                .with_stride([2, 2])
                .init(device)
        };
        MaskDecoder {
            iou_token: EmbeddingConfig::new(1, c).init(device),
            mask_tokens: EmbeddingConfig::new(tokens, c).init(device),
            obj_score_token: EmbeddingConfig::new(1, c).init(device),
            transformer: TwoWayTransformer {
                layers,
                final_attn_token_to_image: self.attention(down, device),
                layer_norm_final_attn: ln(),
            },
            upscale_conv1: up(c, c / 4),
            upscale_layer_norm: LayerNormConfig::new(c / 4).with_epsilon(1e-6).init(device),
            upscale_conv2: up(c / 4, c / 8),
            output_hypernetworks_mlps: (0..tokens)
                .map(|_| feed_forward([c, c, c / 8], 3, false, device))
                .collect(),
            iou_prediction_head: feed_forward(
                [c, self.iou_head_hidden_dim, tokens],
                self.iou_head_depth,
                true,
                device,
            ),
            pred_obj_score_head: feed_forward([c, c, 1], 3, false, device),
            conv_s0: Conv2dConfig::new([c, c / 8], [1, 1]).init(device),
            conv_s1: Conv2dConfig::new([c, c / 4], [1, 1]).init(device),
            dynamic_multimask_via_stability: self.dynamic_multimask_via_stability,
            stability_delta: self.dynamic_multimask_stability_delta,
            stability_thresh: self.dynamic_multimask_stability_thresh,
        }
    }
}

impl<B: Backend> Sam2Attention<B> {
    /// # Shapes
    /// `q` `[N, Lq, C]`, `k` and `v` `[N, Lk, C]` → `[N, Lq, C]`
    pub fn forward(&self, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, lq, c] = q.dims();
        let lk = k.dims()[1];
        let rows = |t: Tensor<B, 3>, l: usize| t.reshape([n * l, c]);
        let o = og_kernels::multi_head_attention(
            og_kernels::linear_layer(&self.q_proj, rows(q, lq)),
            og_kernels::linear_layer(&self.k_proj, rows(k, lk)),
            og_kernels::linear_layer(&self.v_proj, rows(v, lk)),
            n,
            self.heads,
        );
        og_kernels::linear_layer(&self.o_proj, o).reshape([n, lq, c])
    }
}

impl<B: Backend> FeedForward<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut x = relu(self.proj_in.forward(x));
        for layer in &self.layers {
            x = relu(layer.forward(x));
        }
        let x = self.proj_out.forward(x);
        if self.sigmoid_output { sigmoid(x) } else { x }
    }
}

impl<B: Backend> TwoWayAttentionBlock<B> {
    /// # Shapes
    /// `queries`, `query_pe` `[N, T, C]`; `keys`, `key_pe` `[N, HW, C]`
    pub fn forward(
        &self,
        queries: Tensor<B, 3>,
        keys: Tensor<B, 3>,
        query_pe: Tensor<B, 3>,
        key_pe: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.layer_norm1.forward(queries);
        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let queries = queries.clone() + self.cross_attn_token_to_image.forward(q, k, keys.clone());
        let queries = self.layer_norm2.forward(queries);
        let queries = self
            .layer_norm3
            .forward(queries.clone() + self.mlp.forward(queries));
        let q = queries.clone() + query_pe;
        let k = keys.clone() + key_pe;
        let keys = keys
            + self
                .cross_attn_image_to_token
                .forward(k, q, queries.clone());
        (queries, self.layer_norm4.forward(keys))
    }
}

impl<B: Backend> TwoWayTransformer<B> {
    /// # Shapes
    /// `tokens` `[N, T, C]`; `image`, `image_pe` `[N, HW, C]` → (tokens, image)
    pub fn forward(
        &self,
        tokens: Tensor<B, 3>,
        image: Tensor<B, 3>,
        image_pe: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (mut queries, mut keys) = (tokens.clone(), image);
        for layer in &self.layers {
            (queries, keys) = layer.forward(queries, keys, tokens.clone(), image_pe.clone());
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + image_pe;
        let queries = queries + self.final_attn_token_to_image.forward(q, k, keys.clone());
        (self.layer_norm_final_attn.forward(queries), keys)
    }
}

/// Repeats each image `p` times along the batch (`repeat_interleave`).
fn per_prompt<B: Backend, const D: usize>(x: Tensor<B, D>, p: usize) -> Tensor<B, D> {
    if p == 1 {
        return x;
    }
    let dims = x.dims();
    let b = dims[0];
    let rest: usize = dims[1..].iter().product();
    let mut out = dims;
    out[0] = b * p;
    x.reshape([b, 1, rest]).repeat_dim(1, p).reshape(out)
}

/// The inputs the decoder reads for a batch of images.
pub struct DecoderInputs<B: Backend> {
    /// `[B, C, e, e]` (with the no-memory embedding added).
    pub image_embeddings: Tensor<B, 4>,
    /// `[1, C, e, e]`.
    pub image_pe: Tensor<B, 4>,
    /// `[B, P, T, C]`.
    pub sparse: Tensor<B, 4>,
    /// `[B, C, e, e]`.
    pub dense: Tensor<B, 4>,
    /// `[B, C/8, 4e, 4e]` and `[B, C/4, 2e, 2e]` (after `conv_s0`, `conv_s1`).
    pub high_res: [Tensor<B, 4>; 2],
}

impl<B: Backend> MaskDecoder<B> {
    /// Predicts masks; `multimask` keeps the three multimask outputs, otherwise token 0's mask
    /// (or, with dynamic selection, the best multimask output where token 0's is unstable).
    pub fn forward(&self, x: DecoderInputs<B>, multimask: bool) -> MaskPrediction<B> {
        let [b, c, h, w] = x.image_embeddings.dims();
        let [_, p, t, _] = x.sparse.dims();
        let n = b * p;
        let out_tokens = Tensor::cat(
            vec![
                self.obj_score_token.weight.val(),
                self.iou_token.weight.val(),
                self.mask_tokens.weight.val(),
            ],
            0,
        );
        let k = self.mask_tokens.weight.dims()[0];
        let tokens = Tensor::cat(
            vec![
                out_tokens.unsqueeze_dim::<3>(0).repeat_dim(0, n),
                x.sparse.reshape([n, t, c]),
            ],
            1,
        );
        let flat = |t: Tensor<B, 4>| {
            let [bb, cc, hh, ww] = t.dims();
            t.reshape([bb, cc, hh * ww]).swap_dims(1, 2)
        };
        let image = per_prompt(flat(x.image_embeddings + x.dense), p);
        let image_pe = flat(x.image_pe).repeat_dim(0, n);
        let (tokens, image) = self.transformer.forward(tokens, image, image_pe);

        let image = image.swap_dims(1, 2).reshape([n, c, h, w]);
        let [s0, s1] = x.high_res;
        let up = self.upscale_conv1.forward(image) + per_prompt(s1, p);
        let up = og_kernels::gelu(layer_norm_channels_first(&self.upscale_layer_norm, up));
        let up = og_kernels::gelu(self.upscale_conv2.forward(up) + per_prompt(s0, p));
        let [_, cu, hu, wu] = up.dims();
        let hyper = Tensor::cat(
            self.output_hypernetworks_mlps
                .iter()
                .enumerate()
                .map(|(i, mlp)| mlp.forward(tokens.clone().narrow(1, 2 + i, 1)))
                .collect(),
            1,
        );
        let masks = hyper.matmul(up.reshape([n, cu, hu * wu]));
        let iou = self
            .iou_prediction_head
            .forward(tokens.clone().narrow(1, 1, 1))
            .reshape([n, k]);
        let object = self
            .pred_obj_score_head
            .forward(tokens.narrow(1, 0, 1))
            .reshape([b, p, 1]);
        let (masks, iou) = if multimask {
            (masks.narrow(1, 1, k - 1), iou.narrow(1, 1, k - 1))
        } else if self.dynamic_multimask_via_stability {
            self.select_stable(masks, iou)
        } else {
            (masks.narrow(1, 0, 1), iou.narrow(1, 0, 1))
        };
        let kk = masks.dims()[1];
        MaskPrediction {
            masks: masks.reshape([b, p, kk, hu, wu]),
            iou_scores: iou.reshape([b, p, kk]),
            object_score_logits: object,
        }
    }

    /// Sets the stability score below which single-mask output falls back to the best
    /// multimask output (`dynamic_multimask_stability_thresh`).
    pub fn set_stability_threshold(&mut self, threshold: f64) {
        self.stability_thresh = threshold;
    }

    /// Token 0's mask where its stability score (IoU of the masks thresholded at ±δ) reaches
    /// the threshold, else the multimask output with the highest predicted IoU.
    ///
    /// # Shapes
    /// `masks` `[N, K, HW]`, `iou` `[N, K]` → `[N, 1, HW]`, `[N, 1]`
    fn select_stable(
        &self,
        masks: Tensor<B, 3>,
        iou: Tensor<B, 2>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [n, k, hw] = masks.dims();
        let single = masks.clone().narrow(1, 0, 1).reshape([n, hw]);
        let inter = single
            .clone()
            .greater_elem(self.stability_delta)
            .float()
            .sum_dim(1);
        let union = single
            .greater_elem(-self.stability_delta)
            .float()
            .sum_dim(1);
        let (inter, union) = (crate::host_f32(inter), crate::host_f32(union));
        let scores = crate::host_f32(iou.clone());
        let pick: Vec<i64> = (0..n)
            .map(|i| {
                let stability = if union[i] > 0.0 {
                    inter[i] / union[i]
                } else {
                    1.0
                };
                // Compared in f32, as torch compares a float32 tensor with a Python float.
                let choice = if stability >= self.stability_thresh as f32 {
                    0
                } else {
                    // First maximum among tokens 1.., as torch.argmax.
                    let row = &scores[i * k + 1..(i + 1) * k];
                    1 + row
                        .iter()
                        .enumerate()
                        .fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
                };
                (i * k + choice) as i64
            })
            .collect();
        let device = masks.device();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(pick, [n]), &device);
        let masks = masks
            .reshape([n * k, hw])
            .select(0, rows.clone())
            .reshape([n, 1, hw]);
        let iou = iou.reshape([n * k]).select(0, rows).reshape([n, 1]);
        (masks, iou)
    }
}
