//! The CLIP vision transformer as transformers' `CLIPVisionTransformer`: patch convolution
//! without bias, class embedding, learned position embeddings, `pre_layrnorm`, pre-LN encoder
//! layers, `post_layernorm` on the pooled CLS token. Field names mirror HF's parameters.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::config::{ClipActivation, ClipVisionConfig, SelectFeature};
use crate::error::{Result, VisionError};

/// Patch, class and position embeddings.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings<B: Backend> {
    pub class_embedding: Param<Tensor<B, 1>>,
    pub patch_embedding: Conv2d<B>,
    pub position_embedding: Embedding<B>,
}

/// Multi-head self-attention (no mask: every patch sees every patch).
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    num_heads: usize,
}

/// `fc1` → activation → `fc2`.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    activation: ClipActivation,
}

/// One pre-LN encoder layer.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    pub self_attn: ClipAttention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
    pub layer_norm2: LayerNorm<B>,
}

/// The CLIP vision tower.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    pub embeddings: ClipVisionEmbeddings<B>,
    pub pre_layrnorm: LayerNorm<B>,
    pub layers: Vec<ClipEncoderLayer<B>>,
    pub post_layernorm: LayerNorm<B>,
    image_size: usize,
    patch_size: usize,
    hidden_size: usize,
    selected_hidden_state: usize,
    keep_cls: bool,
}

impl ClipVisionConfig {
    /// A randomly initialised tower (weights normally come from [`ClipVisionTransformer::load_hf`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ClipVisionTransformer<B>> {
        self.validate()?;
        let h = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let activation = self.hidden_act;
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: lin(h, h),
                    k_proj: lin(h, h),
                    v_proj: lin(h, h),
                    out_proj: lin(h, h),
                    num_heads: self.num_attention_heads,
                },
                layer_norm1: ln(),
                mlp: ClipMlp {
                    fc1: lin(h, self.intermediate_size),
                    fc2: lin(self.intermediate_size, h),
                    activation,
                },
                layer_norm2: ln(),
            })
            .collect();
        Ok(ClipVisionTransformer {
            embeddings: ClipVisionEmbeddings {
                class_embedding: burn::nn::Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init([h], device),
                patch_embedding: Conv2dConfig::new(
                    [self.num_channels, h],
                    [self.patch_size, self.patch_size],
                )
                .with_stride([self.patch_size, self.patch_size])
                .with_bias(false)
                .init(device),
                position_embedding: EmbeddingConfig::new(self.num_patches() + 1, h).init(device),
            },
            pre_layrnorm: ln(),
            layers,
            post_layernorm: ln(),
            image_size: self.image_size,
            patch_size: self.patch_size,
            hidden_size: h,
            selected_hidden_state: self.selected_hidden_state()?,
            keep_cls: self.select_feature == SelectFeature::ClsPatch,
        })
    }
}

impl<B: Backend> ClipAttention<B> {
    /// # Shapes
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, h] = x.dims();
        // Projections on the flattened tokens: one plain matmul each; the heads are read from
        // their columns (fused per head on Flex, burn's attention op elsewhere).
        let x = x.reshape([b * n, h]);
        let q = og_kernels::linear_layer(&self.q_proj, x.clone());
        let k = og_kernels::linear_layer(&self.k_proj, x.clone());
        let v = og_kernels::linear_layer(&self.v_proj, x);
        let out = og_kernels::multi_head_attention(q, k, v, b, self.num_heads);
        og_kernels::linear_layer(&self.out_proj, out).reshape([b, n, h])
    }
}

impl<B: Backend> ClipMlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, h] = x.dims();
        let x = og_kernels::linear_layer(&self.fc1, x.reshape([b * n, h]));
        let x = match self.activation {
            ClipActivation::QuickGelu => og_kernels::quick_gelu(x),
            ClipActivation::Gelu => gelu(x),
            ClipActivation::GeluTanh => burn::tensor::activation::gelu_approximate(x),
        };
        og_kernels::linear_layer(&self.fc2, x).reshape([b, n, h])
    }
}

impl<B: Backend> ClipEncoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// Outputs of [`ClipVisionTransformer::forward_hidden_states`].
#[derive(Debug, Clone)]
pub struct ClipVisionOutput<B: Backend> {
    /// `hidden_states[0]` (embeddings after `pre_layrnorm`) … `hidden_states[k]`.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

impl<B: Backend> ClipVisionTransformer<B> {
    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// F, the feature width.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn check_input(&self, pixel_values: &Tensor<B, 4>) -> Result<()> {
        let [_, c, h, w] = pixel_values.dims();
        let want_c = self.embeddings.patch_embedding.weight.dims()[1];
        if c != want_c || h != self.image_size || w != self.image_size {
            return Err(VisionError::Input(format!(
                "pixel_values are [_, {c}, {h}, {w}], the tower expects [_, {want_c}, {s}, {s}]",
                s = self.image_size
            )));
        }
        Ok(())
    }

