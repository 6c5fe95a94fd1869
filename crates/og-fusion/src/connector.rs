//! The OG-Fusion connector (Eq. 1, 4–6): select the rows of X' each mask keeps, concatenate,
//! project with LLaVA's `mlp2x_gelu`, add the configured positional encoding.
//!
//! Every ablation of the paper (Appendix 5.4) is configuration of this one module: Global View,
//! delimiter token (BoM/EoM), positional encodings after the MLP; sliding windows enter through
//! [`Selection::from_windows`](crate::Selection::from_windows).
//!
//! The MLP is applied row-wise, so `MLP(P X') = P MLP(X')`: we project the V patch rows (plus
//! the mean row and the delimiter) once per image and gather afterwards. A patch selected by
//! several masks is projected once, and padding never goes through the MLP.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Gelu, Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::FusionError;

type FResult<T> = std::result::Result<T, FusionError>;
use crate::selection::{GroupSource, Selection};

/// Global View (paper 5.4.1): the whole image prepended before the mask groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalView {
    #[default]
    None,
    /// All V rows in raster order.
    Full,
    /// One token: the mean of the V rows.
    Mean,
}

/// A learned token in encoder space marking mask boundaries (paper 5.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delimiter {
    #[default]
    None,
    /// Beginning of mask: before each group (the released code's `mm_bom_mask_token`).
    BeforeMask,
    /// End of mask: after each group.
    AfterMask,
}

/// Positional encoding added to OGVT after the MLP (paper 5.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PositionalEncoding {
    #[default]
    None,
    /// Sinusoidal by segment id; id 0 (no segment) adds nothing.
    Sinusoidal1d,
    /// A learned table of `max_segments + 1` rows by segment id; row 0 stays zero.
    Learned1d { max_segments: usize },
    /// Sinusoidal by grid row (first half of the channels) and column (second half); tokens
    /// without a grid cell (mean, delimiter) add nothing.
    Sinusoidal2d,
}

/// Configuration of [`OgFusion`].
#[derive(Config, Debug)]
pub struct OgFusionConfig {
    /// F: width of the vision features (1024 for CLIP ViT-L).
    pub vision_hidden_size: usize,
    /// D: width of the LLM embeddings.
    pub text_hidden_size: usize,
    #[config(default = "GlobalView::None")]
    pub global_view: GlobalView,
    #[config(default = "Delimiter::None")]
    pub delimiter: Delimiter,
    #[config(default = "PositionalEncoding::None")]
    pub positional: PositionalEncoding,
}

/// What each OGVT row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// Row `index` of X'.
    Patch(u32),
    /// Mean of X' (Global View `Mean`).
    GlobalMean,
    /// The learned delimiter.
    Delimiter,
}

/// The layout of one image's OGVT: per token, what it is, its segment and grid cell.
///
/// Segment ids: 0 = no segment (Global View rows and the plain full-grid path: each such token
/// stands alone), 1..=K = the K groups in concatenation order (a delimiter belongs to its
/// group). Segment-aware RoPE gives all tokens of one segment the position of its first token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenLayout {
    pub kinds: Vec<TokenKind>,
    pub segment_ids: Vec<u32>,
    /// (row, column) of patch tokens.
    pub grid_pos: Vec<Option<(u16, u16)>>,
}

impl TokenLayout {
    /// T, the number of visual tokens.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// The number of segments K.
    pub fn num_segments(&self) -> u32 {
        self.segment_ids.iter().copied().max().unwrap_or(0)
    }

    fn push(&mut self, kind: TokenKind, segment: u32, cols: usize) {
        let pos = match kind {
            TokenKind::Patch(i) => Some(((i as usize / cols) as u16, (i as usize % cols) as u16)),
            _ => None,
        };
        self.kinds.push(kind);
        self.segment_ids.push(segment);
        self.grid_pos.push(pos);
    }
}

