//! Felzenszwalb segmentation of photos, two parameter sets each, one thread (scikit-image's
//! is single-threaded too). `scripts/compare_felzenszwalb.py` runs this and scikit-image on
//! the same images and prints the ratios.
//!
//! `cargo bench -p og-segment --bench felzenszwalb` segments the quarter-size fixture photos;
//! `OG_BENCH_IMAGES=DIR` segments every PNG/JPEG in DIR instead.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use og_segment::{FelzenszwalbConfig, felzenszwalb};

/// (name, scale, sigma, min_size): scikit-image's defaults and the CLI's.
pub const PARAMS: [(&str, f64, f64, usize); 2] = [
    ("skimage-default", 1.0, 0.8, 20),
    ("cli-default", 500.0, 0.8, 200),
];

fn images() -> Vec<(String, image::RgbImage)> {
    let dir = std::env::var_os("OG_BENCH_IMAGES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/felzenszwalb"),
        PathBuf::from,
    );
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_lowercase();
            (name.ends_with(".png") || name.ends_with(".jpg")) && !name.contains("_labels")
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, image::open(&p).unwrap().to_rgb8())
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("felzenszwalb");
    group.sample_size(10);
    for (name, image) in images() {
        let (w, h) = (image.width() as usize, image.height() as usize);
        for (params, scale, sigma, min_size) in PARAMS {
            let cfg = FelzenszwalbConfig {
                scale,
                sigma,
                min_size,
                ..Default::default()
            };
            group.bench_function(format!("{name}/{params}"), |b| {
                b.iter(|| felzenszwalb(image.as_raw(), w, h, &cfg).unwrap().count)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
