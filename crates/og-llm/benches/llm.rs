//! Prefill (64 tokens) and one decode step (after 64 cached tokens) on the Flex CPU backend at
//! the SmolLM2-135M shape and the tiny shape; a training step (forward + backward to the input
//! embeddings) with and without LoRA adapters on every projection. `cargo bench -p og-llm`

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use og_llm::{KvCache, LlamaConfig, LlamaForCausalLM, LoraConfig};

type B = Flex<f32>;

fn positions(start: usize, n: usize) -> Vec<Vec<i64>> {
    vec![(start as i64..(start + n) as i64).collect()]
}

fn inference(c: &mut Criterion) {
    let device = Default::default();
    let mut g = c.benchmark_group("llm");
    g.sample_size(10);
    for (name, cfg) in [
        ("tiny", LlamaConfig::tiny()),
        ("smollm2_135m", LlamaConfig::smollm2_135m()),
    ] {
        let model = cfg.init::<B>(&device).unwrap();
        let prompt: Vec<u32> = (0..64).map(|i| 3 + i % 60).collect();
        g.bench_function(format!("{name}/prefill_64"), |b| {
            b.iter(|| {
                let x = model.embed(std::slice::from_ref(&prompt)).unwrap();
                model
                    .forward(x, &positions(0, 64), None, None)
                    .unwrap()
                    .into_data()
            })
        });
        let mut cache = KvCache::new(model.num_layers());
        model
            .forward(
                model.embed(std::slice::from_ref(&prompt)).unwrap(),
                &positions(0, 64),
                None,
                Some(&mut cache),
            )
            .unwrap();
        g.bench_function(format!("{name}/decode_after_64"), |b| {
            b.iter(|| {
                let mut c = cache.clone();
                let x = model.embed(&[vec![7]]).unwrap();
                model
                    .forward(x, &positions(64, 1), None, Some(&mut c))
                    .unwrap()
                    .into_data()
            })
        });
    }
    g.finish();
}

fn train_step<BB: burn::tensor::backend::AutodiffBackend>(
    model: &LlamaForCausalLM<BB>,
    x: &Tensor<BB, 3>,
) {
    let x = x.clone().require_grad();
    let logits = model
        .forward(x.clone(), &positions(0, 64), None, None)
        .unwrap();
    let grads = logits.mean().backward();
    let _ = x.grad(&grads);
}

fn lora_overhead(c: &mut Criterion) {
    type AB = Autodiff<B>;
    let device = Default::default();
    let cfg = LlamaConfig::smollm2_135m();
    let frozen = cfg
        .init::<AB>(&device)
        .unwrap()
        .with_lora(&LoraConfig {
            target_modules: vec![],
            ..LoraConfig::paper()
        })
        .unwrap();
    let lora = cfg
        .init::<AB>(&device)
        .unwrap()
        .with_lora(&LoraConfig {
            r: 64,
            alpha: 128.0,
            ..LoraConfig::paper()
        })
        .unwrap();
    let x = Tensor::<AB, 3>::random(
        [1, 64, cfg.hidden_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let mut g = c.benchmark_group("llm_train_step_smollm2_135m_64tok");
    g.sample_size(10);
    g.bench_function("frozen_no_lora", |b| b.iter(|| train_step(&frozen, &x)));
    g.bench_function("lora_r64_all_projections", |b| {
        b.iter(|| train_step(&lora, &x))
    });
    g.finish();
}

criterion_group!(benches, inference, lora_overhead);
criterion_main!(benches);