impl OgFusionConfig {
    /// LLaVA-1.5 / OG-LLaVA with CLIP ViT-L (F=1024) and an LLM of width `d`.
    pub fn clip_l(d: usize) -> Self {
        Self::new(1024, d)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> OgFusion<B> {
        // PyTorch nn.Linear's default initialisation.
        let linear = |d_in, d_out| {
            LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::KaimingUniform {
                    gain: 1.0 / 3f64.sqrt(),
                    fan_out_only: false,
                })
                .init(device)
        };
        let delimiter = (self.delimiter != Delimiter::None).then(|| {
            Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([self.vision_hidden_size], device)
        });
        let segment_embedding = match self.positional {
            PositionalEncoding::Learned1d { max_segments } => Some(
                Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init([max_segments + 1, self.text_hidden_size], device),
            ),
            _ => None,
        };
        OgFusion {
            linear_1: linear(self.vision_hidden_size, self.text_hidden_size),
            act: Gelu::new(),
            linear_2: linear(self.text_hidden_size, self.text_hidden_size),
            delimiter,
            segment_embedding,
            config: self.clone(),
        }
    }

    /// The token layout of a selection under this configuration.
    pub fn layout(&self, selection: &Selection) -> TokenLayout {
        build_layout(selection, self.global_view, self.delimiter)
    }
}

fn build_layout(
    selection: &Selection,
    global_view: GlobalView,
    delimiter: Delimiter,
) -> TokenLayout {
    let cols = selection.grid.1;
    let v = selection.num_patches() as u32;
    let mut layout = TokenLayout::default();
    if selection.is_full_grid() {
        // The plain LLaVA path: V rows in order, nothing else.
        for i in 0..v {
            layout.push(TokenKind::Patch(i), 0, cols);
        }
        return layout;
    }
    match global_view {
        GlobalView::None => {}
        GlobalView::Full => (0..v).for_each(|i| layout.push(TokenKind::Patch(i), 0, cols)),
        GlobalView::Mean => layout.push(TokenKind::GlobalMean, 0, cols),
    }
    for (g, group) in selection.groups.iter().enumerate() {
        debug_assert!(group.source != GroupSource::FullGrid);
        let seg = g as u32 + 1;
        if delimiter == Delimiter::BeforeMask {
            layout.push(TokenKind::Delimiter, seg, cols);
        }
        for &i in &group.indices {
            layout.push(TokenKind::Patch(i), seg, cols);
        }
        if delimiter == Delimiter::AfterMask {
            layout.push(TokenKind::Delimiter, seg, cols);
        }
    }
    layout
}

/// The OG-Fusion connector. Parameter names mirror llava-hf's `multi_modal_projector`
/// (`linear_1`, `linear_2`; the original LLaVA's `mm_projector.0` / `.2`).
#[derive(Module, Debug)]
pub struct OgFusion<B: Backend> {
    pub linear_1: Linear<B>,
    pub act: Gelu,
    pub linear_2: Linear<B>,
    /// The delimiter token in encoder space [F] (trainable), when configured.
    pub delimiter: Option<Param<Tensor<B, 1>>>,
    /// Learned 1-D positional table [K+1, D]; row 0 is never used (zero is added instead).
    pub segment_embedding: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    config: OgFusionConfig,
}

/// A batch of OGVT, padded to the longest image.
#[derive(Debug, Clone)]
pub struct FusionOutput<B: Backend> {
    /// OGVT `[batch, T_max, D]`; padding rows are zero.
    pub tokens: Tensor<B, 3>,
    /// `[batch, T_max]`, true at padding positions (never to be attended or scored).
    pub padding_mask: Tensor<B, 2, Bool>,
    /// T of each image.
    pub lengths: Vec<usize>,
    /// Per image: what each token is, its segment id and grid cell.
    pub layouts: Vec<TokenLayout>,
}

impl<B: Backend> OgFusion<B> {
    /// The configuration this connector was built from.
    pub fn config(&self) -> &OgFusionConfig {
        &self.config
    }

