//! The Hiera image encoder with windowed position embeddings (Ryali et al. 2023; Bolya et al.
//! 2023, "Window Attention is Bugged") and SAM 2's FPN neck, as transformers'
//! `Sam2HieraDetModel` and `Sam2VisionNeck`. Feature maps are channels-last `[B, H, W, C]`
//! inside Hiera and channels-first `[B, C, H, W]` after the neck, as in transformers.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::{BlockShape, HieraConfig, NeckConfig};

/// Hiera's attention: one `qkv` projection, optional max-pooling of the queries (the stage's
/// downsampling), attention within the tokens it is given (a window, or the whole map).
#[derive(Module, Debug)]
pub struct MultiScaleAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    heads: usize,
    query_stride: usize,
}

/// Two linear layers with GELU between (Hiera's MLP).
#[derive(Module, Debug)]
pub struct HieraMlp<B: Backend> {
    pub proj_in: Linear<B>,
    pub proj_out: Linear<B>,
}

/// One Hiera block: pre-LN windowed attention (with query pooling and a projected skip at a
/// stage change) and a pre-LN MLP.
#[derive(Module, Debug)]
pub struct MultiScaleBlock<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub attn: MultiScaleAttention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub mlp: HieraMlp<B>,
    /// The skip connection's projection where the width changes.
    pub proj: Option<Linear<B>>,
    window: usize,
}

/// The patch embedding: a strided, padded convolution.
#[derive(Module, Debug)]
pub struct PatchEmbeddings<B: Backend> {
    pub projection: Conv2d<B>,
}

/// Hiera: patch embedding, position embedding, the blocks; the output of each stage's last
/// block is kept for the neck.
#[derive(Module, Debug)]
pub struct HieraDet<B: Backend> {
    pub patch_embed: PatchEmbeddings<B>,
    /// `[1, C, bh, bw]`, interpolated (bicubic) to the patch grid.
    pub pos_embed: Param<Tensor<B, 4>>,
    /// `[1, C, w0, w0]`, tiled over the grid (w0 = stage 0's window).
    pub pos_embed_window: Param<Tensor<B, 4>>,
    pub blocks: Vec<MultiScaleBlock<B>>,
    stage_ends: Vec<usize>,
}

/// The FPN neck: a 1×1 convolution per stage to the FPN width and, on the top-down levels, the
/// nearest-upsampled deeper level added.
#[derive(Module, Debug)]
pub struct VisionNeck<B: Backend> {
    /// `convs[k]` maps stage `n − 1 − k` (deepest first).
    pub convs: Vec<Conv2d<B>>,
    top_down_levels: Vec<usize>,
}

/// Hiera + neck, transformers' `Sam2VisionModel`.
#[derive(Module, Debug)]
pub struct VisionEncoder<B: Backend> {
    pub backbone: HieraDet<B>,
    pub neck: VisionNeck<B>,
}

fn linear<B: Backend>(i: usize, o: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(i, o).init(device)
}

impl HieraConfig {
    /// A randomly initialised encoder (weights normally come from a checkpoint).
    pub fn init<B: Backend>(&self, device: &B::Device) -> HieraDet<B> {
        let c = self.hidden_size;
        let [bh, bw] = self.window_positional_embedding_background_size;
        let w0 = self.window_size_per_stage[0];
        let blocks = self
            .blocks()
            .into_iter()
            .map(|b| self.init_block(b, device))
            .collect();
        let stage_ends = self
            .blocks_per_stage
            .iter()
            .scan(0, |n, &b| {
                *n += b;
                Some(*n - 1)
            })
            .collect();
        HieraDet {
            patch_embed: PatchEmbeddings {
                projection: Conv2dConfig::new([self.num_channels, c], self.patch_kernel_size)
                    .with_stride(self.patch_stride)
                    .with_padding(PaddingConfig2d::Explicit(
                        self.patch_padding[0],
                        self.patch_padding[1],
                        self.patch_padding[0],
                        self.patch_padding[1],
                    ))
                    .init(device),
            },
            pos_embed: Param::from_tensor(Tensor::zeros([1, c, bh, bw], device)),
            pos_embed_window: Param::from_tensor(Tensor::zeros([1, c, w0, w0], device)),
            blocks,
            stage_ends,
        }
    }

