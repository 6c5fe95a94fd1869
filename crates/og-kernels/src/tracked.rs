//! Hot paths of a Llama decoder layer as single autodiff operations on burn's CPU backends.
//!
//! Under `Autodiff<B>` burn records each of the model's small ops with its operands and runs a
//! backward pass per op. Three paths are long chains of them, and one common op does more than
//! it needs:
//!
//! - **causal grouped-query attention** ([`causal_attention`]): about a dozen recorded ops
//!   (key/value repeat, score product, scale, mask, the five steps of softmax, value product,
//!   head merge), each backward pass over `[batch, heads, tokens, keys]` tensors. Here the
//!   forward and backward run on host copies of the operands, one task per head
//!   ([`crate::causal_host`]): the forward keeps the softmax probabilities `P`; the backward is
//!   the attention's own (Vaswani et al. Eq. 1 differentiated): `dV = Pᵀ dO`, `dP = dO V`ᵀ,
//!   `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d` (zero at masked scores), `dQ = dS K`, `dK = dSᵀ Q`,
//!   with the gradients of the query heads that share a key/value head (GQA) summed into it.
//! - **the SwiGLU product** ([`silu_mul`]) `silu(g) · u`: burn's sigmoid on NdArray costs three
//!   transcendentals and eight passes a value, then two products, each recorded. Here one
//!   vectorised pass forward and one per input backward: `du = dO · g σ(g)`,
//!   `dg = dO · u σ(g) (1 + g (1 − σ(g)))`.
//! - **RoPE** ([`rope`]) `x·cos + rotate_half(x)·sin`: two slices, a concatenation, two
//!   products and a sum, recorded. Here one pass each way ([`crate::rope`]): `y = x·c + P(x)·s`
//!   with `P` swapping a row's halves, and `dx = dy·c + P(dy·s)` (the tables are constants).
//! - **products with frozen weights** ([`frozen_linear`]) `x W + b` with `W`, `b` constants
//!   (LoRA's frozen base projections, the LM head): burn's `linear` zeroes each product's
//!   output and adds the bias in a pass of its own, forward and backward. Here the forward is
//!   [`crate::linear`] on the inner tensors and the backward `dx = dy Wᵀ`, nothing else.
//!
//! They serve `Autodiff<NdArray<f32>>` and `Autodiff<Flex>` (the CPU training backends) with f32
//! tensors; every other backend or dtype gets its tensors back for burn's recorded ops.

use std::any::TypeId;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::causal::CausalKeys;
use crate::causal_host;
use crate::flex::cast;
use crate::math;

/// An autodiff tensor of the inner backend `I`.
pub(crate) type Tracked<I> = <Autodiff<I> as BackendTypes>::FloatTensorPrimitive;

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

/// Whether `x`, an autodiff tensor of `I` (which the caller checked `B`'s are), is part of a
/// graph that needs gradients: a leaf that requires one or a result computed from such a leaf.
/// burn's `is_require_grad` answers true for such leaves only.
pub(crate) fn is_tracked<B: Backend, I: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    tracked::<B, I, D>(x.clone()).is_tracked()
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
type AttentionInputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// `softmax(q kᵀ / √d, masked) v` as one recorded operation when `B` is an autodiff CPU
/// backend and the tensors are f32; otherwise the inputs, unchanged.
///
/// # Shapes
/// As [`crate::causal_attention`], which checked them against `keys`: `q` `[b, heads, t, d]`,
/// `k`, `v` `[b, kv_heads, past + t, d]`; output `[b · t, heads · d]`.
pub(crate) fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    keys: &CausalKeys<B>,
) -> Result<Tensor<B, 2>, AttentionInputs<B>> {
    if [&q, &k, &v].iter().any(|x| x.dtype() != DType::F32) {
        return Err((q, k, v));
    }
    fn run<B: Backend, I: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        keys: &CausalKeys<B>,
    ) -> Tensor<B, 2> {
        untracked::<B, I, 2>(attention::<I>(
            [
                tracked::<B, I, 4>(q),
                tracked::<B, I, 4>(k),
                tracked::<B, I, 4>(v),
            ],
            keys.past,
            keys.host_padding(),
        ))
    }
    match inner_cpu::<B>() {
        Some(Inner::NdArray) => Ok(run::<B, NdArray<f32>>(q, k, v, keys)),
        Some(Inner::Flex) => Ok(run::<B, Flex>(q, k, v, keys)),
        None => Err((q, k, v)),
    }
}

