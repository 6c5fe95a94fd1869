//! Materialising a permuted view, a run of contiguous elements at a time.
//!
//! burn-flex copies a non-contiguous view element by element through a generic strided
//! iterator. Views made by swapping outer axes (windows cut out of a feature map, heads moved
//! in front of tokens) keep their innermost axis contiguous, so the copy is a sequence of
//! `memcpy`s of whole rows, here split over rayon's threads.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex::{SharedMut, from_flex, to_flex_view, written};

/// Rows per parallel task (at least this many elements: scheduling stays noise).
const TASK_ELEMENTS: usize = 64 * 1024;

/// `x` with a contiguous row-major layout: on Flex in f32 a view whose innermost axis has
/// stride 1 is copied row by row; anything else is returned as is (burn copies it when an op
/// needs to).
pub fn contiguous<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match to_flex_view(x) {
        Ok(t) if t.layout().contiguous_offsets().is_some() => from_flex(t),
        Ok(t) => match copy_rows(&t) {
            Some(c) => from_flex(c),
            None => from_flex(t),
        },
        Err(x) => x,
    }
}

fn copy_rows(t: &FlexTensor) -> Option<FlexTensor> {
    let layout = t.layout();
    let shape: Vec<usize> = layout.shape().to_vec();
    let strides: Vec<isize> = layout.strides().to_vec();
    let d = shape.len();
    if d < 2 || strides[d - 1] != 1 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    let src = t.storage::<f32>();
    let start = layout.start_offset();
    // SAFETY: the tasks below copy every row of the view.
    Some(unsafe {
        written(shape.clone().into(), |dst| {
            copy_rows_into(dst, src, start, &shape, &strides)
        })
    })
}

/// Copies each row of a view (`shape`, `strides`, its first element at `start` in `src`; the
/// innermost axis contiguous) to its place in a contiguous output at `dst`.
fn copy_rows_into(dst: SharedMut, src: &[f32], start: usize, shape: &[usize], strides: &[isize]) {
    let d = shape.len();
    let run = shape[d - 1];
    let rows: usize = shape[..d - 1].iter().product();
    if rows == 0 || run == 0 {
        return;
    }
    let per_task = TASK_ELEMENTS.div_ceil(run).max(1);
    (0..rows.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let first = task * per_task;
            for row in first..(first + per_task).min(rows) {
                // The source offset of `row`: its index over the outer axes, times their strides.
                let (mut rest, mut offset) = (row, start);
                for axis in (0..d - 1).rev() {
                    offset += (rest % shape[axis]) * strides[axis] as usize;
                    rest /= shape[axis];
                }
                // SAFETY: the layout places this row's `run` elements at `offset..offset + run`
                // inside the storage; the output row `row` is written by this task only.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr().add(offset),
                        dst.add(row * run),
                        run,
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Tensor, TensorData};

    use super::contiguous;

    #[test]
    fn windows_of_a_map_copy_as_burn_copies_them() {
        let (b, h, w, c, win) = (2, 6, 9, 5, 3);
        let data: Vec<f32> = (0..b * h * w * c).map(|i| i as f32).collect();
        let windows = |x: Tensor<Flex, 4>| {
            x.reshape([b * h / win, win, w / win, win * c])
                .swap_dims(1, 2)
        };
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(data.clone(), [b, h, w, c]),
            &Default::default(),
        );
        let ours = contiguous(windows(x.clone()));
        let burns = windows(x).reshape([b * h * w / (win * win), win, win, c]);
        assert_eq!(ours.dims(), [b * h / win, w / win, win, win * c]);
        assert_eq!(
            ours.reshape([b * h * w / (win * win), win, win, c])
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            burns.into_data().to_vec::<f32>().unwrap()
        );
        // A transposed matrix (innermost stride ≠ 1) and other backends come back as they were.
        let m = Tensor::<Flex, 2>::from_data([[1.0f32, 2.0], [3.0, 4.0]], &Default::default());
        let t = contiguous(m.transpose());
        assert_eq!(
            t.into_data().to_vec::<f32>().unwrap(),
            vec![1.0, 3.0, 2.0, 4.0]
        );
        let n = Tensor::<NdArray, 2>::from_data([[1.0f32, 2.0], [3.0, 4.0]], &Default::default());
        assert_eq!(
            contiguous(n.clone().swap_dims(0, 1)).into_data(),
            n.swap_dims(0, 1).into_data()
        );
    }
}