    fn init_block<B: Backend>(&self, b: BlockShape, device: &B::Device) -> MultiScaleBlock<B> {
        let ln = |d| {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let hidden = (b.dim_out as f64 * self.mlp_ratio) as usize;
        MultiScaleBlock {
            layer_norm1: ln(b.dim),
            attn: MultiScaleAttention {
                qkv: linear(b.dim, 3 * b.dim_out, device),
                proj: linear(b.dim_out, b.dim_out, device),
                heads: b.heads,
                query_stride: b.query_stride.map_or(1, |s| s[0]),
            },
            layer_norm2: ln(b.dim_out),
            mlp: HieraMlp {
                proj_in: linear(b.dim_out, hidden, device),
                proj_out: linear(hidden, b.dim_out, device),
            },
            proj: (b.dim != b.dim_out).then(|| linear(b.dim, b.dim_out, device)),
            window: b.window,
        }
    }
}

impl NeckConfig {
    /// A randomly initialised neck.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VisionNeck<B> {
        VisionNeck {
            convs: self
                .backbone_channel_list
                .iter()
                .map(|&c| Conv2dConfig::new([c, self.fpn_hidden_size], [1, 1]).init(device))
                .collect(),
            top_down_levels: self.fpn_top_down_levels.clone(),
        }
    }
}

/// Max-pools a channels-last map by `stride` (floor: trailing rows and columns that do not
/// fill a window are dropped), as `do_pool`; the windows are read in place, without moving the
/// channels first.
fn pool<B: Backend>(x: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    if stride == 1 {
        return x;
    }
    let [n, h, w, c] = x.dims();
    let (ho, wo) = (h / stride, w / stride);
    let x = if ho * stride != h || wo * stride != w {
        x.slice([0..n, 0..ho * stride, 0..wo * stride, 0..c])
    } else {
        x
    };
    x.reshape([n * ho, stride, wo, stride * c])
        .max_dim(1)
        .reshape([n * ho * wo, stride, c])
        .max_dim(1)
        .reshape([n, ho, wo, c])
}

/// Splits `[B, H, W, C]` into `[B·nh·nw, w, w, C]` windows, zero-padding H and W up to
/// multiples of `w`. Returns the padded size.
fn window_partition<B: Backend>(x: Tensor<B, 4>, w: usize) -> (Tensor<B, 4>, [usize; 2]) {
    let [b, h, wd, c] = x.dims();
    let (ph, pw) = (h.div_ceil(w) * w, wd.div_ceil(w) * w);
    let x = if ph != h || pw != wd {
        let device = x.device();
        let x = Tensor::cat(vec![x, Tensor::zeros([b, ph - h, wd, c], &device)], 1);
        Tensor::cat(vec![x, Tensor::zeros([b, ph, pw - wd, c], &device)], 2)
    } else {
        x
    };
    let (nh, nw) = (ph / w, pw / w);
    // Window (i, j) is rows i·w.., columns j·w..: moving j before the rows inside a window
    // makes each window one contiguous block.
    let windows = og_kernels::contiguous(x.reshape([b * nh, w, nw, w * c]).swap_dims(1, 2));
    (windows.reshape([b * nh * nw, w, w, c]), [ph, pw])
}

/// Inverse of [`window_partition`], cropping the padding away.
fn window_unpartition<B: Backend>(
    windows: Tensor<B, 4>,
    w: usize,
    [ph, pw]: [usize; 2],
    [h, wd]: [usize; 2],
) -> Tensor<B, 4> {
    let (nh, nw) = (ph / w, pw / w);
    let [n, _, _, c] = windows.dims();
    let b = n / (nh * nw);
    let x = og_kernels::contiguous(windows.reshape([b * nh, nw, w, w * c]).swap_dims(1, 2))
        .reshape([b, ph, pw, c]);
    if ph != h || pw != wd {
        x.slice([0..b, 0..h, 0..wd, 0..c])
    } else {
        x
    }
}

