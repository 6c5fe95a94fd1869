//! Fused CPU kernels for the model's hot element-wise and attention paths.
//!
//! burn 0.21 fuses operations only on its CubeCL backends (CUDA, wgpu). On the CPU every tensor
//! op is its own pass over memory, and a few of ours are chains of such passes with costly
//! transcendentals (QuickGELU: three passes and a libm `exp` per element). Each function here
//! takes and returns ordinary `Tensor<B, D>`s and stays generic over the backend: when `B` is
//! burn's Flex backend and the tensors are contiguous f32, it runs one vectorised,
//! multi-threaded kernel on the tensor's memory; under `Autodiff<Flex>` too for tensors that
//! need no gradient (a frozen tower under training). Under autodiff on the CPU backends
//! (`Autodiff<NdArray<f32>>`, `Autodiff<Flex>`), causal attention, RoPE and the SwiGLU product
//! are each recorded as one operation with its own backward pass ([`tracked`]). For every
//! other backend, dtype or layout (CUDA, wgpu, NdArray, bf16, other autodiff tensors) it runs
//! exactly the burn ops the model would run without this crate.

mod attention;
mod causal;
mod causal_host;
mod few_rows;
mod flex;
mod layout;
mod linear;
mod math;
mod rope;
mod tracked;

use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;

pub use attention::multi_head_attention;
pub use causal::{CausalKeys, causal_attention};
pub use layout::contiguous;
pub use linear::{linear, linear_layer, matmul};
pub use rope::rope;

/// CLIP's QuickGELU activation, `x · σ(1.702 x)` (transformers' `quick_gelu`).
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match flex::unary::<B, D>(x, math::quick_gelu) {
        Ok(y) => y,
        Err(x) => x.clone() * sigmoid(x * 1.702),
    }
}

/// GELU with the exact erf (`nn.GELU()`, transformers' `gelu`), within 10⁻⁶ of burn's `gelu`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match flex::unary::<B, D>(x, math::gelu) {
        Ok(y) => y,
        Err(x) => burn::tensor::activation::gelu(x),
    }
}

/// Llama's SwiGLU product `silu(gate) · up` (both of one shape).
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    match flex::binary::<B, D>(gate, up, math::silu_mul) {
        Ok(y) => y,
        Err((gate, up)) => match tracked::silu_mul(gate, up) {
            Ok(y) => y,
            Err((gate, up)) => silu(gate) * up,
        },
    }
}

