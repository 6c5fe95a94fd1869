//! Hot paths of a Llama decoder layer as single autodiff operations on burn's CPU backends.
//!
//! Under `Autodiff<B>` burn records each of the model's small ops with its operands and runs a
//! backward pass per op. Two paths are long chains of them:
//!
//! - **causal grouped-query attention** ([`causal_attention`]): about a dozen recorded ops
//!   (key/value repeat, score product, scale, mask, the five steps of softmax, value product,
//!   head merge), each backward pass over `[batch, heads, tokens, keys]` tensors. Here the
//!   forward runs the same inner-backend ops and keeps the operands and the softmax
//!   probabilities `P`; the backward is the attention's own (Vaswani et al. Eq. 1
//!   differentiated): `dV = Pᵀ dO`, `dP = dO V`ᵀ, `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d` (masked
//!   keys have `P = 0`, so no gradient), `dQ = dS K`, `dK = dSᵀ Q`, with the gradients of the
//!   query heads that share a key/value head (GQA) summed into it.
//! - **the SwiGLU product** ([`silu_mul`]) `silu(g) · u`: burn's sigmoid on NdArray costs three
//!   transcendentals and eight passes a value, then two products, each recorded. Here one
//!   vectorised pass forward and one per input backward: `du = dO · g σ(g)`,
//!   `dg = dO · u σ(g) (1 + g (1 − σ(g)))`.
//!
//! They serve `Autodiff<NdArray<f32>>` and `Autodiff<Flex>` (the CPU training backends) with f32
//! tensors; every other backend or dtype gets its tensors back for burn's recorded ops.

use std::any::TypeId;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::causal::{Parts, unfused_parts};
use crate::flex::cast;
use crate::math;

/// An autodiff tensor of the inner backend `I`.
type Tracked<I> = <Autodiff<I> as BackendTypes>::FloatTensorPrimitive;

/// The CPU backends whose autodiff tensors these operations serve.
#[derive(Clone, Copy)]
enum Inner {
    NdArray,
    Flex,
}

/// Which inner CPU backend `B`'s tensors are autodiff tensors of (any checkpointing strategy:
/// the operations keep their own state and need none).
fn inner_cpu<B: Backend>() -> Option<Inner> {
    fn of<B: Backend, I: Backend>() -> bool {
        TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<Tracked<I>>()
            && TypeId::of::<B::BoolTensorPrimitive>() == TypeId::of::<I::BoolTensorPrimitive>()
    }
    if of::<B, NdArray<f32>>() {
        Some(Inner::NdArray)
    } else if of::<B, Flex>() {
        Some(Inner::Flex)
    } else {
        None
    }
}

/// `B`'s tensor as `Autodiff<I>`'s, which the caller checked they are.
fn tracked<B: Backend, I: Backend, const D: usize>(x: Tensor<B, D>) -> Tracked<I> {
    cast(x.into_primitive().tensor())
}

fn untracked<B: Backend, I: Backend, const D: usize>(t: Tracked<I>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(cast(t)))
}

fn inner<I: Backend, const D: usize>(p: I::FloatTensorPrimitive) -> Tensor<I, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn primitive<I: Backend, const D: usize>(t: Tensor<I, D>) -> I::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// The attention's inputs, handed back to callers the operation does not serve.
type AttentionInputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4, Bool>);

/// `softmax(q kᵀ / √d, masked) v` as one recorded operation when `B` is an autodiff CPU
/// backend and the tensors are f32; otherwise the inputs, unchanged.
///
/// # Shapes
/// As [`crate::causal_attention`]: `q` `[b, heads, t, d]`, `k`, `v` `[b, kv_heads, s, d]`,
/// `mask` `[b, 1, t, s]` (true = masked); output `[b · t, heads · d]`.
pub(crate) fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Result<Tensor<B, 2>, AttentionInputs<B>> {
    if [&q, &k, &v].iter().any(|x| x.dtype() != DType::F32) {
        return Err((q, k, v, mask));
    }
    fn run<B: Backend, I: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: Tensor<B, 4, Bool>,
    ) -> Tensor<B, 2> {
        let mask: I::BoolTensorPrimitive = cast(mask.into_primitive());
        untracked::<B, I, 2>(attention::<I>(
            tracked::<B, I, 4>(q),
            tracked::<B, I, 4>(k),
            tracked::<B, I, 4>(v),
            mask,
        ))
    }
    match inner_cpu::<B>() {
        Some(Inner::NdArray) => Ok(run::<B, NdArray<f32>>(q, k, v, mask)),
        Some(Inner::Flex) => Ok(run::<B, Flex>(q, k, v, mask)),
        None => Err((q, k, v, mask)),
    }
}

#[derive(Debug)]
struct Attention;

impl<I: Backend> Backward<I, 3> for Attention {
    type State = Parts<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Parts {
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

/// The recorded operation: forward on the inner backend, its [`Parts`] kept only when a
/// gradient is needed.
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
    // The fallback's operations in its order: outputs equal to it bit for bit on NdArray.
    let (out, parts) = unfused_parts(q, k, v, mask);
    match Attention
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(parts, primitive(out)),
        OpsKind::UnTracked(prep) => prep.finish(primitive(out)),
    }
}

