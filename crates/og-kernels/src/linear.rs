//! `x W + b` on Flex with the work split the way the input's shape needs and no extra passes.
//!
//! gemm splits the rows of `x` among threads, so a product with one row (a decode step) and a
//! large weight matrix (the LM head: 576 × 49,152 for SmolLM2) runs on one core however large
//! it is. Here a product with up to 8 rows streams the weights on every thread
//! ([`crate::few_rows`]), one with up to 63 rows splits the **columns** of `W` between gemm
//! calls, one per thread: each thread streams its own part of the weights, which is what bounds
//! these products. Many rows keep gemm's row split. Either way the output is allocated once,
//! the bias is written before the product accumulates onto it, and nothing is zeroed or copied;
//! burn-flex's `linear` zeroes its output, copies it into an aligned allocation, and adds the
//! bias in a third pass, on one thread. Smaller products stay with burn (waking threads costs
//! more than they save).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear as burn_linear;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::few_rows;
use crate::flex::{SharedMut, convert_all, from_flex, to_flex, to_flex_view, values, written};

/// Below this many rows the columns are split between threads.
const SKINNY_ROWS: usize = 64;
/// Below this many multiply-adds a product with many rows stays with burn's `linear`.
const SPLIT_WORK: usize = 1 << 22;
/// Below this many weights a skinny product stays with burn's `linear`. A skinny product is
/// bound by streaming its weights from memory, which one core does at about half the rate of
/// two: every weight matrix of a decode step (SmolLM2's smallest is 576 × 192) is above it.
const SKINNY_SPLIT_WEIGHTS: usize = 1 << 16;
/// Column blocks are multiples of this (whole vector registers on every x86 level).
const COLUMN_ALIGN: usize = 16;

/// `x W (+ b)`, transformers' and burn's `Linear` with `W` stored `[in, out]`. Under autodiff
/// on the CPU backends, a product of a tracked `x` with constant `W` and `b` is one recorded
/// operation (`tracked::frozen_linear`); other backends run burn's `linear`.
///
/// # Shapes
/// `x`: `[rows, in]`; `weight`: `[in, out]` (any strides); `bias`: `[out]`; output
/// `[rows, out]`.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    match try_product(x, weight, bias) {
        Ok(y) => y,
        Err((x, weight, bias)) => match crate::tracked::frozen_linear(x, weight, bias) {
            Ok(y) => y,
            Err((x, weight, bias)) => burn_linear(x, weight, bias),
        },
    }
}

/// A `burn::nn::Linear` layer (weight `[in, out]`) on `x: [rows, in]` through [`linear`]; what
/// `layer.forward(x)` computes, and the same ops on every backend but Flex.
pub fn linear_layer<B: Backend>(layer: &burn::nn::Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// `x W`, served as [`linear`] is; other backends run burn's `matmul`.
///
/// # Shapes
/// `x`: `[rows, in]`; `weight`: `[in, out]` (any strides: a transposed view serves a tied
/// embedding as the LM head); output `[rows, out]`.
pub fn matmul<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    match try_product(x, weight, None) {
        Ok(y) => y,
        Err((x, weight, _)) => match crate::tracked::frozen_linear(x, weight, None) {
            Ok(y) => y,
            Err((x, weight, _)) => x.matmul(weight),
        },
    }
}

/// Whether the product is large enough for threads to pay for their wake-up: by the weights
/// it streams when it has few rows, by its multiply-adds otherwise.
fn worth_splitting(rows: usize, inner: usize, cols: usize) -> bool {
    if rows < SKINNY_ROWS {
        inner * cols >= SKINNY_SPLIT_WEIGHTS
    } else {
        rows * inner * cols >= SPLIT_WORK
    }
}

type Operands<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

/// The product on Flex (columns split between threads for few rows, gemm's own row split
/// otherwise), or the operands back unchanged.
fn try_product<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, Operands<B>> {
    let [rows, inner] = x.dims();
    let [w_inner, cols] = weight.dims();
    let bias_fits = bias.as_ref().is_none_or(|b| b.dims() == [cols]);
    if !worth_splitting(rows, inner, cols) || inner != w_inner || !bias_fits {
        return Err((x, weight, bias));
    }
    let [x, w] = match convert_all([x, weight], to_flex_view) {
        Ok([x, w])
            if x.layout().contiguous_offsets().is_some() && w.layout().has_positive_strides() =>
        {
            [x, w]
        }
        Ok([x, w]) => return Err((from_flex(x), from_flex(w), bias)),
        Err([x, w]) => return Err((x, w, bias)),
    };
    let b = match bias.map(to_flex) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(b)) => return Err((from_flex(x), from_flex(w), Some(b))),
    };
    Ok(from_flex(product(&x, &w, b.as_ref())))
}

