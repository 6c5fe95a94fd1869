//! Causal grouped-query attention, as a Llama decoder layer computes it, read straight from the
//! heads' strided views and the KV cache.
//!
//! burn's formulation repeats each key/value head for the query heads that share it (a copy of
//! the whole cache per layer and step), masks a `[batch, heads, tokens, keys]` score tensor and
//! copies the result back into token-major order. Here each (sequence, query head, query
//! block) is one task: two gemm calls with the operands' own strides — the query head reads its
//! key/value head in place —, the mask applied on the fly from its description (causal offset,
//! padded keys), and a vectorised softmax whose normalisation is applied to the `head_dim`
//! output columns.

use std::cell::OnceCell;

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::attention::{Strided, head_attention};
use crate::flex::{SharedMut, convert_all, from_flex, to_flex_view, written};

/// The score masked keys get before the softmax: large and finite, so a query whose keys are
/// all masked (a padding query) averages them instead of producing NaN.
pub(crate) const MASKED: f32 = -1.0e30;

/// Most query rows per task.
const QUERY_BLOCK: usize = 128;

/// Which keys each query sees: query `i` of a sequence (its token `past + i`) attends to key
/// `j` when `j ≤ past + i` and key `j` is not padding. Built once per forward pass and shared
/// by the layers.
#[derive(Debug, Clone)]
pub struct CausalKeys<B: Backend> {
    pub(crate) past: usize,
    tokens: usize,
    /// `[batch, past + tokens]`, true at padding keys.
    padding: Tensor<B, 2, Bool>,
    /// `[batch, 1, tokens, past + tokens]`, true = masked: what burn's ops read, built the
    /// first time a layer needs it (never where the kernel runs).
    mask: OnceCell<Tensor<B, 4, Bool>>,
    /// `padding` on the host, read the first time the kernel needs it.
    host: OnceCell<Vec<bool>>,
}

impl<B: Backend> CausalKeys<B> {
    /// `tokens` queries after `past` cached tokens; `padding` `[batch, past + tokens]`.
    pub fn new(past: usize, tokens: usize, padding: Tensor<B, 2, Bool>) -> Self {
        Self {
            past,
            tokens,
            padding,
            mask: OnceCell::new(),
            host: OnceCell::new(),
        }
    }

    /// The mask as a tensor, `[batch, 1, tokens, past + tokens]`, true = masked.
    pub fn mask(&self) -> Tensor<B, 4, Bool> {
        self.mask
            .get_or_init(|| {
                let (past, t) = (self.past, self.tokens);
                let [b, s] = self.padding.dims();
                let causal: Vec<bool> = (0..t)
                    .flat_map(|i| (0..s).map(move |j| j > past + i))
                    .collect();
                let device = self.padding.device();
                let causal =
                    Tensor::<B, 2, Bool>::from_data(TensorData::new(causal, [t, s]), &device)
                        .reshape([1, 1, t, s])
                        .expand([b, 1, t, s]);
                let keys = self
                    .padding
                    .clone()
                    .reshape([b, 1, 1, s])
                    .expand([b, 1, t, s]);
                causal.bool_or(keys)
            })
            .clone()
    }

    /// `[batch, past + tokens]` on the host, true at padding keys.
    pub(crate) fn host_padding(&self) -> &[bool] {
        self.host.get_or_init(|| {
            self.padding
                .clone()
                .into_data()
                .to_vec::<bool>()
                .expect("a bool tensor")
        })
    }
}

