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

use crate::flex::{SharedMut, convert_all, from_flex, to_flex_view, written};
use crate::math::exp_rows;

/// `softmax(q kᵀ / √d) v` per head, every query attending to every key of its batch entry.
///
/// # Shapes
/// `q`: `[batch · lq, heads · head_dim]` (row `b · lq + t`, head `j` in columns
/// `j · head_dim ..`), as a linear projection gives it; `k`, `v`: `[batch · lk, heads ·
/// head_dim]` (`lk` may differ from `lq`: cross-attention, pooled queries). Each may be a view
/// with contiguous rows, e.g. columns narrowed out of a fused `qkv` projection. Output:
/// `[batch · lq, heads · head_dim]`, ready for the output projection.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    batch: usize,
    heads: usize,
) -> Tensor<B, 2> {
    let [rows, width] = q.dims();
    let [rows_k, width_k] = k.dims();
    let shapes_fit = batch > 0
        && heads > 0
        && rows % batch == 0
        && rows_k % batch == 0
        && width % heads == 0
        && width_k == width
        && v.dims() == k.dims();
    if shapes_fit {
        match convert_all([q, k, v], to_flex_view) {
            Ok([q, k, v]) => {
                if let (Some(pq), Some(pk), Some(pv)) =
                    (part(&q, width), part(&k, width), part(&v, width))
                {
                    let shape = Shape {
                        batch,
                        heads,
                        lq: rows / batch,
                        lk: rows_k / batch,
                        width,
                    };
                    return from_flex(fused(pq, pk, pv, shape));
                }
                let [q, k, v] = [q, k, v].map(from_flex);
                return unfused(q, k, v, batch, heads);
            }
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
    let rows_k = k.dims()[0];
    let hd = width / heads;
    let split = |t: Tensor<B, 2>, n: usize| t.reshape([batch, n, heads, hd]).swap_dims(1, 2);
    let out = attention(
        split(q, rows / batch),
        split(k, rows_k / batch),
        split(v, rows_k / batch),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    out.swap_dims(1, 2).reshape([rows, width])
}

/// A 2-D f32 view whose rows are contiguous (a whole tensor, or columns narrowed out of a
/// packed projection such as a fused `qkv`) as rows of [`Part`].
fn part(t: &FlexTensor, width: usize) -> Option<Part<'_>> {
    let layout = t.layout();
    let strides = layout.strides();
    let rows = layout.shape()[0];
    let (stride, inner) = (strides[0], strides[1]);
    if t.dtype() != DType::F32 || inner != 1 || (rows > 1 && stride < width as isize) || stride < 0
    {
        return None;
    }
    Some(Part {
        data: t.storage::<f32>(),
        offset: layout.start_offset(),
        stride: stride as usize,
    })
}

/// Most query rows per task of the fused kernel when a head's scores exceed
/// [`BLOCKED_SCORES`] (queries are split into equal blocks).
const QUERY_BLOCK: usize = 256;

/// Scores per head (queries × keys) above which the queries are split into blocks.
const BLOCKED_SCORES: usize = 1 << 20;

/// Rows of one operand: element `(r, c)` at `data[offset + r · stride + c]`.
#[derive(Clone, Copy)]
struct Part<'a> {
    data: &'a [f32],
    offset: usize,
    stride: usize,
}

#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    heads: usize,
    lq: usize,
    lk: usize,
    width: usize,
}

fn fused(q: Part<'_>, k: Part<'_>, v: Part<'_>, s: Shape) -> FlexTensor {
    let (batch, lq, width) = (s.batch, s.lq, s.width);
    // SAFETY: the tasks below write every (query, head) slice of every row.
    unsafe {
        written([batch * lq, width].into(), |dst| {
            fused_into(dst, q, k, v, s)
        })
    }
}

fn fused_into(dst: SharedMut, q: Part<'_>, k: Part<'_>, v: Part<'_>, s: Shape) {
    let Shape {
        batch,
        heads,
        lq,
        lk,
        width,
    } = s;
    let hd = width / heads;
    let scale = (hd as f32).powf(-0.5);
    // Long attention (one image's global attention: few heads, thousands of queries) in
    // blocks of at most QUERY_BLOCK queries: a block's scores stay in cache between the two
    // products and the three passes of the softmax, the scratch is small (no fresh pages to
    // fault in), and the blocks give every thread work. Short attention keeps one block per
    // head (splitting it repacks the keys for nothing).
    let blocks = if lq * lk > BLOCKED_SCORES {
        lq.div_ceil(QUERY_BLOCK)
    } else {
        1
    };
    let block = lq.div_ceil(blocks).max(1);
    (0..batch * heads * blocks).into_par_iter().for_each_init(
        || (vec![0.0f32; block * lk], vec![0.0f32; block]),
        |(scores, inv_sums), task| {
            let (b, j, r) = (
                task / (heads * blocks),
                task / blocks % heads,
                task % blocks,
            );
            let row0 = r * block;
            let rows = block.min(lq.saturating_sub(row0));
            if rows == 0 {
                return;
            }
            let at = |p: Part<'_>, len: usize| p.offset + b * len * p.stride + j * hd;
            let (qo, ko, vo) = (at(q, lq) + row0 * q.stride, at(k, lk), at(v, lk));
            let out_offset = (b * lq + row0) * width + j * hd;
            let matrix = |p: Part<'_>, offset: usize| Strided {
                // SAFETY: the offset lies inside the operand's storage (its rows at its stride).
                ptr: unsafe { p.data.as_ptr().add(offset) },
                rs: p.stride as isize,
                cs: 1,
            };
            // SAFETY: every operand holds its rows at its stride; the head's block starts at
            // the computed offset and spans its rows and hd columns, inside the buffers. The
            // output rows of this (batch, head, query block) are written by this task only.
            unsafe {
                head_attention(
                    [rows, lk, hd],
                    [matrix(q, qo), matrix(k, ko), matrix(v, vo)],
                    scale,
                    (scores, inv_sums),
                    (dst.add(out_offset), width),
                    |_| {},
                );
            }
        },
    );
}

