//! Unmasked multi-head self-attention read straight from the projections' token-major layout.
//!
//! The usual formulation reshapes q, k and v to `[batch, heads, tokens, head_dim]` (a strided
//! view), lets the attention op copy them into contiguous heads, and copies the result back
//! into token-major order for the output projection. Here each (batch, head) pair is one task:
//! two gemm calls with the heads' strides (`softmax(q kᵀ / √d) v`, Vaswani et al. Eq. 1) and a
//! vectorised softmax in between, writing the head's columns of the token-major output.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex::{SharedMut, convert_all, from_flex, to_flex, values};
use crate::math::softmax_rows;

/// `softmax(q kᵀ / √d) v` per head, every token attending to every token of its image.
///
/// # Shapes
/// `q`, `k`, `v`: `[batch · tokens, heads · head_dim]` (row `b · tokens + t`, head `j` in
/// columns `j · head_dim ..`), as a linear projection of `[batch · tokens, hidden]` gives them;
/// output: the same shape and layout, ready for the output projection.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    batch: usize,
    heads: usize,
) -> Tensor<B, 2> {
    let [rows, width] = q.dims();
    let shapes_fit = batch > 0
        && heads > 0
        && rows % batch == 0
        && width % heads == 0
        && k.dims() == q.dims()
        && v.dims() == q.dims();
    if shapes_fit {
        match convert_all([q, k, v], to_flex) {
            Ok([q, k, v]) => return from_flex(fused(&q, &k, &v, batch, heads)),
            Err([q, k, v]) => return unfused(q, k, v, batch, heads),
        }
    }
    unfused(q, k, v, batch, heads)
}

/// burn's attention op on `[batch, heads, tokens, head_dim]` views.
fn unfused<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    batch: usize,
    heads: usize,
) -> Tensor<B, 2> {
    let [rows, width] = q.dims();
    let (n, hd) = (rows / batch, width / heads);
    let split = |t: Tensor<B, 2>| t.reshape([batch, n, heads, hd]).swap_dims(1, 2);
    let out = attention(
        split(q),
        split(k),
        split(v),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    out.swap_dims(1, 2).reshape([rows, width])
}

fn fused(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, batch: usize, heads: usize) -> FlexTensor {
    let shape = q.layout().shape().clone();
    let (rows, width) = (shape[0], shape[1]);
    let (n, hd) = (rows / batch, width / heads);
    let (q, k, v) = (values(q), values(k), values(v));
    let mut out = FlexTensor::empty(shape, DType::F32);
    let dst = SharedMut(out.storage_mut::<f32>().as_mut_ptr());
    let scale = (hd as f32).powf(-0.5);
    let (row_stride, n_i, hd_i) = (width as isize, n as isize, 1isize);
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0.0f32; n * n],
        |scores, task| {
            let (b, j) = (task / heads, task % heads);
            let offset = b * n * width + j * hd;
            // SAFETY: q, k, v hold `rows × width` f32; the head's block starts at `offset` and
            // spans n rows of stride `width` and hd columns, inside the buffers. `scores` holds
            // n × n. The output block of this (batch, head) is written by this task only.
            unsafe {
                // scores = scale · q_h k_hᵀ   ([n, hd] × [hd, n])
                gemm::gemm(
                    n,
                    n,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    n_i,
                    false,
                    q.as_ptr().add(offset),
                    hd_i,
                    row_stride,
                    k.as_ptr().add(offset),
                    row_stride,
                    hd_i,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                softmax_rows(scores, n);
                // out_h = P v_h   ([n, n] × [n, hd])
                gemm::gemm(
                    n,
                    hd,
                    n,
                    dst.add(offset),
                    1,
                    row_stride,
                    false,
                    scores.as_ptr(),
                    1,
                    n_i,
                    v.as_ptr().add(offset),
                    1,
                    row_stride,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Distribution, Tensor, TensorData};

    use super::multi_head_attention;

    fn random(rows: usize, width: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * width)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn fused_attention_equals_burns_attention() {
        let (batch, n, heads, hd) = (2, 37, 3, 8);
        let (rows, width) = (batch * n, heads * hd);
        let data: Vec<Vec<f32>> = (0..3).map(|s| random(rows, width, s + 1)).collect();
        let flex = |d: &Vec<f32>| {
            Tensor::<Flex, 2>::from_data(
                TensorData::new(d.clone(), [rows, width]),
                &Default::default(),
            )
        };
        let nd = |d: &Vec<f32>| {
            Tensor::<NdArray, 2>::from_data(
                TensorData::new(d.clone(), [rows, width]),
                &Default::default(),
            )
        };
        let ours =
            multi_head_attention(flex(&data[0]), flex(&data[1]), flex(&data[2]), batch, heads);
        let reference =
            multi_head_attention(nd(&data[0]), nd(&data[1]), nd(&data[2]), batch, heads);
        let (ours, reference) = (
            ours.into_data().to_vec::<f32>().unwrap(),
            reference.into_data().to_vec::<f32>().unwrap(),
        );
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "max |fused − burn| = {worst}");
    }

    #[test]
    fn strided_inputs_take_burns_path() {
        let d = Default::default();
        let q = Tensor::<Flex, 2>::random([6, 8], Distribution::Normal(0.0, 1.0), &d);
        let t = q.clone().transpose(); // [8, 6]: not contiguous
        let out = multi_head_attention(t.clone(), t.clone(), t, 2, 2);
        assert_eq!(out.dims(), [8, 6]);
    }
}