    /// F, the vision feature width.
    pub fn vision_hidden_size(&self) -> usize {
        self.config.vision_hidden_size
    }

    /// D, the LLM embedding width.
    pub fn text_hidden_size(&self) -> usize {
        self.config.text_hidden_size
    }

    /// The token layout of a selection for this connector.
    pub fn layout(&self, selection: &Selection) -> TokenLayout {
        build_layout(selection, self.config.global_view, self.config.delimiter)
    }

    /// The 2-layer GELU MLP of LLaVA-1.5 (`mlp2x_gelu`), Eq. (6), row-wise.
    ///
    /// # Shapes
    /// `[..., F]` → `[..., D]`
    pub fn project<const N: usize>(&self, x: Tensor<B, N>) -> Tensor<B, N> {
        let dims = x.dims();
        let features = dims[N - 1];
        let x = x.reshape([-1, features as i32]);
        let h = self
            .act
            .forward(og_kernels::linear_layer(&self.linear_1, x));
        let y = og_kernels::linear_layer(&self.linear_2, h);
        let mut out = dims;
        out[N - 1] = y.dims()[1];
        y.reshape(out)
    }

    /// OGVT of a batch of images.
    ///
    /// # Shapes
    /// - `features`: X' `[batch, V, F]` (frozen encoder output, layer −2, CLS dropped)
    /// - output tokens `[batch, T_max, D]`, padding mask `[batch, T_max]`
    pub fn forward(
        &self,
        features: Tensor<B, 3>,
        selections: &[Selection],
    ) -> FResult<FusionOutput<B>> {
        let [batch, v, f] = features.dims();
        let device = features.device();
        if selections.len() != batch {
            return Err(FusionError::Batch(format!(
                "{} selections for a batch of {batch} feature maps",
                selections.len()
            )));
        }
        if f != self.config.vision_hidden_size {
            return Err(FusionError::Batch(format!(
                "features have width {f}, the connector expects {}",
                self.config.vision_hidden_size
            )));
        }
        for (b, s) in selections.iter().enumerate() {
            if s.num_patches() != v {
                return Err(FusionError::Batch(format!(
                    "image {b}: selection over {} patches, features have {v}",
                    s.num_patches()
                )));
            }
        }
        let layouts: Vec<TokenLayout> = selections.iter().map(|s| self.layout(s)).collect();
        let lengths: Vec<usize> = layouts.iter().map(TokenLayout::len).collect();
        let t_max = lengths.iter().copied().max().unwrap_or(0);

        // Extended rows per image: V patches, the mean, the delimiter.
        let stride = v + 2;
        let mean = features.clone().mean_dim(1);
        let delim = match &self.delimiter {
            Some(d) => d.val().reshape([1, 1, f]).expand([batch, 1, f]),
            None => Tensor::zeros([batch, 1, f], &device),
        };
        let ext = Tensor::cat(vec![features, mean, delim], 1).reshape([batch * stride, f]);
        let projected = self.project(ext);
        let d = self.config.text_hidden_size;
        let zero_row = batch * stride;
        let table = Tensor::cat(vec![projected, Tensor::zeros([1, d], &device)], 0);

        let mut index = Vec::with_capacity(batch * t_max);
        let mut padding = Vec::with_capacity(batch * t_max);
        for (b, layout) in layouts.iter().enumerate() {
            for kind in &layout.kinds {
                index.push(
                    (b * stride
                        + match *kind {
                            TokenKind::Patch(i) => i as usize,
                            TokenKind::GlobalMean => v,
                            TokenKind::Delimiter => v + 1,
                        }) as i64,
                );
                padding.push(false);
            }
            for _ in layout.len()..t_max {
                index.push(zero_row as i64);
                padding.push(true);
            }
        }
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(index, [batch * t_max]), &device);
        let mut tokens = table.select(0, index).reshape([batch, t_max, d]);
        if let Some(pe) = self.positional_encoding(&layouts, t_max, &device)? {
            tokens = tokens + pe;
        }
        let padding_mask =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [batch, t_max]), &device);
        Ok(FusionOutput {
            tokens,
            padding_mask,
            lengths,
            layouts,
        })
    }

    /// The positional term of Eq. (6) variants, zero at padding; `None` when not configured.
    fn positional_encoding(
        &self,
        layouts: &[TokenLayout],
        t_max: usize,
        device: &B::Device,
    ) -> FResult<Option<Tensor<B, 3>>> {
        let d = self.config.text_hidden_size;
        let batch = layouts.len();
        match self.config.positional {
            PositionalEncoding::Sinusoidal1d | PositionalEncoding::Sinusoidal2d => {
                let by_segment = self.config.positional == PositionalEncoding::Sinusoidal1d;
                let mut data = vec![0f32; batch * t_max * d];
                for (b, layout) in layouts.iter().enumerate() {
                    for t in 0..layout.len() {
                        let row = &mut data[(b * t_max + t) * d..(b * t_max + t + 1) * d];
                        if by_segment {
                            let seg = layout.segment_ids[t];
                            if seg > 0 {
                                sinusoid(seg as f64, row);
                            }
                        } else if let Some((r, c)) = layout.grid_pos[t] {
                            let (a, bb) = row.split_at_mut(d / 2);
                            sinusoid(r as f64, a);
                            sinusoid(c as f64, bb);
                        }
                    }
                }
                Ok(Some(Tensor::from_data(
                    TensorData::new(data, [batch, t_max, d]),
                    device,
                )))
            }
            PositionalEncoding::Learned1d { .. } => {
                let table = self
                    .segment_embedding
                    .as_ref()
                    .expect("learned positional table exists when configured")
                    .val();
                let rows = table.dims()[0];
                let mut ids = Vec::with_capacity(batch * t_max);
                for layout in layouts {
                    for &s in &layout.segment_ids {
                        if s as usize >= rows {
                            return Err(FusionError::Config(format!(
                                "segment {s} exceeds the learned positional table ({} segments)",
                                rows - 1
                            )));
                        }
                        ids.push(s as i64);
                    }
                    ids.extend(std::iter::repeat_n(0i64, t_max - layout.len()));
                }
                // Row 0 is replaced by zeros so it neither contributes nor trains.
                let table =
                    Tensor::cat(vec![Tensor::zeros([1, d], device), table.slice(1..rows)], 0);
                let ids =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [batch * t_max]), device);
                Ok(Some(table.select(0, ids).reshape([batch, t_max, d])))
            }
            PositionalEncoding::None => Ok(None),
        }
    }
}