impl<B: Backend> MultiScaleAttention<B> {
    /// # Shapes
    /// `[N, h, w, dim]` → `[N, h/s, w/s, dim_out]` (s the query stride)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, h, w, dim] = x.dims();
        let qkv = og_kernels::linear_layer(&self.qkv, x.reshape([n * h * w, dim]));
        let dim_out = qkv.dims()[1] / 3;
        let s = self.query_stride;
        let (ho, wo) = (h / s, w / s);
        let q = qkv.clone().narrow(1, 0, dim_out);
        let k = qkv.clone().narrow(1, dim_out, dim_out);
        let v = qkv.narrow(1, 2 * dim_out, dim_out);
        let q = if s == 1 {
            q
        } else {
            pool(q.reshape([n, h, w, dim_out]), s).reshape([n * ho * wo, dim_out])
        };
        let out = og_kernels::multi_head_attention(q, k, v, n, self.heads);
        og_kernels::linear_layer(&self.proj, out).reshape([n, ho, wo, dim_out])
    }
}

impl<B: Backend> HieraMlp<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, w, c] = x.dims();
        let y = og_kernels::gelu(og_kernels::linear_layer(
            &self.proj_in,
            x.reshape([b * h * w, c]),
        ));
        og_kernels::linear_layer(&self.proj_out, y).reshape([b, h, w, c])
    }
}

impl<B: Backend> MultiScaleBlock<B> {
    /// # Shapes
    /// `[B, H, W, dim]` → `[B, H/s, W/s, dim_out]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let s = self.attn.query_stride;
        let normed = self.layer_norm1.forward(x.clone());
        let residual = match &self.proj {
            Some(p) => pool(p.forward(normed.clone()), s),
            None => x,
        };
        let y = if self.window > 0 {
            let (windows, padded) = window_partition(normed, self.window);
            let y = self.attn.forward(windows);
            let [ho, wo] = [residual.dims()[1], residual.dims()[2]];
            let win = self.window / s;
            // After pooling, the windows tile the pooled map padded to their new size.
            let padded = if s == 1 {
                padded
            } else {
                [ho.div_ceil(win) * win, wo.div_ceil(win) * win]
            };
            window_unpartition(y, win, padded, [ho, wo])
        } else {
            self.attn.forward(normed)
        };
        let x = residual + y;
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// PyTorch's bicubic kernel (A = −0.75) weights of the four taps around `t ∈ [0, 1)`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// The `[out, in]` matrix of `F.interpolate(mode="bicubic", align_corners=False)` along one
/// axis: source index `(o + ½)·in/out − ½` (not clamped), taps clamped to the border.
fn bicubic_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0.0f64; out * inp];
    let scale = inp as f64 / out as f64;
    for o in 0..out {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let i0 = src.floor();
        let t = src - i0;
        for (k, wgt) in cubic_weights(t).into_iter().enumerate() {
            let i = (i0 as i64 - 1 + k as i64).clamp(0, inp as i64 - 1) as usize;
            m[o * inp + i] += wgt;
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}

impl<B: Backend> HieraDet<B> {
    /// The position embedding of an `h`×`w` grid, channels-last `[1, h, w, C]`: the
    /// background embedding interpolated bicubically plus the window embedding tiled.
    ///
    /// Bicubic interpolation is linear along each axis (`My · P · Mxᵀ` per channel), and the
    /// tiled window is a one-hot selection of rows, so both are one product written straight
    /// in the channels-last layout: `[My | Ty] · [A ; Wₓ]`, with `A[i] = Mx · P[:, i, :]ᵀ` the
    /// rows interpolated along x, `Wₓ` the window tiled along x and `Ty` picking its row.
    pub fn position_embedding(&self, h: usize, w: usize) -> Tensor<B, 4> {
        let pos = self.pos_embed.val();
        let [_, c, bh, bw] = pos.dims();
        let win = self.pos_embed_window.val();
        let [_, _, wh, ww] = win.dims();
        let device = pos.device();
        let my = bicubic_matrix(h, bh);
        let mut left = vec![0.0f32; h * (bh + wh)];
        for y in 0..h {
            left[y * (bh + wh)..y * (bh + wh) + bh].copy_from_slice(&my[y * bh..(y + 1) * bh]);
            left[y * (bh + wh) + bh + y % wh] = 1.0;
        }
        let left = Tensor::<B, 2>::from_data(TensorData::new(left, [h, bh + wh]), &device);
        let mx =
            Tensor::<B, 2>::from_data(TensorData::new(bicubic_matrix(w, bw), [w, bw]), &device);
        // [bh, w, C]: each background row interpolated along x.
        let rows = mx
            .unsqueeze_dim::<3>(0)
            .repeat_dim(0, bh)
            .matmul(pos.reshape([c, bh, bw]).permute([1, 2, 0]));
        // [wh, w, C]: the window tiled along x.
        let window = win
            .reshape([c, wh, ww])
            .permute([1, 2, 0])
            .repeat_dim(1, w / ww);
        let right = Tensor::cat(vec![rows, window], 0).reshape([bh + wh, w * c]);
        left.matmul(right).reshape([1, h, w, c])
    }

    /// The output of every stage's last block, channels-last, finest first.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, H/4, W/4, C₀]`, `[B, H/8, W/8, C₁]`, …
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let x = self
            .patch_embed
            .projection
            .forward(pixels)
            .permute([0, 2, 3, 1]);
        let [_, h, w, _] = x.dims();
        let mut x = x + self.position_embedding(h, w);
        let mut stages = Vec::with_capacity(self.stage_ends.len());
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if self.stage_ends.contains(&i) {
                stages.push(x.clone());
            }
        }
        stages
    }
}

