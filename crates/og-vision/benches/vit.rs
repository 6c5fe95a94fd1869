//! The CLIP vision tower forward (X', layers up to −2) at the ViT-L/14@336 shape with random
//! weights (batch 1) and at the tiny shape, on the Flex CPU backend. `cargo bench -p og-vision`

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use og_vision::clip::ClipVisionConfig;

type B = Flex<f32>;

fn vit(c: &mut Criterion) {
    let device = Default::default();
    let mut g = c.benchmark_group("clip_vision_features");
    g.sample_size(10);
    for (name, cfg) in [
        ("tiny", ClipVisionConfig::tiny()),
        ("vit_l_14_336", ClipVisionConfig::vit_l_14_336()),
    ] {
        let tower = cfg.init::<B>(&device).unwrap();
        let s = cfg.image_size;
        let x = Tensor::<B, 4>::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        g.bench_function(name, |b| {
            b.iter(|| tower.features(x.clone()).unwrap().into_data())
        });
    }
    g.finish();
}

criterion_group!(benches, vit);
criterion_main!(benches);
