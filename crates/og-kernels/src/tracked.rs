//! Causal grouped-query attention as one autodiff operation on burn's CPU backends.
//!
//! Under `Autodiff<B>` burn records the attention of [`crate::causal_attention`]'s fallback as
//! about a dozen operations (key/value repeat, score product, scale, mask, the five steps of
//! softmax, value product, head merge), each keeping its operands and each running its own
//! backward pass over `[batch, heads, tokens, keys]` tensors. Here the forward runs the same
//! inner-backend operations and keeps only the softmax probabilities `P` and the operands; the
//! backward is the attention's own (Vaswani et al. Eq. 1 differentiated):
//!
//! - `dV = Pᵀ dO`, `dP = dO V`ᵀ,
//! - `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d` (masked keys have `P = 0`, so no gradient),
//! - `dQ = dS K`, `dK = dSᵀ Q`,
//!
//! with the gradients of the query heads that share a key/value head (GQA) summed into it.
//!
//! It serves `Autodiff<NdArray<f32>>` and `Autodiff<Flex>` (the CPU training backends) with f32
//! tensors; every other backend or dtype gets the tensors back for burn's recorded ops.

use std::any::TypeId;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::activation::softmax;
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::flex::cast;

/// The score masked keys get before the softmax (as the fallback: large and finite).
const MASKED: f32 = -1.0e30;

/// An autodiff tensor of the inner backend `I`.
type Tracked<I> = <Autodiff<I> as BackendTypes>::FloatTensorPrimitive;

/// `softmax(q kᵀ / √d, masked) v` as one recorded operation when `B` is an autodiff CPU
/// backend and the tensors are f32; otherwise the inputs, unchanged.
///
/// # Shapes
/// As [`crate::causal_attention`]: `q` `[b, heads, t, d]`, `k`, `v` `[b, kv_heads, s, d]`,
/// `mask` `[b, 1, t, s]` (true = masked); output `[b · t, heads · d]`.
#[allow(clippy::type_complexity)]
pub(crate) fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Result<Tensor<B, 2>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4, Bool>)> {
    if [&q, &k, &v].iter().any(|x| x.dtype() != DType::F32) {
        return Err((q, k, v, mask));
    }
    if is_autodiff_of::<B, NdArray<f32>>() {
        return Ok(run::<B, NdArray<f32>>(q, k, v, mask));
    }
    if is_autodiff_of::<B, Flex>() {
        return Ok(run::<B, Flex>(q, k, v, mask));
    }
    Err((q, k, v, mask))
}

/// Whether `B`'s tensors are `Autodiff<I>`'s (any checkpointing strategy: the op saves its own
/// state and needs none).
fn is_autodiff_of<B: Backend, I: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<Tracked<I>>()
        && TypeId::of::<B::BoolTensorPrimitive>() == TypeId::of::<I::BoolTensorPrimitive>()
}

/// [`attention`] on `B`'s tensors, which the caller checked are `Autodiff<I>`'s.
fn run<B: Backend, I: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Tensor<B, 2> {
    let float = |x: Tensor<B, 4>| -> Tracked<I> { cast(x.into_primitive().tensor()) };
    let mask: I::BoolTensorPrimitive = cast(mask.into_primitive());
    let out = attention::<I>(float(q), float(k), float(v), mask);
    Tensor::from_primitive(TensorPrimitive::Float(cast(out)))
}

fn inner<I: Backend, const D: usize>(p: I::FloatTensorPrimitive) -> Tensor<I, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn primitive<I: Backend, const D: usize>(t: Tensor<I, D>) -> I::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// What the backward pass needs: the operands (keys and values already repeated per query
/// head) and the probabilities.
#[derive(Debug, Clone)]
struct Saved<I: Backend> {
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    probs: Tensor<I, 4>,
    kv_heads: usize,
}

#[derive(Debug)]
struct Attention;