    /// The patch embedding — a bias-free p×p convolution with stride p — as one matmul over
    /// the image's non-overlapping patches (row-major over the grid, channels then rows then
    /// columns inside a patch, as the convolution's weight is laid out): the same values as
    /// `Conv2d::forward` and several times faster on the CPU backends.
    ///
    /// # Shapes
    /// `[batch, C, S, S]` → `[batch, V, hidden]`
    fn embed_patches(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, s, _] = pixel_values.dims();
        let p = self.patch_size;
        let g = s / p;
        let conv = &self.embeddings.patch_embedding;
        let h = conv.weight.dims()[0];
        let cols = pixel_values
            .reshape([b, c, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, g * g, c * p * p]);
        let w = conv.weight.val().reshape([h, c * p * p]).transpose();
        let out = cols.matmul(w.unsqueeze::<3>());
        match &conv.bias {
            Some(bias) => out + bias.val().reshape([1, 1, h]),
            None => out,
        }
    }

    /// `hidden_states[0..=upto]`, computing only the layers needed.
    ///
    /// # Shapes
    /// `pixel_values`: `[batch, 3, S, S]`; each hidden state `[batch, 1 + V, F]`
    pub fn forward_hidden_states(
        &self,
        pixel_values: Tensor<B, 4>,
        upto: usize,
    ) -> Result<ClipVisionOutput<B>> {
        self.check_input(&pixel_values)?;
        if upto > self.layers.len() {
            return Err(VisionError::Input(format!(
                "hidden state {upto} requested from a {}-layer tower",
                self.layers.len()
            )));
        }
        let [b, _, _, _] = pixel_values.dims();
        let device = pixel_values.device();
        let h = self.hidden_size;
        let patches = self.embed_patches(pixel_values); // [b, V, h]
        let cls = self
            .embeddings
            .class_embedding
            .val()
            .reshape([1, 1, h])
            .expand([b, 1, h]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let n = x.dims()[1];
        let positions = Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let x = x + self.embeddings.position_embedding.forward(positions);
        let mut x = self.pre_layrnorm.forward(x);
        let mut hidden_states = Vec::with_capacity(upto + 1);
        hidden_states.push(x.clone());
        for layer in &self.layers[..upto] {
            x = layer.forward(x);
            hidden_states.push(x.clone());
        }
        Ok(ClipVisionOutput { hidden_states })
    }

    /// X': the selected layer's features, CLS dropped unless configured otherwise.
    ///
    /// # Shapes
    /// `[batch, 3, S, S]` → `[batch, V, F]` (or `[batch, 1 + V, F]` with `cls_patch`)
    pub fn features(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let out = self.forward_hidden_states(pixel_values, self.selected_hidden_state)?;
        let x = out
            .hidden_states
            .into_iter()
            .next_back()
            .expect("at least one state");
        Ok(if self.keep_cls {
            x
        } else {
            let [b, n, _] = x.dims();
            x.slice([0..b, 1..n])
        })
    }

    /// `post_layernorm` of the last layer's CLS token (HF's `pooler_output`).
    pub fn pooled(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        let out = self.forward_hidden_states(pixel_values, self.layers.len())?;
        let last = out.hidden_states.into_iter().next_back().expect("states");
        Ok(self.pool_cls(last))
    }

    /// [`Self::features`] and [`Self::pooled`] from one forward pass (a training objective
    /// that reads both).
    ///
    /// # Shapes
    /// `[batch, 3, S, S]` → (`[batch, V, F]` or `[batch, 1 + V, F]`, `[batch, F]`)
    pub fn features_and_pooled(
        &self,
        pixel_values: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        let mut states = self
            .forward_hidden_states(pixel_values, self.layers.len())?
            .hidden_states;
        let last = states.pop().expect("states");
        let x = match states.into_iter().nth(self.selected_hidden_state) {
            Some(x) => x,
            None => last.clone(),
        };
        let features = if self.keep_cls {
            x
        } else {
            let [b, n, _] = x.dims();
            x.slice([0..b, 1..n])
        };
        Ok((features, self.pool_cls(last)))
    }

    fn pool_cls(&self, last: Tensor<B, 3>) -> Tensor<B, 2> {
        let b = last.dims()[0];
        let cls = last.slice([0..b, 0..1]).reshape([b, self.hidden_size]);
        self.post_layernorm.forward(cls)
    }
}