/// `silu(gate) · up` as one recorded operation when `B` is an autodiff CPU backend and both
/// tensors are f32; otherwise the inputs, unchanged.
pub(crate) fn silu_mul<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.shape() != up.shape() {
        return Err((gate, up));
    }
    fn run<B: Backend, I: Backend, const D: usize>(
        g: Tensor<B, D>,
        u: Tensor<B, D>,
    ) -> Tensor<B, D> {
        untracked::<B, I, D>(swiglu::<I, D>(tracked::<B, I, D>(g), tracked::<B, I, D>(u)))
    }
    match inner_cpu::<B>() {
        Some(Inner::NdArray) => Ok(run::<B, NdArray<f32>, D>(gate, up)),
        Some(Inner::Flex) => Ok(run::<B, Flex, D>(gate, up)),
        None => Err((gate, up)),
    }
}

/// The values of an f32 tensor, row-major, and its shape.
fn host<I: Backend, const D: usize>(p: I::FloatTensorPrimitive) -> (Vec<f32>, Vec<usize>) {
    let data = inner::<I, D>(p).into_data();
    let shape = data.shape.to_vec();
    (data.into_vec::<f32>().expect("an f32 tensor"), shape)
}

fn device_tensor<I: Backend, const D: usize>(
    values: Vec<f32>,
    shape: &[usize],
    device: &I::Device,
) -> I::FloatTensorPrimitive {
    primitive(Tensor::<I, D>::from_data(
        TensorData::new(values, shape.to_vec()),
        device,
    ))
}

#[derive(Debug)]
struct SwiGlu<const D: usize>;

/// The operands, on the host.
#[derive(Debug, Clone)]
struct SwiGluSaved<I: Backend> {
    gate: Vec<f32>,
    up: Vec<f32>,
    shape: Vec<usize>,
    device: I::Device,
}

impl<I: Backend, const D: usize> Backward<I, 2> for SwiGlu<D> {
    type State = SwiGluSaved<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let SwiGluSaved {
            gate,
            up,
            shape,
            device,
        } = ops.state;
        let (d_out, _) = host::<I, D>(grads.consume::<I>(&ops.node));
        let [pg, pu] = ops.parents;
        if let Some(node) = pg {
            let mut dg = vec![0.0; d_out.len()];
            math::silu_mul_grad_gate(&gate, &up, &d_out, &mut dg);
            grads.register::<I>(node.id, device_tensor::<I, D>(dg, &shape, &device));
        }
        if let Some(node) = pu {
            let mut du = vec![0.0; d_out.len()];
            math::silu_mul_grad_up(&gate, &d_out, &mut du);
            grads.register::<I>(node.id, device_tensor::<I, D>(du, &shape, &device));
        }
    }
}

fn swiglu<I: Backend, const D: usize>(gate: Tracked<I>, up: Tracked<I>) -> Tracked<I> {
    let nodes = [gate.node.clone(), up.node.clone()];
    let device = I::float_device(&gate.primitive);
    let (g, shape) = host::<I, D>(gate.primitive);
    let (u, _) = host::<I, D>(up.primitive);
    let mut out = vec![0.0; g.len()];
    math::silu_mul(&g, &u, &mut out);
    let out = device_tensor::<I, D>(out, &shape, &device);
    match SwiGlu::<D>
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            SwiGluSaved {
                gate: g,
                up: u,
                shape,
                device,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
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

    /// The recorded op against burn's `silu(g) · u` under autodiff: output and both
    /// gradients, through a weighted sum.
    fn swiglu_diffs<B: burn::tensor::backend::AutodiffBackend>() -> [f32; 3] {
        let device = Default::default();
        B::seed(&device, 3);
        let r = || Tensor::<B, 3>::random([2, 5, 7], Distribution::Normal(0.0, 3.0), &device);
        let (g0, u0, w) = (r(), r(), r());
        let run = |fused: bool| {
            let (g, u) = (g0.clone().require_grad(), u0.clone().require_grad());
            let out = if fused {
                silu_mul(g.clone(), u.clone()).unwrap_or_else(|_| panic!("served"))
            } else {
                burn::tensor::activation::silu(g.clone()) * u.clone()
            };
            let grads = (out.clone() * w.clone()).sum().backward();
            [
                out.into_data(),
                g.grad(&grads).unwrap().into_data(),
                u.grad(&grads).unwrap().into_data(),
            ]
        };
        let (a, b) = (run(true), run(false));
        [0, 1, 2].map(|i| {
            a[i].to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(b[i].to_vec::<f32>().unwrap())
                .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
                .fold(0.0f32, f32::max)
        })
    }

    #[test]
    fn swiglu_gradients_equal_the_recorded_ops() {
        for d in swiglu_diffs::<A>().into_iter().chain(swiglu_diffs::<AF>()) {
            assert!(d <= 2e-6, "{d}");
        }
        // Mismatched shapes are left to burn's broadcasting ops.
        let device = Default::default();
        let g = Tensor::<A, 2>::ones([2, 3], &device);
        let u = Tensor::<A, 2>::ones([1, 3], &device);
        assert!(silu_mul(g, u).is_err());
    }
}