/// `softmax(q kᵀ / √d, masked) v` for grouped-query heads: query head `h` reads key/value head
/// `h / (heads / kv_heads)` (Vaswani et al. Eq. 1; Ainslie et al.'s GQA). On Flex the fused
/// kernel below; under autodiff on the CPU backends one recorded operation
/// ([`crate::tracked`]); elsewhere burn's ops.
///
/// # Shapes
/// - `q`: `[batch, heads, tokens, head_dim]`; `k`, `v`: `[batch, kv_heads, keys, head_dim]`
///   with `keys = past + tokens`; any non-negative strides (views of the projections, the
///   cache).
/// - output: `[batch · tokens, heads · head_dim]`, token-major, ready for the output
///   projection.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keys: &CausalKeys<B>,
) -> Tensor<B, 2> {
    let [b, nh, t, hd] = q.dims();
    let [bk, nkv, s, hdk] = k.dims();
    let fits = t > 0
        && bk == b
        && hdk == hd
        && v.dims() == k.dims()
        && nkv > 0
        && nh % nkv == 0
        && t == keys.tokens
        && s == keys.past + t
        && keys.padding.dims() == [b, s];
    if !fits {
        return unfused(q, k, v, keys.mask());
    }
    let (q, k, v) = match crate::tracked::causal_attention(q, k, v, keys) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    match convert_all([q, k, v], to_flex_view) {
        Ok([q, k, v]) => match (Heads::of(&q), Heads::of(&k), Heads::of(&v)) {
            (Some(hq), Some(hk), Some(hv)) => {
                let visible = Visible {
                    past: keys.past,
                    padding: keys.host_padding(),
                };
                from_flex(fused(hq, hk, hv, visible, [b, nh, nkv, t, s, hd]))
            }
            _ => {
                let [q, k, v] = [q, k, v].map(from_flex);
                unfused(q, k, v, keys.mask())
            }
        },
        Err([q, k, v]) => unfused(q, k, v, keys.mask()),
    }
}

/// [`CausalKeys`] on the host.
#[derive(Clone, Copy)]
struct Visible<'a> {
    past: usize,
    padding: &'a [bool],
}

/// burn's ops: key/value heads repeated, scores masked, softmax in f32 (as transformers does
/// whatever the model's dtype).
pub(crate) fn unfused<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Tensor<B, 2> {
    let [b, nh, t, hd] = q.dims();
    let [_, nkv, s, _] = k.dims();
    let rep = nh / nkv.max(1);
    let repeat = |y: Tensor<B, 4>| {
        if rep == 1 {
            y
        } else {
            y.unsqueeze_dim::<5>(2)
                .expand([b, nkv, rep, s, hd])
                .reshape([b, nh, s, hd])
        }
    };
    let (k, v) = (repeat(k), repeat(v));
    let scores = q.matmul(k.swap_dims(2, 3)) * (hd as f64).powf(-0.5);
    let scores = scores.mask_fill(mask, MASKED as f64);
    let dtype = scores.dtype();
    let probs = softmax(scores.cast(DType::F32), 3).cast(dtype);
    let out = probs.matmul(v);
    out.swap_dims(1, 2).reshape([b * t, nh * hd])
}

/// A 4-D f32 view: element `(i, j, r, c)` at `data[offset + i·s0 + j·s1 + r·s2 + c·s3]`.
#[derive(Clone, Copy)]
struct Heads<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [isize; 4],
}

impl<'a> Heads<'a> {
    fn of(t: &'a FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let strides: [isize; 4] = layout.strides().try_into().ok()?;
        if t.dtype() != DType::F32 || strides.iter().any(|&s| s < 0) {
            return None;
        }
        Some(Self {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            strides,
        })
    }

    /// Offset of the matrix `(i, j)` (rows × head_dim), from the start of `data`.
    fn at(&self, i: usize, j: usize) -> usize {
        self.offset + i * self.strides[0] as usize + j * self.strides[1] as usize
    }
}

fn fused(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    keys: Visible<'_>,
    [b, nh, nkv, t, s, hd]: [usize; 6],
) -> FlexTensor {
    let width = nh * hd;
    // SAFETY: the tasks below write every (token, head) slice of every row.
    unsafe {
        written([b * t, width].into(), |dst| {
            fused_into(dst, q, k, v, keys, [b, nh, nkv, t, s, hd])
        })
    }
}