/// `x W (+ b)` into a fresh output: the bias rows are written first (in parallel, so the
/// output's fresh pages are faulted in by every thread) and the product is accumulated onto
/// them; without a bias the product writes every element. The output is never zeroed or copied
/// (burn-flex's matmul output is both, and its bias add is a further pass).
fn product(x: &FlexTensor, w: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let (rows, inner) = (x.layout().shape()[0], x.layout().shape()[1]);
    let cols = w.layout().shape()[1];
    let (w_rs, w_cs) = (w.layout().strides()[0], w.layout().strides()[1]);
    // SAFETY: the layout's start offset is inside the storage.
    let w_ptr = unsafe { w.storage::<f32>().as_ptr().add(w.layout().start_offset()) };
    let w_ptr = SharedMut(w_ptr as *mut f32);
    let x = values(x);
    let bias = bias.map(values);
    if rows <= few_rows::MAX_ROWS && few_rows::Weights::supported(w_rs as usize, w_cs as usize) {
        let w = few_rows::Weights {
            values: &w.storage::<f32>()[w.layout().start_offset()..],
            inner,
            cols,
            row_stride: w_rs as usize,
            col_stride: w_cs as usize,
        };
        // SAFETY: `few_rows::product` writes all rows × cols elements of the fresh output.
        return unsafe {
            written([rows, cols].into(), |dst| {
                few_rows::product(x, rows, w, bias, dst)
            })
        };
    }
    let gemm_at = |dst: SharedMut, start: usize, width: usize, parallelism| {
        // SAFETY (also of sharing `dst`): x holds rows × inner; the weight view's elements
        // (r, c) lie at r·w_rs + c·w_cs from its start for r < inner, c < cols; the output
        // holds rows × cols, of which this call writes columns start..start + width.
        unsafe {
            gemm::gemm(
                rows,
                width,
                inner,
                dst.add(start),
                1,
                cols as isize,
                bias.is_some(),
                x.as_ptr(),
                1,
                inner as isize,
                (w_ptr.add(0) as *const f32).offset(start as isize * w_cs),
                w_cs,
                w_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    let write = |dst: SharedMut| {
        if let Some(b) = bias {
            (0..rows).into_par_iter().for_each(|r| {
                // SAFETY: row r of the output, written by this task only.
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), dst.add(r * cols), cols) }
            });
        }
        if rows >= SKINNY_ROWS {
            gemm_at(dst, 0, cols, gemm::Parallelism::Rayon(0));
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        let block = cols
            .div_ceil(threads)
            .next_multiple_of(COLUMN_ALIGN)
            .min(cols);
        (0..cols.div_ceil(block)).into_par_iter().for_each(|i| {
            let start = i * block;
            gemm_at(dst, start, block.min(cols - start), gemm::Parallelism::None);
        });
    };
    // SAFETY: with a bias every row is written before gemm reads it back; without one gemm
    // writes every element; the column blocks cover 0..cols.
    unsafe { written([rows, cols].into(), write) }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData};

    use super::{linear, matmul};

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 31 + seed * 17) % 103) as f32 - 51.0) / 40.0)
            .collect()
    }

    /// The largest `|a − e| / (1 + |e|)`: f32 sums of hundreds of products in another order
    /// agree relatively, not to the bit.
    fn worst_relative<A: Backend, E: Backend>(a: Tensor<A, 2>, e: Tensor<E, 2>) -> f32 {
        let (a, e) = (
            a.into_data().to_vec::<f32>().unwrap(),
            e.into_data().to_vec::<f32>().unwrap(),
        );
        a.iter()
            .zip(&e)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0f32, f32::max)
    }

    #[test]
    fn products_equal_burns_linear_with_and_without_bias() {
        let (d, nd_device) = (Default::default(), Default::default());
        // Few rows (weights streamed by every thread), skinny (gemm on column blocks), many
        // rows (gemm's row split), then too small for any of them.
        for (rows, inner, cols) in [
            (1, 2048, 2100),
            (8, 301, 333),
            (9, 301, 333),
            (5, 1000, 1000),
            (63, 300, 333),
            (64, 256, 260),
            (517, 300, 70),
            (3, 96, 200),
        ] {
            let (x, w, b) = (data(rows * inner, 1), data(inner * cols, 2), data(cols, 3));
            for with_bias in [true, false] {
                let flex = linear(
                    Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [rows, inner]), &d),
                    Tensor::<Flex, 2>::from_data(TensorData::new(w.clone(), [inner, cols]), &d),
                    with_bias.then(|| {
                        Tensor::<Flex, 1>::from_data(TensorData::new(b.clone(), [cols]), &d)
                    }),
                );
                let nd = linear(
                    Tensor::<NdArray, 2>::from_data(
                        TensorData::new(x.clone(), [rows, inner]),
                        &nd_device,
                    ),
                    Tensor::<NdArray, 2>::from_data(
                        TensorData::new(w.clone(), [inner, cols]),
                        &nd_device,
                    ),
                    with_bias.then(|| {
                        Tensor::<NdArray, 1>::from_data(
                            TensorData::new(b.clone(), [cols]),
                            &nd_device,
                        )
                    }),
                );
                let worst = worst_relative(flex, nd);
                assert!(
                    worst < 1e-5,
                    "{rows}×{inner}×{cols} bias {with_bias}: {worst}"
                );
            }
        }
    }

    #[test]
    fn a_transposed_weight_view_serves_as_a_tied_head() {
        let d = Default::default();
        // Few rows (a dot product per element, with a tail past the last 16 lanes), then
        // gemm on column blocks.
        for (rows, inner, vocab) in [(1, 401, 5300), (2, 400, 5300), (12, 400, 5300)] {
            let (x, e) = (data(rows * inner, 4), data(vocab * inner, 5));
            let x = Tensor::<Flex, 2>::from_data(TensorData::new(x, [rows, inner]), &d);
            let embed = Tensor::<Flex, 2>::from_data(TensorData::new(e, [vocab, inner]), &d);
            let bias = Tensor::<Flex, 1>::from_data(TensorData::new(data(vocab, 6), [vocab]), &d);
            let ours = matmul(x.clone(), embed.clone().transpose());
            let want = x.clone().matmul(embed.clone().transpose());
            let worst = worst_relative(ours, want.clone());
            assert!(worst < 1e-5, "{rows}×{inner}: {worst}");
            let ours = linear(x, embed.transpose(), Some(bias.clone()));
            let worst = worst_relative(ours, want + bias.unsqueeze());
            assert!(worst < 1e-5, "{rows}×{inner} with bias: {worst}");
        }
    }
}
