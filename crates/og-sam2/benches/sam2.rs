//! SAM 2 on the CPU (Flex): the image encoder of a Hiera-T-shaped model at 256 pixels, and the
//! automatic mask generator of the tiny fixture model on a photo. Paper-size timings against
//! PyTorch come from `scripts/compare_sam2.py` (`cargo xtask compare-sam2`).

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use og_sam2::{AmgConfig, Sam2Config, Sam2Model};

type B = Flex<f32>;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn encoder(c: &mut Criterion) {
    let device = Default::default();
    let mut config = Sam2Config::released("hiera_tiny").unwrap();
    // 256 pixels: a 64² patch grid, 16² embedding grid (windows of 8 and 4 still tile it).
    config.hiera.image_size = [256, 256];
    config.prompt.image_size = 256;
    let model = config.init::<B>(&device).unwrap();
    let x = Tensor::<B, 4>::random([1, 3, 256, 256], Distribution::Default, &device);
    c.bench_function("sam2 hiera_tiny encoder 256px", |b| {
        b.iter(|| {
            model
                .image_embeddings(x.clone())
                .unwrap()
                .embedding
                .into_data()
        })
    });
}

fn generator(c: &mut Criterion) {
    let device = Default::default();
    let model = Sam2Model::<B>::open(fixtures().join("sam2/original_t/model.pt"), &device).unwrap();
    let rgb = image::open(fixtures().join("images/chelsea.webp"))
        .unwrap()
        .to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let amg = AmgConfig {
        points_per_side: 8,
        pred_iou_thresh: 0.55,
        stability_score_thresh: 0.6,
        ..AmgConfig::default()
    };
    c.bench_function("sam2 tiny model generator 8x8 points", |b| {
        b.iter(|| amg.generate(&model, rgb.as_raw(), w, h).unwrap().len())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = encoder, generator
}
criterion_main!(benches);