impl<I: Backend> Backward<I, 3> for Attention {
    type State = Saved<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Saved {
            q,
            k,
            v,
            probs,
            kv_heads,
        } = ops.state;
        let [b, nh, t, hd] = q.dims();
        let s = k.dims()[2];
        let d_out: Tensor<I, 2> = inner(grads.consume::<I>(&ops.node));
        let d_out = d_out.reshape([b, t, nh, hd]).swap_dims(1, 2);
        let [pq, pk, pv] = ops.parents;
        let per_kv_head = |g: Tensor<I, 4>| {
            let rep = nh / kv_heads;
            if rep == 1 {
                g
            } else {
                g.reshape([b, kv_heads, rep, s, hd])
                    .sum_dim(2)
                    .reshape([b, kv_heads, s, hd])
            }
        };
        if let Some(node) = pv {
            let dv = probs.clone().swap_dims(2, 3).matmul(d_out.clone());
            grads.register::<I>(node.id, primitive(per_kv_head(dv)));
        }
        if pq.is_none() && pk.is_none() {
            return;
        }
        let dp = d_out.matmul(v.swap_dims(2, 3));
        let row = (dp.clone() * probs.clone()).sum_dim(3);
        let ds = probs * (dp - row) * (hd as f64).powf(-0.5);
        if let Some(node) = pq {
            grads.register::<I>(node.id, primitive(ds.clone().matmul(k)));
        }
        if let Some(node) = pk {
            let dk = ds.swap_dims(2, 3).matmul(q);
            grads.register::<I>(node.id, primitive(per_kv_head(dk)));
        }
    }
}

/// The recorded operation: forward on the inner backend, state kept only when a gradient is
/// needed.
fn attention<I: Backend>(
    q: Tracked<I>,
    k: Tracked<I>,
    v: Tracked<I>,
    mask: I::BoolTensorPrimitive,
) -> Tracked<I> {
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let (q, k, v) = (
        inner::<I, 4>(q.primitive),
        inner::<I, 4>(k.primitive),
        inner::<I, 4>(v.primitive),
    );
    let mask = Tensor::<I, 4, Bool>::from_primitive(mask);
    let (out, saved) = forward(q, k, v, mask);
    match Attention
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(saved, primitive(out)),
        OpsKind::UnTracked(prep) => prep.finish(primitive(out)),
    }
}