#[derive(Debug)]
struct Attention;

/// The host operands and probabilities, and the device the gradients go to.
#[derive(Debug, Clone)]
struct AttentionSaved<I: Backend> {
    host: causal_host::Saved,
    device: I::Device,
}

impl<I: Backend> Backward<I, 3> for Attention {
    type State = AttentionSaved<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let AttentionSaved { host, device } = ops.state;
        let (d_out, _) = self::host::<I, 2>(grads.consume::<I>(&ops.node));
        if ops.parents.iter().all(Option::is_none) {
            return;
        }
        let d = host.dims;
        let s = d.past + d.tokens;
        let (dq, dk, dv) = causal_host::backward(&host, &d_out);
        let q_shape = [d.batch, d.heads, d.tokens, d.head_dim];
        let kv_shape = [d.batch, d.kv_heads, s, d.head_dim];
        let [pq, pk, pv] = ops.parents;
        for (node, grad, shape) in [(pq, dq, q_shape), (pk, dk, kv_shape), (pv, dv, kv_shape)] {
            if let Some(node) = node {
                grads.register::<I>(node.id, heads_view::<I>(&grad, shape, &device));
            }
        }
    }
}

/// A `[b, heads, tokens, d]` tensor's values in that order. The model hands its heads over as
/// views of token-major projections (`[b, tokens, heads, d]` with the middle axes swapped):
/// swapped back they are contiguous, read in one copy and reordered by rows of `d`, where
/// reading the view itself would gather element by element.
fn heads_first<I: Backend>(x: I::FloatTensorPrimitive) -> (Vec<f32>, [usize; 4]) {
    let (values, shape) = host::<I, 4>(primitive(inner::<I, 4>(x).swap_dims(1, 2)));
    let [b, t, n, d] = [shape[0], shape[1], shape[2], shape[3]];
    (swap_middle(&values, [b, t, n, d]), [b, n, t, d])
}

/// `[b, heads, tokens, d]` values as a tensor of that shape laid out token-major (a view with
/// the middle axes swapped), the layout [`heads_first`] reads: the model's own swap and
/// reshape then cost no copy in the backward pass.
fn heads_view<I: Backend>(
    values: &[f32],
    [b, n, t, d]: [usize; 4],
    device: &I::Device,
) -> I::FloatTensorPrimitive {
    let tokens_first = swap_middle(values, [b, n, t, d]);
    primitive(
        inner::<I, 4>(device_tensor::<I, 4>(tokens_first, &[b, t, n, d], device)).swap_dims(1, 2),
    )
}

/// Row-major `[a, m, n, r]` values reordered to `[a, n, m, r]`, `r` values at a time.
fn swap_middle(values: &[f32], [_, m, n, r]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    if out.is_empty() {
        return out;
    }
    for (i, block) in out.chunks_mut(m * n * r).enumerate() {
        for (row, dst) in block.chunks_mut(r).enumerate() {
            let (jn, jm) = (row / m, row % m);
            let at = ((i * m + jm) * n + jn) * r;
            dst.copy_from_slice(&values[at..at + r]);
        }
    }
    out
}

