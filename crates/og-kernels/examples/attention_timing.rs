//! Times the fused multi-head attention on Flex at a given shape.
//!
//! `cargo run --release -p og-kernels --example attention_timing -- [tokens] [heads] [head_dim] [batch] [reps]`
//! (defaults: SAM 2 Hiera-L's global attention, 4096 tokens, 8 heads of 72, batch 1).

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};

fn main() {
    og_kernels::in_thread_pool(measure);
}

fn measure() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (tokens, heads, hd, batch, reps) =
        (arg(0, 4096), arg(1, 8), arg(2, 72), arg(3, 1), arg(4, 5));
    let device = Default::default();
    let make = || {
        Tensor::<Flex, 2>::random(
            [batch * tokens, heads * hd],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let (q, k, v) = (make(), make(), make());
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        let out = og_kernels::multi_head_attention(q.clone(), k.clone(), v.clone(), batch, heads);
        let _ = out.into_data();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let flops = 4.0 * (batch * tokens * tokens * hd * heads) as f64;
    println!(
        "attention {batch} × {tokens} tokens × {heads} heads × {hd}: best {:.1} ms ({:.1} GFLOP/s)",
        best * 1e3,
        flops / best / 1e9
    );
}
