//! Φ (both operators) on 50 masks at 640x480, and the connector forward at paper size.
//! `cargo bench -p og-fusion`

use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use og_fusion::{OgFusionConfig, Phi, Selection, SelectionConfig, raster_strip_1d};
use og_segment::{Bitmap, MaskSet};
use og_vision::FrameConfig;

fn blobs(n: usize, h: usize, w: usize) -> Vec<Bitmap> {
    (0..n)
        .map(|k| {
            let (cy, cx) = ((k * 97) % h, (k * 131) % w);
            let (ry, rx) = (20 + (k * 13) % 120, 25 + (k * 29) % 160);
            Bitmap::from_fn(h, w, |y, x| {
                let (dy, dx) = (
                    (y as f64 - cy as f64) / ry as f64,
                    (x as f64 - cx as f64) / rx as f64,
                );
                dy * dy + dx * dx <= 1.0
            })
        })
        .collect()
}

fn phi(c: &mut Criterion) {
    let masks = blobs(50, 480, 640);
    let frame = FrameConfig::llava_1_5().frame(640, 480).unwrap();
    c.bench_function("phi/raster_strip_1d/50x640x480", |b| {
        b.iter(|| {
            masks
                .iter()
                .map(|m| raster_strip_1d(m, 576, 0.5).len())
                .sum::<usize>()
        })
    });
    c.bench_function("phi/patch_grid_2d/50x640x480", |b| {
        b.iter(|| {
            let p = Phi::default().prepare(&frame).unwrap();
            masks
                .iter()
                .map(|m| p.kept(m).unwrap().len())
                .sum::<usize>()
        })
    });
    let set = MaskSet::from_bitmaps(&masks).unwrap();
    c.bench_function("selection/from_rle/50x640x480", |b| {
        b.iter(|| {
            Selection::from_masks(&set, &frame, &SelectionConfig::default())
                .unwrap()
                .total_tokens()
        })
    });
}

fn connector(c: &mut Criterion) {
    type B = NdArray<f32>;
    let device = Default::default();
    let model = OgFusionConfig::new(1024, 3072).init::<B>(&device);
    let x = Tensor::<B, 3>::random([1, 576, 1024], Distribution::Normal(0.0, 1.0), &device);
    let masks = blobs(50, 480, 640);
    let frame = FrameConfig::llava_1_5().frame(640, 480).unwrap();
    let set = MaskSet::from_bitmaps(&masks[..12]).unwrap();
    let sel = Selection::from_masks(&set, &frame, &SelectionConfig::default()).unwrap();
    let mut g = c.benchmark_group("connector");
    g.sample_size(10);
    g.bench_function(
        format!("ndarray/F1024_D3072_T{}", sel.total_tokens()),
        |b| {
            b.iter(|| {
                model
                    .forward(x.clone(), std::slice::from_ref(&sel))
                    .unwrap()
                    .tokens
                    .into_data()
            })
        },
    );
    g.finish();
}

criterion_group!(benches, phi, connector);
criterion_main!(benches);