/// The recorded operation: forward on the host ([`causal_host::forward`]), its operands and
/// probabilities kept only when a gradient is needed.
fn attention<I: Backend>([q, k, v]: [Tracked<I>; 3], past: usize, padding: &[bool]) -> Tracked<I> {
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let device = I::float_device(&q.primitive);
    let (q, [batch, heads, tokens, head_dim]) = heads_first::<I>(q.primitive);
    let (k, [_, kv_heads, _, _]) = heads_first::<I>(k.primitive);
    let (v, _) = heads_first::<I>(v.primitive);
    let dims = causal_host::Dims {
        batch,
        heads,
        kv_heads,
        tokens,
        past,
        head_dim,
    };
    let (out, probs) = causal_host::forward(&q, &k, &v, padding, dims);
    let out = device_tensor::<I, 2>(out, &[batch * tokens, heads * head_dim], &device);
    match Attention
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let host = causal_host::Saved {
                q,
                k,
                v,
                probs,
                padding: padding.to_vec(),
                dims,
            };
            prep.finish(AttentionSaved { host, device }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
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

/// The rotary embedding's inputs, handed back to callers the operation does not serve.
type RopeInputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// [`crate::rope`] as one recorded operation when `B` is an autodiff CPU backend and the
/// tables are constants; otherwise the inputs, unchanged. The caller checked the shapes and
/// that every tensor is f32.
pub(crate) fn rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, RopeInputs<B>> {
    fn run<B: Backend, I: Backend>(
        x: Tensor<B, 4>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, RopeInputs<B>> {
        if is_tracked::<B, I, 4>(&cos) || is_tracked::<B, I, 4>(&sin) {
            return Err((x, cos, sin));
        }
        let [_, _, heads, head_dim] = x.dims();
        let table_heads = cos.dims()[2];
        let tables = RopeTables {
            cos: crate::rope::host(cos),
            sin: crate::rope::host(sin),
            sizes: [heads, table_heads, head_dim],
        };
        Ok(untracked::<B, I, 4>(rotary::<I>(
            tracked::<B, I, 4>(x),
            tables,
        )))
    }
    match inner_cpu::<B>() {
        Some(Inner::NdArray) => run::<B, NdArray<f32>>(x, cos, sin),
        Some(Inner::Flex) => run::<B, Flex>(x, cos, sin),
        None => Err((x, cos, sin)),
    }
}

#[derive(Debug)]
struct Rope;

/// The tables on the host and `[heads, table_heads, head_dim]` ([`crate::rope::Table::new`]).
#[derive(Debug, Clone)]
struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    sizes: [usize; 3],
}

impl RopeTables {
    fn table(&self) -> crate::rope::Table<'_> {
        crate::rope::Table::new(&self.cos, &self.sin, self.sizes)
    }
}

/// The tables, and the shape and device of the gradient.
#[derive(Debug, Clone)]
struct RopeSaved<I: Backend> {
    tables: RopeTables,
    shape: Vec<usize>,
    device: I::Device,
}

impl<I: Backend> Backward<I, 1> for Rope {
    type State = RopeSaved<I>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let RopeSaved {
            tables,
            shape,
            device,
        } = ops.state;
        let (d_out, _) = host::<I, 4>(grads.consume::<I>(&ops.node));
        let [px] = ops.parents;
        if let Some(node) = px {
            let dx = crate::rope::rotate(&d_out, tables.table(), crate::rope::Direction::Backward);
            grads.register::<I>(node.id, device_tensor::<I, 4>(dx, &shape, &device));
        }
    }
}

fn rotary<I: Backend>(x: Tracked<I>, tables: RopeTables) -> Tracked<I> {
    let nodes = [x.node.clone()];
    let device = I::float_device(&x.primitive);
    let (x, shape) = host::<I, 4>(x.primitive);
    let y = crate::rope::rotate(&x, tables.table(), crate::rope::Direction::Forward);
    let out = device_tensor::<I, 4>(y, &shape, &device);
    match Rope
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            RopeSaved {
                tables,
                shape,
                device,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The operands of a product with frozen weights, handed back to callers the operation does
/// not serve.
type LinearInputs<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

/// `x W (+ b)` with `W` and `b` constants (a frozen base projection, a frozen LM head) as one
/// recorded operation when `B` is an autodiff CPU backend and `x` needs a gradient; otherwise
/// the operands, unchanged. The forward is [`crate::linear`] on the inner tensors; the backward
/// is `dx = dy Wᵀ` ([`crate::matmul`] on a transposed view of `W`). burn's recorded `linear`
/// computes the same two products with a zeroed output and a separate bias pass each, and
/// keeps the bias's and the weight's nodes for gradients nobody asks for.
pub(crate) fn frozen_linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, LinearInputs<B>> {
    fn run<B: Backend, I: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Result<Tensor<B, 2>, LinearInputs<B>> {
        fn f32_constant<B: Backend, I: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
            t.dtype() == DType::F32 && !is_tracked::<B, I, D>(t)
        }
        if x.dtype() != DType::F32
            || !is_tracked::<B, I, 2>(&x)
            || !f32_constant::<B, I, 2>(&weight)
            || !bias.as_ref().is_none_or(f32_constant::<B, I, 1>)
        {
            return Err((x, weight, bias));
        }
        let weight = inner::<I, 2>(tracked::<B, I, 2>(weight).primitive);
        let bias = bias.map(|b| inner::<I, 1>(tracked::<B, I, 1>(b).primitive));
        Ok(untracked::<B, I, 2>(linear_op::<I>(
            tracked::<B, I, 2>(x),
            weight,
            bias,
        )))
    }
    match inner_cpu::<B>() {
        Some(Inner::NdArray) => run::<B, NdArray<f32>>(x, weight, bias),
        Some(Inner::Flex) => run::<B, Flex>(x, weight, bias),
        None => Err((x, weight, bias)),
    }
}

#[derive(Debug)]
struct FrozenLinear;

impl<I: Backend> Backward<I, 1> for FrozenLinear {
    /// The weight (`[in, out]`).
    type State = Tensor<I, 2>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = inner::<I, 2>(grads.consume::<I>(&ops.node));
        let [px] = ops.parents;
        if let Some(node) = px {
            let dx = crate::linear::matmul(d_out, ops.state.transpose());
            grads.register::<I>(node.id, primitive(dx));
        }
    }
}