/// A matrix read through raw strides: element `(r, c)` at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

/// One head on one block of queries: `out = softmax(scale · q kᵀ, masked) v`, on this thread.
/// `q`: `[rows, hd]`; `k`, `v`: `[keys, hd]`; `mask` may overwrite scores (row-major
/// `[rows, keys]`) before the softmax; `out` receives `[rows, hd]` at row stride `out_rs`.
/// The softmax is normalised on the `hd` output columns, after the product with `v`.
///
/// # Safety
/// Each matrix's elements lie inside its allocation at its strides; `out` is valid for
/// `rows` rows of `hd` at `out_rs` and no other thread writes them.
pub(crate) unsafe fn head_attention(
    [rows, keys, hd]: [usize; 3],
    [q, k, v]: [Strided; 3],
    scale: f32,
    (scores, inv_sums): (&mut [f32], &mut [f32]),
    (out, out_rs): (*mut f32, usize),
    mask: impl FnOnce(&mut [f32]),
) {
    let scores = &mut scores[..rows * keys];
    let inv_sums = &mut inv_sums[..rows];
    let parallelism = gemm::Parallelism::None;
    // SAFETY: the caller's guarantees; `scores` holds rows × keys.
    unsafe {
        // scores = scale · q kᵀ   ([rows, hd] × [hd, keys])
        gemm::gemm(
            rows,
            keys,
            hd,
            scores.as_mut_ptr(),
            1,
            keys as isize,
            false,
            q.ptr,
            q.cs,
            q.rs,
            k.ptr,
            k.rs,
            k.cs,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    mask(scores);
    exp_rows(scores, keys, inv_sums);
    // SAFETY: as above; `out` holds rows × hd at `out_rs`.
    unsafe {
        // out = P v   ([rows, keys] × [keys, hd])
        gemm::gemm(
            rows,
            hd,
            keys,
            out,
            1,
            out_rs as isize,
            false,
            scores.as_ptr(),
            1,
            keys as isize,
            v.ptr,
            v.cs,
            v.rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        for (r, &inv) in inv_sums.iter().enumerate() {
            let row = std::slice::from_raw_parts_mut(out.add(r * out_rs), hd);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Distribution, Tensor, TensorData};

    use super::multi_head_attention;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

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
        let worst = max_diff(&ours, &reference);
        assert!(worst < 1e-5, "max |fused − burn| = {worst}");
    }

    #[test]
    fn packed_views_and_other_key_lengths_equal_burns_attention() {
        // q of 5 rows per entry against k, v of 11, all three narrowed out of packed tensors.
        let (batch, lq, lk, heads, hd) = (3, 5, 11, 2, 4);
        let width = heads * hd;
        let packed_q = random(batch * lq, 2 * width, 7);
        let packed_kv = random(batch * lk, 3 * width, 9);
        fn run<B: burn::tensor::backend::Backend>(
            pq: &[f32],
            pkv: &[f32],
            (batch, lq, lk, heads, width): (usize, usize, usize, usize, usize),
        ) -> Vec<f32> {
            let d = Default::default();
            let q = Tensor::<B, 2>::from_data(
                TensorData::new(pq.to_vec(), [batch * lq, 2 * width]),
                &d,
            );
            let kv = Tensor::<B, 2>::from_data(
                TensorData::new(pkv.to_vec(), [batch * lk, 3 * width]),
                &d,
            );
            let out = multi_head_attention(
                q.narrow(1, width, width),
                kv.clone().narrow(1, width, width),
                kv.narrow(1, 2 * width, width),
                batch,
                heads,
            );
            out.into_data().to_vec::<f32>().unwrap()
        }
        let shape = (batch, lq, lk, heads, width);
        let ours = run::<Flex>(&packed_q, &packed_kv, shape);
        let reference = run::<NdArray>(&packed_q, &packed_kv, shape);
        let worst = max_diff(&ours, &reference);
        assert_eq!(ours.len(), batch * lq * width);
        assert!(worst < 1e-5, "max |fused − burn| = {worst}");
    }

    #[test]
    fn long_attention_split_into_query_blocks_equals_burns_attention() {
        // 1100 × 1100 scores per head: over BLOCKED_SCORES, nine blocks (the last partial).
        let (batch, n, heads, hd) = (1, 1100, 2, 4);
        let (rows, width) = (batch * n, heads * hd);
        let data: Vec<Vec<f32>> = (0..3).map(|s| random(rows, width, s + 11)).collect();
        fn run<B: burn::tensor::backend::Backend>(
            d: &[Vec<f32>],
            rows: usize,
            width: usize,
        ) -> Vec<f32> {
            let t = |v: &Vec<f32>| {
                Tensor::<B, 2>::from_data(
                    TensorData::new(v.clone(), [rows, width]),
                    &Default::default(),
                )
            };
            multi_head_attention(t(&d[0]), t(&d[1]), t(&d[2]), 1, 2)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        }
        assert!(n * n > super::BLOCKED_SCORES);
        let ours = run::<Flex>(&data, rows, width);
        let reference = run::<NdArray>(&data, rows, width);
        let worst = max_diff(&ours, &reference);
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