/// Runs `work` on a thread of its own rayon pool (one thread per core) and returns its result.
///
/// The parallel kernels started from a pool thread run on that thread too: the caller takes
/// part in the work instead of handing it to a pool thread and sleeping until woken, which on
/// a busy machine waits for a time slice. A decode step starts about 250 parallel sections,
/// so this is most of what separates its time from the weights' streaming time. Threads that
/// `work` spawns itself (data-parallel replicas, a server's request handlers) use rayon's
/// global pool as before, so none of them waits on a pool thread that is blocked.
pub fn in_thread_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    /// The main thread's stack on Linux: what `work` would have had without the pool.
    const STACK: usize = 8 << 20;
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("og-worker-{i}"))
        .stack_size(STACK)
        .build()
    {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

/// Whether `B`'s float tensors are Flex tensors, on which the fused kernels run for every f32
/// tensor (under `Autodiff<Flex>` they serve only tensors that need no gradient).
pub fn has_fused_kernels<B: Backend>() -> bool {
    flex::is_flex::<B>()
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::{Tensor, TensorData};

    use super::*;

    fn values(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * scale)
            .collect()
    }

    fn max_diff(a: Vec<f32>, b: Vec<f32>) -> f32 {
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn work_runs_on_a_pool_thread_and_threads_it_spawns_use_the_global_pool() {
        let (index, threads, spawned) = in_thread_pool(|| {
            let spawned = std::thread::spawn(rayon::current_thread_index)
                .join()
                .unwrap();
            (
                rayon::current_thread_index(),
                rayon::current_num_threads(),
                spawned,
            )
        });
        assert!(index.is_some(), "the work runs on a thread of the pool");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let want = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(cores);
        assert_eq!(threads, want);
        assert_eq!(
            spawned, None,
            "a thread spawned by the work is outside the pool"
        );
        // A kernel started from the pool thread gives the result it gives elsewhere.
        let x = || {
            Tensor::<Flex, 2>::from_data(
                TensorData::new(values(64, 0.01), [8, 8]),
                &Default::default(),
            )
        };
        let inside = in_thread_pool(|| quick_gelu(x()).into_data().to_vec::<f32>().unwrap());
        assert_eq!(inside, quick_gelu(x()).into_data().to_vec::<f32>().unwrap());
    }

    #[test]
    fn flex_kernels_equal_the_burn_ops_other_backends_run() {
        assert!(has_fused_kernels::<Flex>());
        assert!(!has_fused_kernels::<NdArray>());
        assert!(!has_fused_kernels::<Autodiff<Flex>>());
        let shape = [3, 41, 257];
        let n = shape.iter().product();
        let (g, u) = (values(n, 0.01), values(n, -0.003));
        let flex = |v: &Vec<f32>| {
            Tensor::<Flex, 3>::from_data(TensorData::new(v.clone(), shape), &Default::default())
        };
        let nd = |v: &Vec<f32>| {
            Tensor::<NdArray, 3>::from_data(TensorData::new(v.clone(), shape), &Default::default())
        };
        let vec = |d: TensorData| d.to_vec::<f32>().unwrap();
        let d = max_diff(
            vec(quick_gelu(flex(&g)).into_data()),
            vec(quick_gelu(nd(&g)).into_data()),
        );
        assert!(d < 1e-5, "quick_gelu: {d}");
        let d = max_diff(
            vec(silu_mul(flex(&g), flex(&u)).into_data()),
            vec(silu_mul(nd(&g), nd(&u)).into_data()),
        );
        assert!(d < 1e-5, "silu_mul: {d}");
        // Arguments from −10 to 10 cover erf's saturated tails and its steep middle.
        let wide = values(n, 0.01);
        let d = max_diff(
            vec(gelu(flex(&wide)).into_data()),
            vec(gelu(nd(&wide)).into_data()),
        );
        assert!(d < 2e-6, "gelu: {d}");
    }

    #[test]
    fn views_and_autodiff_tensors_take_burns_ops_and_keep_gradients() {
        type A = Autodiff<Flex>;
        let x = Tensor::<A, 2>::from_data([[0.5f32, -1.0], [2.0, 0.0]], &Default::default())
            .require_grad();
        // A transposed view is not contiguous: the fallback runs and the result still matches.
        let y = quick_gelu(x.clone().transpose());
        let grads = y.sum().backward();
        let g = x.grad(&grads).expect("gradient through the fallback");
        assert_eq!(g.dims(), [2, 2]);
        let view = Tensor::<Flex, 2>::from_data([[0.5f32, -1.0], [2.0, 0.0]], &Default::default())
            .transpose();
        let want = Tensor::<Flex, 2>::from_data([[0.5f32, 2.0], [-1.0, 0.0]], &Default::default());
        let d = max_diff(
            quick_gelu(view).into_data().to_vec().unwrap(),
            quick_gelu(want).into_data().to_vec().unwrap(),
        );
        assert!(d < 1e-6);
    }

    #[test]
    fn frozen_autodiff_flex_tensors_take_the_kernels_and_stay_untracked() {
        type A = Autodiff<Flex>;
        let shape = [96, 80];
        let n = shape[0] * shape[1];
        let (x, w) = (values(n, 0.01), values(80 * 700, 0.002));
        let ad = |v: &Vec<f32>, s: [usize; 2]| {
            Tensor::<A, 2>::from_data(TensorData::new(v.clone(), s), &Default::default())
        };
        let nd = |v: &Vec<f32>, s: [usize; 2]| {
            Tensor::<NdArray, 2>::from_data(TensorData::new(v.clone(), s), &Default::default())
        };
        let vec = |d: TensorData| d.to_vec::<f32>().unwrap();
        // A frozen layer on a frozen input: the Flex kernels, an untracked result.
        let ours = quick_gelu(linear(ad(&x, shape), ad(&w, [80, 700]), None));
        assert!(!tracked::is_tracked::<A, Flex, 2>(&ours));
        let want = quick_gelu(nd(&x, shape).matmul(nd(&w, [80, 700])));
        let d = max_diff(vec(ours.into_data()), vec(want.into_data()));
        assert!(d < 1e-5, "{d}");
        // An input that needs a gradient keeps burn's recorded ops and gets it.
        let input = ad(&x, shape).require_grad();
        let y = quick_gelu(linear(input.clone(), ad(&w, [80, 700]), None));
        assert!(tracked::is_tracked::<A, Flex, 2>(&y));
        let grads = y.sum().backward();
        assert_eq!(input.grad(&grads).expect("a gradient").dims(), shape);
    }
}