fn linear_op<I: Backend>(
    x: Tracked<I>,
    weight: Tensor<I, 2>,
    bias: Option<Tensor<I, 1>>,
) -> Tracked<I> {
    let nodes = [x.node.clone()];
    let out = primitive(crate::linear::linear(
        inner::<I, 2>(x.primitive),
        weight.clone(),
        bias,
    ));
    match FrozenLinear
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(weight, out),
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
        let padding = TensorData::new(padded.to_vec(), [b, t]);
        let keys = CausalKeys::<B>::new(0, t, Tensor::from_data(padding, &device));
        let run = |fused: bool| {
            let (q, k, v) = (
                q0.clone().require_grad(),
                k0.clone().require_grad(),
                v0.clone().require_grad(),
            );
            let out = if fused {
                causal_attention(q.clone(), k.clone(), v.clone(), &keys)
                    .unwrap_or_else(|_| panic!("served"))
            } else {
                crate::causal::unfused(q.clone(), k.clone(), v.clone(), keys.mask())
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
        // Three sequences: the second padded at its last two keys, the third at its first (its
        // first query sees no key: a constant average, no gradient to q or k); 4 query heads on
        // 2 kv heads.
        let padded = [
            vec![false; 6],
            vec![false, false, false, false, true, true],
            vec![true, false, false, false, false, false],
        ]
        .concat();
        for (out, grad, scale) in [
            compare::<A>([3, 4, 2, 6, 8], &padded),
            compare::<AF>([3, 4, 2, 6, 8], &padded),
            // Without grouping.
            compare::<A>([1, 2, 2, 5, 4], &[false; 5]),
        ] {
            assert!(out <= 1e-5, "{out}");
            assert!(grad <= 1e-5 * scale.max(1.0), "{grad} (largest {scale})");
        }
    }

    fn keys<B: Backend>(b: usize, t: usize) -> CausalKeys<B> {
        let padding = TensorData::new(vec![false; b * t], [b, t]);
        CausalKeys::new(0, t, Tensor::from_data(padding, &Default::default()))
    }

    #[test]
    fn other_backends_and_dtypes_get_their_tensors_back() {
        let device = Default::default();
        let x = || Tensor::<NdArray<f32>, 4>::zeros([1, 1, 2, 2], &device);
        assert!(causal_attention(x(), x(), x(), &keys(1, 2)).is_err());
        let device = Default::default();
        let x = || Tensor::<Flex, 4>::zeros([1, 1, 2, 2], &device);
        assert!(causal_attention(x(), x(), x(), &keys(1, 2)).is_err());
    }

    #[test]
    fn untracked_inputs_need_no_state() {
        let device = Default::default();
        let x = || Tensor::<A, 4>::ones([1, 2, 3, 4], &device);
        let out = causal_attention(x(), x(), x(), &keys(1, 3)).unwrap_or_else(|_| panic!());
        assert_eq!(out.dims(), [3, 8]);
        // Nothing requires a gradient: the output is a constant of the graph.
        assert!(!is_tracked::<A, NdArray<f32>, 2>(&out));
    }

    /// `crate::linear` (the recorded operation when `W` and `b` are constants) against burn's
    /// recorded `linear` on a tracked `x`: the largest differences of output and of `x`'s
    /// gradient through a weighted sum, relative to 1 + |value|.
    fn frozen_linear_diffs<B: burn::tensor::backend::AutodiffBackend>(
        [rows, inner, cols]: [usize; 3],
        with_bias: bool,
        transposed: bool,
    ) -> [f32; 2] {
        let device = Default::default();
        B::seed(&device, 5);
        let r = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (x0, w_out) = (r([rows, inner]), r([rows, cols]));
        // A transposed view, as a tied embedding serves as the LM head.
        let weight = if transposed {
            r([cols, inner]).transpose()
        } else {
            r([inner, cols])
        };
        let bias = with_bias
            .then(|| Tensor::<B, 1>::random([cols], Distribution::Normal(0.0, 1.0), &device));
        let run = |ours: bool| {
            let x = x0.clone().require_grad();
            let y = if ours {
                crate::linear::linear(x.clone(), weight.clone(), bias.clone())
            } else {
                burn::tensor::module::linear(x.clone(), weight.clone(), bias.clone())
            };
            let g = (y.clone() * w_out.clone()).sum().backward();
            (y.into_data(), x.grad(&g).unwrap().into_data())
        };
        let ((ya, ga), (yb, gb)) = (run(true), run(false));
        let rel = |a: TensorData, b: TensorData| {
            a.to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(b.to_vec::<f32>().unwrap())
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max)
        };
        [rel(ya, yb), rel(ga, gb)]
    }

    #[test]
    fn products_with_frozen_weights_equal_burns_recorded_linear() {
        // Few rows, many rows (gemm), too small to split, a transposed weight; with and
        // without a bias; on both CPU training backends.
        for (shape, transposed) in [
            ([3, 300, 400], false),
            ([130, 96, 288], false),
            ([8, 16, 24], false),
            ([5, 64, 1000], true),
        ] {
            for with_bias in [true, false] {
                for [out, grad] in [
                    frozen_linear_diffs::<AF>(shape, with_bias, transposed),
                    frozen_linear_diffs::<A>(shape, with_bias, transposed),
                ] {
                    // Sums of hundreds of unit-scale products in another order.
                    assert!(
                        out < 1e-4 && grad < 1e-4,
                        "{shape:?} bias {with_bias}: {out} {grad}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_trainable_weight_keeps_burns_ops_and_its_gradient() {
        let device = Default::default();
        let x = Tensor::<AF, 2>::ones([2, 3], &device).require_grad();
        let w = Tensor::<AF, 2>::ones([3, 4], &device).require_grad();
        assert!(frozen_linear(x.clone(), w.clone(), None).is_err());
        let y = crate::linear::linear(x, w.clone(), None);
        let g = y.sum().backward();
        assert_eq!(
            w.grad(&g).unwrap().to_data().to_vec::<f32>().unwrap(),
            vec![2.0; 12]
        );
        // A constant input with a constant weight needs no operation either.
        let c = Tensor::<AF, 2>::ones([2, 3], &device);
        assert!(frozen_linear(c, Tensor::<AF, 2>::ones([3, 4], &device), None).is_err());
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

    /// The recorded rotary embedding against burn's ops under autodiff: output and the
    /// gradient of `x`, through a weighted sum, with tables shared by the heads and per head.
    fn rope_diffs<B: burn::tensor::backend::AutodiffBackend>(table_heads: usize) -> [f32; 2] {
        let device = Default::default();
        B::seed(&device, 5);
        let (b, t, h, d) = (2, 5, 3, 8);
        let r = |heads| {
            Tensor::<B, 4>::random([b, t, heads, d], Distribution::Normal(0.0, 1.0), &device)
        };
        let (x0, w, cos, sin) = (r(h), r(h), r(table_heads), r(table_heads));
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let out = if fused {
                rope(x.clone(), cos.clone(), sin.clone()).unwrap_or_else(|_| panic!("served"))
            } else {
                crate::rope::unfused(x.clone(), cos.clone(), sin.clone())
            };
            let grads = (out.clone() * w.clone()).sum().backward();
            [out.into_data(), x.grad(&grads).unwrap().into_data()]
        };
        let (a, b) = (run(true), run(false));
        [0, 1].map(|i| {
            a[i].to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(b[i].to_vec::<f32>().unwrap())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        })
    }

    #[test]
    fn rope_gradients_equal_the_recorded_ops() {
        for table_heads in [1, 3] {
            for d in rope_diffs::<A>(table_heads)
                .into_iter()
                .chain(rope_diffs::<AF>(table_heads))
            {
                assert!(d <= 1e-6, "{d}");
            }
        }
        // Tables that require a gradient are left to burn's ops.
        let device = Default::default();
        let x = Tensor::<A, 4>::ones([1, 2, 1, 4], &device);
        let table = Tensor::<A, 4>::ones([1, 2, 1, 4], &device).require_grad();
        assert!(rope(x, table.clone(), table).is_err());
    }
}