/// The fallback's operations in its order (so outputs match it bit for bit on NdArray), with
/// the repeated keys/values and the probabilities kept.
fn forward<I: Backend>(
    q: Tensor<I, 4>,
    k: Tensor<I, 4>,
    v: Tensor<I, 4>,
    mask: Tensor<I, 4, Bool>,
) -> (Tensor<I, 2>, Saved<I>) {
    let [b, nh, t, hd] = q.dims();
    let [_, nkv, s, _] = k.dims();
    let rep = nh / nkv.max(1);
    let repeat = |y: Tensor<I, 4>| {
        if rep == 1 {
            y
        } else {
            y.unsqueeze_dim::<5>(2)
                .expand([b, nkv, rep, s, hd])
                .reshape([b, nh, s, hd])
        }
    };
    let (k, v) = (repeat(k), repeat(v));
    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * (hd as f64).powf(-0.5);
    let probs = softmax(scores.mask_fill(mask, MASKED as f64), 3);
    let out = probs.clone().matmul(v.clone());
    let out = out.swap_dims(1, 2).reshape([b * t, nh * hd]);
    (
        out,
        Saved {
            q,
            k,
            v,
            probs,
            kv_heads: nkv,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type A = Autodiff<NdArray<f32>>;
    type AF = Autodiff<Flex>;

    /// The recorded op and burn's recorded ops on the same inputs: outputs and gradients of
    /// q, k and v (through a weighted sum of the output).
    fn compare<B: burn::tensor::backend::AutodiffBackend>(
        [b, nh, nkv, t, hd]: [usize; 5],
        padded: &[bool],
    ) -> (f32, f32, f32) {
        let device = Default::default();
        B::seed(&device, 7);
        let x = |h| Tensor::<B, 4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &device);
        let (q0, k0, v0) = (x(nh), x(nkv), x(nkv));
        let w = Tensor::<B, 2>::random([b * t, nh * hd], Distribution::Normal(0.0, 1.0), &device);
        let causal: Vec<bool> = (0..b)
            .flat_map(|r| (0..t).flat_map(move |i| (0..t).map(move |j| j > i || padded[r * t + j])))
            .collect();
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(causal, [b, 1, t, t]), &device);
        let run = |fused: bool| {
            let (q, k, v) = (
                q0.clone().require_grad(),
                k0.clone().require_grad(),
                v0.clone().require_grad(),
            );
            let out = if fused {
                causal_attention(q.clone(), k.clone(), v.clone(), mask.clone())
                    .unwrap_or_else(|_| panic!("served"))
            } else {
                crate::causal::unfused(q.clone(), k.clone(), v.clone(), mask.clone())
            };
            let g = (out.clone() * w.clone()).sum().backward();
            let grads = [q, k, v].map(|p| p.grad(&g).unwrap().into_data());
            (out.into_data(), grads)
        };
        let (out_a, ga) = run(true);
        let (out_b, gb) = run(false);
        let diff = |a: &TensorData, b: &TensorData| {
            a.to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(b.to_vec::<f32>().unwrap())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let grad_diff = ga
            .iter()
            .zip(&gb)
            .map(|(a, b)| diff(a, b))
            .fold(0.0f32, f32::max);
        let scale = gb
            .iter()
            .flat_map(|g| g.to_vec::<f32>().unwrap())
            .fold(0.0f32, |m, v| m.max(v.abs()));
        (diff(&out_a, &out_b), grad_diff, scale)
    }

    #[test]
    fn gradients_equal_the_recorded_ops_with_gqa_and_padding() {
        // Two sequences, the second padded at its last two keys; 4 query heads on 2 kv heads.
        let padded = [vec![false; 6], vec![false, false, false, false, true, true]].concat();
        let (out, grad, scale) = compare::<A>([2, 4, 2, 6, 8], &padded);
        assert_eq!(out, 0.0, "NdArray: the same operations, bit for bit");
        assert!(grad <= 1e-5 * scale.max(1.0), "{grad} (largest {scale})");
        let (out, grad, scale) = compare::<AF>([2, 4, 2, 6, 8], &padded);
        assert!(out <= 1e-5, "{out}");
        assert!(grad <= 1e-5 * scale.max(1.0), "{grad} (largest {scale})");
        // Without grouping.
        let (_, grad, scale) = compare::<A>([1, 2, 2, 5, 4], &[false; 5]);
        assert!(grad <= 1e-5 * scale.max(1.0), "{grad} (largest {scale})");
    }

    #[test]
    fn other_backends_and_dtypes_get_their_tensors_back() {
        let device = Default::default();
        let x = || Tensor::<NdArray<f32>, 4>::zeros([1, 1, 2, 2], &device);
        let mask = Tensor::<NdArray<f32>, 4, Bool>::from_data(
            TensorData::new(vec![false; 4], [1, 1, 2, 2]),
            &device,
        );
        assert!(causal_attention(x(), x(), x(), mask).is_err());
        let device = Default::default();
        let x = || Tensor::<Flex, 4>::zeros([1, 1, 2, 2], &device);
        let mask = Tensor::<Flex, 4, Bool>::from_data(
            TensorData::new(vec![false; 4], [1, 1, 2, 2]),
            &device,
        );
        assert!(causal_attention(x(), x(), x(), mask).is_err());
    }

    #[test]
    fn untracked_inputs_need_no_state() {
        let device = Default::default();
        let x = || Tensor::<A, 4>::ones([1, 2, 3, 4], &device);
        let mask =
            Tensor::<A, 4, Bool>::from_data(TensorData::new(vec![false; 9], [1, 1, 3, 3]), &device);
        let out = causal_attention(x(), x(), x(), mask.clone()).unwrap_or_else(|_| panic!());
        assert_eq!(out.dims(), [3, 8]);
        // Nothing requires a gradient: the output is a constant of the graph.
        assert!(!out.is_require_grad());
    }
}
