//! Moving between `Tensor<B, D>` and burn-flex's `FlexTensor` when `B` is the Flex backend, or
//! `Autodiff<Flex>` and the tensor needs no gradient (a frozen tower's activations: an
//! untracked result is all burn's recorded ops would give).
//!
//! The test is on types (`TypeId` of the backend's float primitive), so for any other backend
//! the tensor is handed back untouched and the caller runs burn's ops.

use std::any::{Any, TypeId};

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};

use crate::tracked::{Tracked, is_tracked};

pub(crate) fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
}

/// Whether `B`'s float tensors are autodiff tensors of Flex.
fn is_autodiff_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<Tracked<Flex>>()
}

/// Moves `value` from type `A` to type `T`, which the caller has checked are the same type.
pub(crate) fn cast<A: 'static, T: 'static>(value: A) -> T {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
        .expect("the caller checked that both types are the same")
}

/// The tensor as a Flex tensor of any layout, when it is f32 and `B` is Flex, or
/// `Autodiff<Flex>` and the tensor requires no gradient; otherwise the tensor itself,
/// unchanged.
pub(crate) fn to_flex_view<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<FlexTensor, Tensor<B, D>> {
    let autodiff = is_autodiff_flex::<B>() && !is_tracked::<B, Flex, D>(&x);
    if !(is_flex::<B>() || autodiff) || x.dtype() != DType::F32 {
        return Err(x);
    }
    match x.into_primitive() {
        TensorPrimitive::Float(p) if autodiff => Ok(cast::<_, Tracked<Flex>>(p).primitive),
        TensorPrimitive::Float(p) => Ok(cast(p)),
        q => Err(Tensor::from_primitive(q)),
    }
}

/// [`to_flex_view`] for contiguous tensors only (what the element-wise kernels read).
pub(crate) fn to_flex<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<FlexTensor, Tensor<B, D>> {
    let t = to_flex_view(x)?;
    if t.layout().contiguous_offsets().is_some() {
        Ok(t)
    } else {
        Err(from_flex(t))
    }
}

/// A Flex tensor as `B`'s: itself, or under `Autodiff<Flex>` a leaf that requires no gradient.
pub(crate) fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    if is_autodiff_flex::<B>() {
        return Tensor::from_primitive(TensorPrimitive::Float(cast(Tracked::<Flex>::new(t))));
    }
    Tensor::from_primitive(TensorPrimitive::Float(cast(t)))
}

/// Every tensor converted by `convert`, or, as soon as one is refused, all of them back
/// unchanged for the caller's fallback.
pub(crate) fn convert_all<B: Backend, const D: usize, const N: usize>(
    tensors: [Tensor<B, D>; N],
    convert: fn(Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>>,
) -> Result<[FlexTensor; N], [Tensor<B, D>; N]> {
    let mut done: Vec<FlexTensor> = Vec::with_capacity(N);
    let mut rest = tensors.into_iter();
    while let Some(t) = rest.next() {
        match convert(t) {
            Ok(f) => done.push(f),
            Err(t) => {
                let back: Vec<Tensor<B, D>> = done
                    .into_iter()
                    .map(from_flex)
                    .chain(std::iter::once(t))
                    .chain(rest)
                    .collect();
                return Err(back
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("N tensors")));
            }
        }
    }
    Ok(done
        .try_into()
        .unwrap_or_else(|_| unreachable!("N tensors")))
}

/// A raw pointer shared by parallel tasks that write disjoint elements of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: the tasks sharing one pointer write disjoint elements (each user states which).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `offset` elements on (a method, so closures capture the whole wrapper).
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    pub(crate) unsafe fn add(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// The contiguous f32 elements of a tensor [`to_flex`] accepted.
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("to_flex accepts contiguous f32 tensors only")
}

/// A contiguous f32 tensor holding `values`.
///
/// `FlexTensor::empty` allocates a zeroed byte vector and then copies it into a second,
/// 16-byte-aligned allocation (cubecl's `Bytes::from_bytes_vec`); an f32 vector moved in as is
/// costs neither the copy nor the second allocation's page faults.
pub(crate) fn from_vec(values: Vec<f32>, shape: Shape) -> FlexTensor {
    debug_assert_eq!(values.len(), shape.num_elements());
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// A contiguous f32 tensor of `shape` whose elements `write` stores through the pointer it is
/// given (the start of `shape.num_elements()` uninitialised elements): no zeroing pass and no
/// copy (see [`from_vec`]).
///
/// # Safety
/// `write` must store every element before it returns.
pub(crate) unsafe fn written(shape: Shape, write: impl FnOnce(SharedMut)) -> FlexTensor {
    let n = shape.num_elements();
    let mut values = Vec::<f32>::with_capacity(n);
    write(SharedMut(values.as_mut_ptr()));
    // SAFETY: the caller's `write` stored all n elements.
    unsafe { values.set_len(n) };
    from_vec(values, shape)
}

/// A new f32 tensor of `like`'s shape whose elements `kernel` writes.
fn fill_like(like: &FlexTensor, kernel: impl FnOnce(&mut [f32])) -> FlexTensor {
    let shape = like.layout().shape().clone();
    let mut out = vec![0.0f32; shape.num_elements()];
    kernel(&mut out);
    from_vec(out, shape)
}

/// `kernel(x, out)` on a Flex tensor, or the tensor back for the caller's fallback.
pub(crate) fn unary<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    kernel: fn(&[f32], &mut [f32]),
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let x = to_flex(x)?;
    Ok(from_flex(fill_like(&x, |out| kernel(values(&x), out))))
}

/// `kernel(a, b, out)` on two Flex tensors of one shape, or both back for the fallback.
pub(crate) fn binary<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    kernel: fn(&[f32], &[f32], &mut [f32]),
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if a.dims() != b.dims() {
        return Err((a, b));
    }
    let [a, b] = convert_all([a, b], to_flex).map_err(|[a, b]| (a, b))?;
    Ok(from_flex(fill_like(&a, |out| {
        kernel(values(&a), values(&b), out)
    })))
}