/// Transformer sinusoid of a position into `out` (even channels sin, odd channels cos,
/// frequencies `10000^(−2i/n)`, n = `out.len()`).
pub fn sinusoid(pos: f64, out: &mut [f32]) {
    let n = out.len();
    for i in (0..n).step_by(2) {
        let freq = (-(i as f64) * (10000f64.ln() / n as f64)).exp();
        out[i] = (pos * freq).sin() as f32;
        if i + 1 < n {
            out[i + 1] = (pos * freq).cos() as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::{Group, Windows};
    use burn::backend::{Autodiff, NdArray};

    type B = NdArray<f32>;
    type AB = Autodiff<NdArray<f32>>;

    fn selection(groups: Vec<Vec<u32>>) -> Selection {
        Selection {
            grid: (2, 3),
            groups: groups
                .into_iter()
                .enumerate()
                .map(|(k, indices)| Group {
                    source: GroupSource::Mask(k),
                    indices,
                })
                .collect(),
            per_mask: Vec::new(),
        }
    }

    fn features<BB: Backend>(batch: usize, device: &BB::Device) -> Tensor<BB, 3> {
        let data: Vec<f32> = (0..batch * 6 * 4)
            .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.4)
            .collect();
        Tensor::from_data(TensorData::new(data, [batch, 6, 4]), device)
    }

    fn rows(t: &Tensor<B, 3>, b: usize) -> Vec<Vec<f32>> {
        let [_, n, d] = t.dims();
        let v: Vec<f32> = t.clone().slice(b..b + 1).into_data().to_vec().unwrap();
        (0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn ogvt_is_projection_of_selected_rows() {
        let device = Default::default();
        let cfg = OgFusionConfig::new(4, 5);
        let m = cfg.init::<B>(&device);
        let x = features::<B>(2, &device);
        let sels = vec![
            selection(vec![vec![0, 2], vec![2, 3, 5]]),
            Selection::full_grid((2, 3)),
        ];
        let out = m.forward(x.clone(), &sels).unwrap();
        assert_eq!(out.tokens.dims(), [2, 6, 5]);
        assert_eq!(out.lengths, vec![5, 6]);
        assert_eq!(out.layouts[0].segment_ids, vec![1, 1, 2, 2, 2]);
        assert_eq!(out.layouts[1].segment_ids, vec![0; 6]);
        let mask: Vec<bool> = out.padding_mask.clone().into_data().to_vec().unwrap();
        assert_eq!(mask, [vec![false; 5], vec![true], vec![false; 6]].concat());
        // Direct computation: project the selected rows.
        let direct = m.project(x.clone());
        let d0 = rows(&direct, 0);
        let got = rows(&out.tokens, 0);
        for (t, &i) in [0usize, 2, 2, 3, 5].iter().enumerate() {
            assert!(close(&got[t], &d0[i]), "token {t}");
        }
        assert!(got[5].iter().all(|&v| v == 0.0), "padding row is zero");
        let d1 = rows(&direct, 1);
        assert!(close(&rows(&out.tokens, 1)[4], &d1[4]));
    }

    #[test]
    fn global_view_and_delimiters() {
        let device = Default::default();
        let sel = selection(vec![vec![1], vec![4, 5]]);
        let cfg = OgFusionConfig::new(4, 5)
            .with_global_view(GlobalView::Mean)
            .with_delimiter(Delimiter::BeforeMask);
        let l = cfg.layout(&sel);
        assert_eq!(
            l.kinds,
            vec![
                TokenKind::GlobalMean,
                TokenKind::Delimiter,
                TokenKind::Patch(1),
                TokenKind::Delimiter,
                TokenKind::Patch(4),
                TokenKind::Patch(5)
            ]
        );
        assert_eq!(l.segment_ids, vec![0, 1, 1, 2, 2, 2]);
        assert_eq!(l.grid_pos[5], Some((1, 2)));
        let l = OgFusionConfig::new(4, 5)
            .with_global_view(GlobalView::Full)
            .with_delimiter(Delimiter::AfterMask)
            .layout(&sel);
        assert_eq!(l.len(), 6 + 1 + 1 + 2 + 1);
        assert_eq!(l.kinds[7], TokenKind::Delimiter);
        assert_eq!(l.segment_ids[..6], [0; 6]);
        // The mask-free path stays plain whatever the configuration.
        assert_eq!(cfg.layout(&Selection::full_grid((2, 3))).len(), 6);

        let m = cfg.init::<B>(&device);
        let x = features::<B>(1, &device);
        let out = m.forward(x.clone(), &[sel]).unwrap();
        let got = rows(&out.tokens, 0);
        let mean = m.project(x.mean_dim(1));
        assert!(close(&got[0], &rows(&mean, 0)[0]));
        let delim = m.project(m.delimiter.as_ref().unwrap().val().reshape([1, 1, 4]));
        assert!(close(&got[1], &rows(&delim, 0)[0]) && close(&got[3], &got[1]));
    }

    #[test]
    fn positional_encodings() {
        let device = Default::default();
        let sel = Selection::from_windows((2, 3), Windows::Raster { k: 2 }).unwrap();
        let base = OgFusionConfig::new(4, 6);
        let plain = base.init::<B>(&device);
        let x = features::<B>(1, &device);
        let t0 = rows(
            &plain
                .forward(x.clone(), std::slice::from_ref(&sel))
                .unwrap()
                .tokens,
            0,
        );
        for pe in [
            PositionalEncoding::Sinusoidal1d,
            PositionalEncoding::Sinusoidal2d,
        ] {
            let m = OgFusion {
                config: base.clone().with_positional(pe),
                ..plain.clone()
            };
            let t = rows(
                &m.forward(x.clone(), std::slice::from_ref(&sel))
                    .unwrap()
                    .tokens,
                0,
            );
            for (i, (a, b)) in t.iter().zip(&t0).enumerate() {
                let diff: Vec<f32> = a.iter().zip(b).map(|(p, q)| p - q).collect();
                let mut expect = vec![0f32; 6];
                match pe {
                    PositionalEncoding::Sinusoidal1d => {
                        sinusoid(if i < 3 { 1.0 } else { 2.0 }, &mut expect)
                    }
                    _ => {
                        sinusoid((i / 3) as f64, &mut expect[..3]);
                        sinusoid((i % 3) as f64, &mut expect[3..]);
                    }
                }
                assert!(
                    close(&diff, &expect),
                    "{pe:?} token {i}: {diff:?} vs {expect:?}"
                );
            }
        }
        // Learned: overflow of the table is an error, not a panic.
        let m = base
            .clone()
            .with_positional(PositionalEncoding::Learned1d { max_segments: 1 })
            .init::<B>(&device);
        assert!(matches!(m.forward(x, &[sel]), Err(FusionError::Config(_))));
    }

    #[test]
    fn only_connector_parameters_get_gradients() {
        let device = Default::default();
        let cfg = OgFusionConfig::new(4, 5)
            .with_delimiter(Delimiter::BeforeMask)
            .with_positional(PositionalEncoding::Learned1d { max_segments: 4 });
        let m = cfg.init::<AB>(&device);
        // The frozen encoder's output: a tensor that does not require grad.
        let x = features::<AB>(2, &device);
        let sels = vec![
            selection(vec![vec![0, 1], vec![5]]),
            selection(vec![vec![3]]),
        ];
        let out = m.forward(x.clone(), &sels).unwrap();
        let grads = out.tokens.sum().backward();
        assert!(x.grad(&grads).is_none(), "frozen features get no gradient");
        for (name, g) in [
            (
                "linear_1",
                m.linear_1
                    .weight
                    .grad(&grads)
                    .map(|g| g.abs().sum().into_scalar()),
            ),
            (
                "linear_2",
                m.linear_2
                    .weight
                    .grad(&grads)
                    .map(|g| g.abs().sum().into_scalar()),
            ),
            (
                "delimiter",
                m.delimiter
                    .as_ref()
                    .unwrap()
                    .grad(&grads)
                    .map(|g| g.abs().sum().into_scalar()),
            ),
        ] {
            assert!(g.is_some_and(|v| v > 0.0), "{name} trains");
        }
        let pe = m.segment_embedding.as_ref().unwrap().grad(&grads).unwrap();
        let pe: Vec<f32> = pe.into_data().to_vec().unwrap();
        assert!(pe[..5].iter().all(|&v| v == 0.0), "row 0 never trains");
        assert!(
            pe[5..15].iter().all(|&v| v != 0.0),
            "rows of used segments train"
        );
        assert!(
            pe[15..].iter().all(|&v| v == 0.0),
            "unused segments get nothing"
        );
    }

    #[test]
    fn shape_errors() {
        let device = Default::default();
        let m = OgFusionConfig::new(4, 5).init::<B>(&device);
        let x = features::<B>(1, &device);
        assert!(m.forward(x.clone(), &[]).is_err());
        assert!(m.forward(x, &[Selection::full_grid((3, 3))]).is_err());
    }
}