fn fused_into(
    dst: SharedMut,
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    keys: Visible<'_>,
    [b, nh, nkv, t, s, hd]: [usize; 6],
) {
    let width = nh * hd;
    let scale = (hd as f32).powf(-0.5);
    let rep = nh / nkv;
    let blocks = t.div_ceil(QUERY_BLOCK);
    let block = t.div_ceil(blocks);
    (0..b * nh * blocks).into_par_iter().for_each_init(
        || (vec![0.0f32; block * s], vec![0.0f32; block]),
        |(scores, inv_sums), task| {
            let (i, h, blk) = (task / (nh * blocks), task / blocks % nh, task % blocks);
            let row0 = blk * block;
            let rows = block.min(t - row0);
            let qo = q.at(i, h) + row0 * q.strides[2] as usize;
            let (ko, vo) = (k.at(i, h / rep), v.at(i, h / rep));
            let out_offset = (i * t + row0) * width + h * hd;
            let matrix = |x: Heads<'_>, offset: usize| Strided {
                // SAFETY: the offset lies inside the view's storage (burn's layout).
                ptr: unsafe { x.data.as_ptr().add(offset) },
                rs: x.strides[2],
                cs: x.strides[3],
            };
            let padding = &keys.padding[i * s..(i + 1) * s];
            let mask = |scores: &mut [f32]| {
                for (r, row) in scores.chunks_mut(s).enumerate() {
                    let visible = keys.past + row0 + r + 1;
                    row[visible.min(s)..].fill(MASKED);
                    for (x, _) in row.iter_mut().zip(padding).filter(|(_, p)| **p) {
                        *x = MASKED;
                    }
                }
            };
            // SAFETY: each view's matrix (i, j) spans its rows and hd columns at its strides
            // inside its storage; the output rows row0.. of (sequence i, head h) are written
            // by this task only.
            unsafe {
                head_attention(
                    [rows, s, hd],
                    [matrix(q, qo), matrix(k, ko), matrix(v, vo)],
                    scale,
                    (scores, inv_sums),
                    (dst.add(out_offset), width),
                    mask,
                );
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Tensor, TensorData};

    use super::{CausalKeys, causal_attention};

    /// `[b, n, len, hd]` heads as the model makes them: a token-major projection viewed with
    /// its heads swapped forward (strided).
    fn heads<B: Backend>(data: &[f32], b: usize, n: usize, len: usize, hd: usize) -> Tensor<B, 4> {
        Tensor::<B, 1>::from_data(
            TensorData::new(data.to_vec(), [data.len()]),
            &Default::default(),
        )
        .reshape([b, len, n, hd])
        .swap_dims(1, 2)
    }

    fn keys<B: Backend>(padding: &[bool], b: usize, past: usize, t: usize) -> CausalKeys<B> {
        let padding = TensorData::new(padding.to_vec(), [b, past + t]);
        CausalKeys::new(past, t, Tensor::from_data(padding, &Default::default()))
    }

    #[test]
    fn fused_equals_burns_ops_with_gqa_padding_and_a_cache() {
        let (b, nh, nkv, hd) = (3, 6, 2, 8);
        for (past, t) in [(0, 5), (7, 1), (4, 3), (0, 300)] {
            let s = past + t;
            let padding: Vec<bool> = (0..b * s)
                .map(|x| x % 7 == 3 || x % s == 0 && x > 0)
                .collect();
            let random = |n: usize, len: usize| {
                Tensor::<NdArray, 1>::random(
                    [b * len * n * hd],
                    Distribution::Normal(0.0, 1.5),
                    &Default::default(),
                )
                .into_data()
                .to_vec::<f32>()
                .unwrap()
            };
            let (qd, kd, vd) = (random(nh, t), random(nkv, s), random(nkv, s));
            let ours = causal_attention(
                heads::<Flex>(&qd, b, nh, t, hd),
                heads::<Flex>(&kd, b, nkv, s, hd),
                heads::<Flex>(&vd, b, nkv, s, hd),
                &keys(&padding, b, past, t),
            );
            let want = causal_attention(
                heads::<NdArray>(&qd, b, nh, t, hd),
                heads::<NdArray>(&kd, b, nkv, s, hd),
                heads::<NdArray>(&vd, b, nkv, s, hd),
                &keys(&padding, b, past, t),
            );
            assert_eq!(ours.dims(), [b * t, nh * hd]);
            let (a, w) = (
                ours.into_data().to_vec::<f32>().unwrap(),
                want.into_data().to_vec::<f32>().unwrap(),
            );
            let worst = a
                .iter()
                .zip(&w)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "past {past}, t {t}: {worst}");
        }
    }
}
