//! Causal grouped-query attention on row-major host buffers, forward with its probabilities
//! kept and backward: the arithmetic of the recorded attention operation ([`crate::tracked`]).
//!
//! burn's recorded formulation repeats every key/value head for the query heads that share it,
//! materialises masked scores, five softmax passes and a head merge, each with a backward pass
//! over `[batch, heads, tokens, keys]` tensors. Here each head is a task: gemm calls on the
//! head's own buffers (a query head reads its key/value head in place), the mask applied from
//! its description (causal offset, padded keys), and the softmax gradient in one pass.

use rayon::prelude::*;

use crate::causal::MASKED;
use crate::math::exp_rows;

/// Sizes of one attention call: `batch` sequences, `heads` query heads on `kv_heads`
/// key/value heads, `tokens` queries after `past` cached keys, `head_dim` wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tokens: usize,
    pub past: usize,
    pub head_dim: usize,
}

impl Dims {
    fn keys(&self) -> usize {
        self.past + self.tokens
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }
}

/// Row `r` of a sequence's queries sees key `j` when `j ≤ past + r` and `j` is not padding
/// (`padding`: that sequence's `[keys]`, true at padded keys).
fn masked(d: &Dims, padding: &[bool], r: usize, j: usize) -> bool {
    j > d.past + r || padding[j]
}

/// A read-only matrix on a slice: element `(r, c)` at `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// The row-major `[rows, cols]` matrix at the start of `data`.
    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// `[rows, cols]` with rows `row_stride` apart.
    fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let view = Self {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: 1,
        };
        view.check();
        view
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Every element lies inside `data` (what the gemm call's safety rests on).
    fn check(&self) {
        let last = (self.rows.max(1) - 1) * self.rs + (self.cols.max(1) - 1) * self.cs;
        assert!(
            self.rows == 0 || self.cols == 0 || last < self.data.len(),
            "matrix view outside its buffer"
        );
    }
}

/// `dst = (accumulate ? dst : 0) + beta · a b` on this thread; `dst` is row-major `[a.rows,
/// b.cols]`.
fn product(dst: &mut [f32], a: View<'_>, b: View<'_>, beta: f32, accumulate: bool) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(b.rows == k && dst.len() >= m * n, "product shapes");
    // SAFETY: both views were checked to lie inside their slices, `dst` holds m × n values
    // row-major, and the slices do not overlap (`dst` is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `softmax(q kᵀ / √d, masked) v` (Vaswani et al. Eq. 1) with GQA heads.
///
/// `q` `[batch, heads, tokens, head_dim]`, `k`, `v` `[batch, kv_heads, keys, head_dim]`,
/// `padding` `[batch, keys]`, all row-major. Returns the output token-major `[batch · tokens,
/// heads · head_dim]` and the probabilities `[batch, heads, tokens, keys]` (zero at masked keys;
/// a query whose keys are all masked averages all of them, as burn's masked softmax does).
pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    padding: &[bool],
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let (t, s, hd) = (d.tokens, d.keys(), d.head_dim);
    let mut probs = vec![0.0f32; d.batch * d.heads * t * s];
    let mut heads_out = vec![0.0f32; d.batch * d.heads * t * hd];
    probs
        .par_chunks_mut(t * s)
        .zip(heads_out.par_chunks_mut(t * hd))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; t],
            |inv_sums, (task, (p, out))| {
                let (i, h) = (task / d.heads, task % d.heads);
                let g = i * d.kv_heads + h / d.group();
                let qh = View::rows(&q[task * t * hd..], t, hd);
                let kg = View::rows(&k[g * s * hd..], s, hd);
                let vg = View::rows(&v[g * s * hd..], s, hd);
                product(p, qh, kg.t(), d.scale(), false);
                let pad = &padding[i * s..(i + 1) * s];
                for (r, row) in p.chunks_mut(s).enumerate() {
                    for (j, x) in row.iter_mut().enumerate() {
                        if masked(&d, pad, r, j) {
                            *x = MASKED;
                        }
                    }
                }
                exp_rows(p, s, inv_sums);
                for (row, inv) in p.chunks_mut(s).zip(inv_sums.iter()) {
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                product(out, View::rows(p, t, s), vg, 1.0, false);
            },
        );
    let width = d.heads * hd;
    let mut out = vec![0.0f32; d.batch * t * width];
    out.par_chunks_mut(width)
        .enumerate()
        .for_each(|(row, dst)| {
            let (i, r) = (row / t, row % t);
            for (h, cols) in dst.chunks_mut(hd).enumerate() {
                let at = ((i * d.heads + h) * t + r) * hd;
                cols.copy_from_slice(&heads_out[at..at + hd]);
            }
        });
    (out, probs)
}

/// What [`forward`] kept for the backward pass.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub probs: Vec<f32>,
    pub padding: Vec<bool>,
    pub dims: Dims,
}

/// Gradients `(dq, dk, dv)` in the inputs' row-major shapes from the output's `d_out`
/// (token-major, as [`forward`] returns it): `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d` (zero at masked scores, which are constants),
/// `dQ = dS K`, `dK = dSᵀ Q`, summed over the query heads that share a key/value head.
pub(crate) fn backward(saved: &Saved, d_out: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = saved.dims;
    let (t, s, hd, rep) = (d.tokens, d.keys(), d.head_dim, d.group());
    let width = d.heads * hd;
    let mut dq = vec![0.0f32; saved.q.len()];
    let mut dk = vec![0.0f32; saved.k.len()];
    let mut dv = vec![0.0f32; saved.v.len()];
    dq.par_chunks_mut(rep * t * hd)
        .zip(dk.par_chunks_mut(s * hd))
        .zip(dv.par_chunks_mut(s * hd))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; t * s],
            |ds, (g, ((dq, dk), dv))| {
                let i = g / d.kv_heads;
                let kg = View::rows(&saved.k[g * s * hd..], s, hd);
                let vg = View::rows(&saved.v[g * s * hd..], s, hd);
                let pad = &saved.padding[i * s..(i + 1) * s];
                for (j, dq) in dq.chunks_mut(t * hd).enumerate() {
                    let h = (g % d.kv_heads) * rep + j;
                    let head = i * d.heads + h;
                    let p = &saved.probs[head * t * s..(head + 1) * t * s];
                    let qh = View::rows(&saved.q[head * t * hd..], t, hd);
                    let doh = View::strided(&d_out[i * t * width + h * hd..], t, hd, width);
                    let pv = View::rows(p, t, s);
                    product(dv, pv.t(), doh, 1.0, j > 0);
                    product(ds, doh, vg.t(), 1.0, false);
                    score_grad(ds, p, pad, &d);
                    let dsv = View::rows(ds, t, s);
                    product(dq, dsv, kg, 1.0, false);
                    product(dk, dsv.t(), qh, 1.0, j > 0);
                }
            },
        );
    (dq, dk, dv)
}

/// `dP` → `dS` in place, one query row at a time.
fn score_grad(ds: &mut [f32], p: &[f32], padding: &[bool], d: &Dims) {
    let s = d.keys();
    let scale = d.scale();
    for (r, (dp, p)) in ds.chunks_mut(s).zip(p.chunks(s)).enumerate() {
        let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
        for (j, (x, &p)) in dp.iter_mut().zip(p).enumerate() {
            *x = if masked(d, padding, r, j) {
                0.0
            } else {
                p * (*x - dot) * scale
            };
        }
    }
}
