//! The connector forward at paper size (F=1024, D=3072, V=576) on each compiled CPU backend:
//! the measurement behind `backend::DEFAULT_DEVICE`. `cargo bench -p og-llava --bench backends`

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use og_fusion::{OgFusionConfig, Selection, Windows};

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let model = OgFusionConfig::new(1024, 3072).init::<B>(&device);
    let x = Tensor::<B, 3>::random([2, 576, 1024], Distribution::Normal(0.0, 1.0), &device);
    let sels = vec![
        Selection::from_windows((24, 24), Windows::Tiles { k: 10 }).unwrap(),
        Selection::full_grid((24, 24)),
    ];
    let mut g = c.benchmark_group("connector_batch2");
    g.sample_size(10);
    g.bench_function(name, |b| {
        b.iter(|| model.forward(x.clone(), &sels).unwrap().tokens.into_data())
    });
    g.finish();
}

fn backends(c: &mut Criterion) {
    #[cfg(feature = "ndarray")]
    bench_backend::<burn::backend::NdArray<f32>>(c, "ndarray");
    #[cfg(feature = "flex")]
    bench_backend::<burn::backend::Flex<f32>>(c, "flex");
    #[cfg(feature = "wgpu")]
    bench_backend::<burn::backend::Wgpu>(c, "wgpu");
}

criterion_group!(benches, backends);
criterion_main!(benches);
