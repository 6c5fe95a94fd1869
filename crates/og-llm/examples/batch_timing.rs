//! Decode throughput of batched generation on the CPU: SmolLM2-135M's shape (random weights),
//! prompts of 32 tokens, 32 new tokens each, at several batch sizes.
//!
//! `cargo run --release -p og-llm --example batch_timing -- [flex|ndarray] [BATCH,BATCH,…]`
//! prints one JSON line per batch size: seconds for the whole batch and tokens per second.

use std::time::Instant;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use og_llm::{GenerationConfig, LlamaConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROMPT: usize = 32;
const NEW: usize = 32;

fn run<B: Backend>(batches: &[usize], backend: &str) {
    let device = B::Device::default();
    let model = LlamaConfig::smollm2_135m()
        .init::<B>(&device)
        .expect("valid config");
    let cfg = GenerationConfig {
        max_new_tokens: NEW,
        ..Default::default()
    };
    for &batch in batches {
        let ids: Vec<Vec<u32>> = (0..batch as u32)
            .map(|b| {
                (0..PROMPT as u32)
                    .map(|i| 3 + (i * 7 + b * 13) % 1000)
                    .collect()
            })
            .collect();
        let embeds = || {
            Tensor::cat(
                ids.iter()
                    .map(|p| model.embed(std::slice::from_ref(p)).unwrap())
                    .collect(),
                0,
            )
        };
        let positions = vec![(0..PROMPT as i64).collect::<Vec<_>>(); batch];
        let lengths = vec![PROMPT; batch];
        let go = || {
            model
                .generate_batch_from_embeds(embeds(), &positions, &lengths, &cfg, |_, _| {})
                .expect("generates")
        };
        go();
        let t = Instant::now();
        let out = go();
        let s = t.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(Vec::len).sum();
        println!(
            "{{\"backend\": \"{backend}\", \"batch\": {batch}, \"seconds\": {s:.3}, \"tokens_per_s\": {:.1}}}",
            tokens as f64 / s
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "flex".into());
    let batches: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,4,8,16".into())
        .split(',')
        .map(|b| b.parse().expect("batch sizes"))
        .collect();
    og_kernels::in_thread_pool(|| match backend.as_str() {
        "ndarray" => run::<burn::backend::NdArray<f32>>(&batches, &backend),
        _ => run::<burn::backend::Flex<f32>>(&batches, &backend),
    })
}
