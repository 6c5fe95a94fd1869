//! Per-op timings of one ViT-L layer's pieces on the CPU backends (profiling aid).
use std::time::Instant;

use burn::nn::{LayerNormConfig, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

fn t<F: Fn()>(name: &str, f: F) {
    f();
    let n = 5;
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<40} {:8.2} ms",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}

fn run<B: Backend>(label: &str) {
    println!("== {label}");
    let d = B::Device::default();
    let x3 = Tensor::<B, 3>::random([1, 577, 1024], Distribution::Normal(0.0, 1.0), &d);
    let fc1 = LinearConfig::new(1024, 4096).init::<B>(&d);
    let q = LinearConfig::new(1024, 1024).init::<B>(&d);
    let ln = LayerNormConfig::new(1024).init::<B>(&d);
    t("linear 1024->4096 on [1,577,1024]", || {
        fc1.forward(x3.clone()).into_data();
    });
    let x2 = x3.clone().reshape([577, 1024]);
    t("linear 1024->4096 on [577,1024]", || {
        fc1.forward(x2.clone()).into_data();
    });
    t("matmul [577,1024]x[1024,4096]", || {
        x2.clone().matmul(fc1.weight.val()).into_data();
    });
    t("linear 1024->1024 on [1,577,1024]", || {
        q.forward(x3.clone()).into_data();
    });
    let qh = Tensor::<B, 4>::random([1, 16, 577, 64], Distribution::Normal(0.0, 1.0), &d);
    t("scores q k^T [1,16,577,64]", || {
        qh.clone().matmul(qh.clone().swap_dims(2, 3)).into_data();
    });
    let s = qh.clone().matmul(qh.clone().swap_dims(2, 3));
    t("softmax [1,16,577,577]", || {
        softmax(s.clone(), 3).into_data();
    });
    t("probs v", || {
        s.clone().matmul(qh.clone()).into_data();
    });
    t("layernorm [1,577,1024]", || {
        ln.forward(x3.clone()).into_data();
    });
    let h = Tensor::<B, 3>::random([1, 577, 4096], Distribution::Normal(0.0, 1.0), &d);
    t("quick_gelu [1,577,4096]", || {
        (h.clone() * burn::tensor::activation::sigmoid(h.clone() * 1.702)).into_data();
    });
    t("split heads reshape+swap", || {
        x3.clone()
            .reshape([1, 577, 16, 64])
            .swap_dims(1, 2)
            .into_data();
    });
}

fn main() {
    og_kernels::in_thread_pool(|| {
        run::<burn::backend::Flex<f32>>("flex");
        run::<burn::backend::NdArray<f32>>("ndarray");
    });
}
