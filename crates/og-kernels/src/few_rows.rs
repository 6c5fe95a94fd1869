//! `x W (+ b)` for a handful of rows (a decode step, a batch of a few sequences): a product
//! bound by streaming `W` from memory, not by arithmetic. gemm's packed kernels are built for
//! the other case; here every core streams its own block of the weights' columns exactly once
//! and accumulates each row of the output in L1.
//!
//! Two layouts of `W` (`[in, out]`, any strides) are served: rows contiguous (burn's `Linear`
//! weight) as a sum of scaled weight rows, and columns contiguous (a tied embedding read as
//! the LM head) as one dot product per output element.

use rayon::prelude::*;

use crate::flex::SharedMut;

/// The most rows this path takes; more go to gemm.
pub(crate) const MAX_ROWS: usize = 8;
/// Column blocks per thread are multiples of this (whole AVX-512 registers).
const ALIGN: usize = 16;
/// Lanes of the dot product's accumulator (one AVX-512 register).
const LANES: usize = 16;

/// The weights: element `(k, c)` is `values[k · row_stride + c · col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Weights<'a> {
    pub(crate) values: &'a [f32],
    pub(crate) inner: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
}

impl Weights<'_> {
    /// Whether one of the two layouts this module reads is contiguous.
    pub(crate) fn supported(row_stride: usize, col_stride: usize) -> bool {
        col_stride == 1 || row_stride == 1
    }
}

/// Runs `$kernel` compiled for AVX-512, AVX2 + FMA or the baseline, as the CPU allows.
macro_rules! dispatch {
    ($kernel:ident($args:ident: $ty:ident)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn v4(args: $ty<'_>) {
                $kernel(args)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3(args: $ty<'_>) {
                $kernel(args)
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has the features `v4` is compiled for.
                unsafe { v4($args) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features `v3` is compiled for.
                unsafe { v3($args) }
            } else {
                $kernel($args)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        $kernel($args)
    }};
}

/// `x W (+ b)` into `out` (`rows × cols`, row-major, every element written).
///
/// # Safety
/// `out` must hold `rows × w.cols` elements and nothing else may access them during the call.
pub(crate) unsafe fn product(
    x: &[f32],
    rows: usize,
    w: Weights<'_>,
    bias: Option<&[f32]>,
    out: SharedMut,
) {
    debug_assert!(rows <= MAX_ROWS && x.len() == rows * w.inner);
    let threads = rayon::current_num_threads().max(1);
    if w.col_stride == 1 {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { row_bands(x, rows, w, bias, out, threads) }
    } else {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { column_blocks(x, w, bias, out, threads) }
    }
}

/// Rows of `W` contiguous: each thread streams a contiguous band of them into a partial
/// output of its own; the partials (`rows × cols` each) are then added onto the bias.
///
/// # Safety
/// As [`product`].
unsafe fn row_bands(
    x: &[f32],
    rows: usize,
    w: Weights<'_>,
    bias: Option<&[f32]>,
    out: SharedMut,
    threads: usize,
) {
    let band = w.inner.div_ceil(threads).max(1);
    let partials: Vec<Vec<f32>> = (0..w.inner)
        .step_by(band)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|k0| {
            let mut acc = vec![0.0f32; rows * w.cols];
            let args = Band {
                x,
                w,
                k0,
                k1: (k0 + band).min(w.inner),
                acc: &mut acc,
            };
            dispatch!(band_of_rows(args: Band));
            acc
        })
        .collect();
    for r in 0..rows {
        // SAFETY: row r of the output, this loop's only; initialised before it is borrowed.
        let dst = unsafe {
            let start = out.add(r * w.cols);
            match bias {
                Some(b) => std::ptr::copy_nonoverlapping(b.as_ptr(), start, w.cols),
                None => std::ptr::write_bytes(start, 0, w.cols),
            }
            std::slice::from_raw_parts_mut(start, w.cols)
        };
        for p in &partials {
            for (d, v) in dst.iter_mut().zip(&p[r * w.cols..][..w.cols]) {
                *d += v;
            }
        }
    }
}

/// Columns of `W` contiguous: each thread takes a block of output columns.
///
/// # Safety
/// As [`product`].
unsafe fn column_blocks(
    x: &[f32],
    w: Weights<'_>,
    bias: Option<&[f32]>,
    out: SharedMut,
    threads: usize,
) {
    let block = w
        .cols
        .div_ceil(threads)
        .next_multiple_of(ALIGN)
        .min(w.cols)
        .max(1);
    let run = |start: usize| {
        let args = Columns {
            x,
            w,
            bias,
            out,
            start,
            end: (start + block).min(w.cols),
        };
        dispatch!(columns_of_weights(args: Columns))
    };
    (0..w.cols)
        .step_by(block)
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(run);
}

/// One task of the row-major case: rows `k0..k1` of `W` into `acc` (`rows × cols`, as `x` is
/// `rows × inner`).
struct Band<'a> {
    x: &'a [f32],
    w: Weights<'a>,
    k0: usize,
    k1: usize,
    acc: &'a mut [f32],
}

/// Rows of `W` contiguous: `acc[r, :] += x[r, k] · W[k, :]` for `k` in the band, reading
/// each weight once, in memory order. Four rows of `W` are taken together, so each element
/// of `acc` is loaded and stored once per four weights and four streams are read at once.
#[inline(always)]
fn band_of_rows(a: Band<'_>) {
    let w = a.w;
    let row = |k: usize| &w.values[k * w.row_stride..][..w.cols];
    let mut k = a.k0;
    while k + 4 <= a.k1 {
        let (w0, w1, w2, w3) = (row(k), row(k + 1), row(k + 2), row(k + 3));
        for (x, acc) in
            a.x.chunks_exact(w.inner)
                .zip(a.acc.chunks_exact_mut(w.cols))
        {
            let s = &x[k..k + 4];
            for ((((a, &v0), &v1), &v2), &v3) in acc.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *a = s[3].mul_add(v3, s[2].mul_add(v2, s[1].mul_add(v1, s[0].mul_add(v0, *a))));
            }
        }
        k += 4;
    }
    for k in k..a.k1 {
        let wk = row(k);
        for (x, acc) in
            a.x.chunks_exact(w.inner)
                .zip(a.acc.chunks_exact_mut(w.cols))
        {
            let s = x[k];
            for (a, &v) in acc.iter_mut().zip(wk) {
                *a = s.mul_add(v, *a);
            }
        }
    }
}

/// One task of the column-major case: output columns `start..end` of every row.
#[derive(Clone, Copy)]
struct Columns<'a> {
    x: &'a [f32],
    w: Weights<'a>,
    bias: Option<&'a [f32]>,
    out: SharedMut,
    start: usize,
    end: usize,
}

/// Columns of `W` contiguous: each output element is the dot product of a row of `x` with a
/// column of `W`.
#[inline(always)]
fn columns_of_weights(a: Columns<'_>) {
    let w = a.w;
    for c in a.start..a.end {
        let column = &w.values[c * w.col_stride..][..w.inner];
        for (r, x) in a.x.chunks_exact(w.inner).enumerate() {
            let y = dot(x, column) + a.bias.map_or(0.0, |b| b[c]);
            // SAFETY: element (r, c) of the output, written by this task only.
            unsafe { *a.out.add(r * w.cols + c) = y };
        }
    }
}

/// `Σ a[i] · b[i]` in `LANES` independent partial sums (so the loop vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (a, b) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = a[l].mul_add(b[l], acc[l]);
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}