impl<B: Backend> VisionNeck<B> {
    /// The FPN levels of the stages, finest first, channels-first `[B, C_fpn, h, w]`.
    pub fn forward(&self, stages: Vec<Tensor<B, 4>>) -> Vec<Tensor<B, 4>> {
        let n = stages.len() - 1;
        let mut levels: Vec<Tensor<B, 4>> = Vec::with_capacity(stages.len());
        let mut prev: Option<Tensor<B, 4>> = None;
        for (i, stage) in stages.into_iter().enumerate().rev() {
            let lateral = conv1x1_channels_last(&self.convs[n - i], stage);
            let level = match prev.take() {
                Some(deeper) if self.top_down_levels.contains(&i) && i != n => {
                    lateral + upsample_nearest_2x(deeper)
                }
                _ => lateral,
            };
            prev = Some(level.clone());
            levels.push(level);
        }
        levels.reverse();
        levels
    }
}

/// A 1×1 convolution of a channels-last map, as the matrix product it is:
/// `[B, h, w, Cin]` → `[B, Cout, h, w]`.
fn conv1x1_channels_last<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, w, cin] = x.dims();
    let cout = conv.weight.dims()[0];
    let weight = conv.weight.val().reshape([cout, cin]).transpose();
    let bias = conv.bias.as_ref().map(|p| p.val());
    let y = burn::tensor::module::linear(x.reshape([b * h * w, cin]), weight, bias);
    y.reshape([b, h, w, cout]).permute([0, 3, 1, 2])
}

/// `F.interpolate(scale_factor=2, mode="nearest")` on `[B, C, h, w]`.
fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .repeat_dim(3, 2)
        .repeat_dim(5, 2)
        .reshape([b, c, 2 * h, 2 * w])
}

impl<B: Backend> VisionEncoder<B> {
    /// The neck's levels, finest first (transformers keeps the last `num_feature_levels` of
    /// them; the decoder reads three).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        self.neck.forward(self.backbone.forward(pixels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn_ndarray::NdArray<f32>;

    #[test]
    fn windows_round_trip_with_padding() {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, 5, 7, 3], burn::tensor::Distribution::Default, &device);
        let (w, padded) = window_partition(x.clone(), 3);
        assert_eq!(padded, [6, 9]);
        assert_eq!(w.dims(), [2 * 2 * 3, 3, 3, 3]);
        // Window (0, 1) of image 0 holds rows 0..3, columns 3..6.
        let win = w.clone().slice([1..2, 0..3, 0..3, 0..3]).reshape([27]);
        let direct = x.clone().slice([0..1, 0..3, 3..6, 0..3]).reshape([27]);
        win.into_data().assert_eq(&direct.into_data(), true);
        let back = window_unpartition(w, 3, padded, [5, 7]);
        back.into_data().assert_eq(&x.into_data(), true);
    }

    #[test]
    fn bicubic_rows_sum_to_one_and_identity_is_exact() {
        let m = bicubic_matrix(16, 7);
        for row in m.chunks(7) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let id = bicubic_matrix(5, 5);
        for (i, row) in id.chunks(5).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                assert_eq!(v, if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn nearest_upsampling_repeats_pixels() {
        let device = Default::default();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let y = upsample_nearest_2x(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
    }
}
