//! Rotary position embedding (Su et al., RoFormer Eq. 34, in Llama's half-split layout) as one
//! pass over the heads.
//!
//! burn's formulation is five ops (two slices, a concatenation, two products and a sum), each
//! its own pass and allocation, and under autodiff five recorded ops whose backward passes copy
//! the halves back. Here one pass forward and, under autodiff on the CPU backends, one pass
//! backward ([`crate::tracked`]).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::flex::{from_flex, from_vec, to_flex, values};

/// Rows (one head of one token) per parallel task.
const ROWS_PER_TASK: usize = 256;

/// `x·cos + rotate_half(x)·sin` with `rotate_half([x1, x2]) = [−x2, x1]`, for tables whose
/// `sin` has the sign folded in (`[−sin, sin]`, as `og_llm::rope::cos_sin` builds them):
/// `x·cos + [x2, x1]·sin`.
///
/// # Shapes
/// `x`: `[batch, tokens, heads, head_dim]`; `cos`, `sin`: `[batch, tokens, 1, head_dim]`
/// (shared by the heads) or `[batch, tokens, heads, head_dim]`.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, t, h, d] = x.dims();
    let [cb, ct, ch, cd] = cos.dims();
    let fits = d % 2 == 0
        && [cb, ct, cd] == [b, t, d]
        && (ch == 1 || ch == h)
        && sin.dims() == cos.dims()
        && [&x, &cos, &sin].iter().all(|t| t.dtype() == DType::F32);
    if !fits {
        return unfused(x, cos, sin);
    }
    let x = match to_flex(x) {
        Ok(x) => {
            let shape = x.layout().shape().clone();
            let (cos, sin) = (host(cos), host(sin));
            let table = Table::new(&cos, &sin, [h, ch, d]);
            let out = rotate(values(&x), table, Direction::Forward);
            return from_flex(from_vec(out, shape));
        }
        Err(x) => x,
    };
    match crate::tracked::rope(x, cos, sin) {
        Ok(y) => y,
        Err((x, cos, sin)) => unfused(x, cos, sin),
    }
}

/// burn's ops.
pub(crate) fn unfused<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, t, h, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..t, 0..h, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..t, 0..h, d / 2..d]);
    let rotated = Tensor::cat(vec![x2, x1], 3);
    x * cos + rotated * sin
}

/// An f32 table's values, row-major (the caller checked the dtype).
pub(crate) fn host<B: Backend>(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("an f32 table")
}

/// The rows of the cos and sin tables and how they map to the rows of `x`.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    /// Heads per token in `x`.
    heads: usize,
    /// Heads per token in the tables: 1 (shared) or `heads`.
    table_heads: usize,
    head_dim: usize,
}

impl<'a> Table<'a> {
    /// Tables of `[tokens, table_heads, head_dim]` for `x` of `[tokens, heads, head_dim]`.
    pub(crate) fn new(
        cos: &'a [f32],
        sin: &'a [f32],
        [heads, table_heads, head_dim]: [usize; 3],
    ) -> Self {
        Self {
            cos,
            sin,
            heads,
            table_heads,
            head_dim,
        }
    }

    /// The table row of `x`'s row `row` (token `row / heads`, head `row % heads`).
    fn row(&self, row: usize) -> usize {
        let (token, head) = (row / self.heads, row % self.heads);
        token * self.table_heads + if self.table_heads == 1 { 0 } else { head }
    }
}

/// Which map [`rotate`] applies.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    /// `y = x·c + P(x)·s`, `P` swapping the two halves of a row.
    Forward,
    /// Its transpose, the gradient: `dx = dy·c + P(dy·s)`.
    Backward,
}

/// [`Direction`]'s map over the rows (`head_dim` values each) of `x`.
pub(crate) fn rotate(x: &[f32], table: Table<'_>, direction: Direction) -> Vec<f32> {
    let d = table.head_dim;
    let half = d / 2;
    let mut out = vec![0.0f32; x.len()];
    let task = |(task, (out, x)): (usize, (&mut [f32], &[f32]))| {
        for (r, (y, x)) in out.chunks_mut(d).zip(x.chunks(d)).enumerate() {
            let at = table.row(task * ROWS_PER_TASK + r) * d;
            let (c, s) = (&table.cos[at..at + d], &table.sin[at..at + d]);
            let (x1, x2) = x.split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            let (c1, c2) = c.split_at(half);
            let (s1, s2) = s.split_at(half);
            match direction {
                Direction::Forward => {
                    for j in 0..half {
                        y1[j] = x1[j] * c1[j] + x2[j] * s1[j];
                        y2[j] = x2[j] * c2[j] + x1[j] * s2[j];
                    }
                }
                Direction::Backward => {
                    for j in 0..half {
                        y1[j] = x1[j] * c1[j] + x2[j] * s2[j];
                        y2[j] = x2[j] * c2[j] + x1[j] * s1[j];
                    }
                }
            }
        }
    };
    let block = d * ROWS_PER_TASK;
    if x.len() <= block {
        // One task (a decoding step's few heads): no hand-off to the thread pool.
        task((0, (&mut out[..], x)));
    } else {
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(task);
    }
    out
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Tensor, TensorData};

    use super::{rope, unfused};

    fn random<B: Backend>(shape: [usize; 4], seed: u64) -> Tensor<B, 4> {
        let device = Default::default();
        B::seed(&device, seed);
        let t = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        // The same values on every backend.
        let data = t.into_data();
        Tensor::from_data(
            TensorData::new(data.to_vec::<f32>().unwrap(), shape),
            &device,
        )
    }

    fn worst(a: Tensor<impl Backend, 4>, b: Tensor<impl Backend, 4>) -> f32 {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn one_pass_equals_burns_ops_with_shared_and_per_head_tables() {
        // Few rows (one task on this thread) and many (split between threads).
        for ((b, t, h, d), table_heads) in [(2, 5, 3, 8), (2, 200, 3, 8)]
            .into_iter()
            .flat_map(|s| [(s, 1), (s, s.2)])
        {
            let shape = [b, t, table_heads, d];
            let x = random::<NdArray>([b, t, h, d], 1);
            let (cos, sin) = (random::<NdArray>(shape, 2), random::<NdArray>(shape, 3));
            let want = unfused(x.clone(), cos.clone(), sin.clone());
            let to = |y: &Tensor<NdArray, 4>| {
                Tensor::<Flex, 4>::from_data(y.to_data(), &Default::default())
            };
            let ours = rope(to(&x), to(&cos), to(&sin));
            assert!(worst(ours, want.clone()) <= 1e-6);
            // NdArray runs burn's ops.
            assert_eq!(worst(rope(x, cos, sin), want), 0.0);
        }
    }
}
