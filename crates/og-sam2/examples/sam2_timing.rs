//! Times SAM 2 on random weights: the image encoder (Hiera + neck + the decoder's high-res
//! projections) at a released shape, or the whole automatic mask generator on a photo.
//! Prints one JSON line; `scripts/compare_sam2.py` runs it beside PyTorch.
//!
//! Usage: sam2_timing VARIANT REPEATS BACKEND MODE [POINTS_PER_SIDE] [IMAGE]
//!   VARIANT hiera_tiny|hiera_small|hiera_base_plus|hiera_large, BACKEND flex|ndarray,
//!   MODE encoder|amg (amg: every candidate mask kept, thresholds 0, no NMS).

use std::time::Instant;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use og_sam2::{AmgConfig, Sam2Config};

// The og-llava binary's allocator: SAM 2 allocates large short-lived activations, which mimalloc
// reuses where the system allocator maps and faults in fresh pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn time<B: Backend>(
    variant: &str,
    repeats: usize,
    mode: &str,
    points: usize,
    image: &str,
) -> Vec<f64> {
    let device = Default::default();
    let config = Sam2Config::released(variant).expect("a released variant");
    let model = config.init::<B>(&device).expect("a valid config");
    let [h, w] = model.image_size();
    let rgb = image::open(image).expect("an image").to_rgb8();
    let (iw, ih) = (rgb.width() as usize, rgb.height() as usize);
    let amg = AmgConfig {
        points_per_side: points,
        pred_iou_thresh: 0.0,
        stability_score_thresh: 0.0,
        box_nms_thresh: 1.0,
        ..AmgConfig::default()
    };
    let run = || match mode {
        "encoder" => {
            let x = Tensor::<B, 4>::random([1, 3, h, w], Distribution::Default, &device);
            let e = model.image_embeddings(x).expect("encodes");
            let _ = e.embedding.into_data();
            0
        }
        _ => amg
            .generate(&model, rgb.as_raw(), iw, ih)
            .expect("generates")
            .len(),
    };
    run();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let variant = a.get(1).map_or("hiera_large", String::as_str);
    let repeats: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let backend = a.get(3).map_or("flex", String::as_str);
    let mode = a.get(4).map_or("encoder", String::as_str);
    let points: usize = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(16);
    let image = a
        .get(6)
        .map_or("fixtures/images/astronaut.webp", String::as_str);
    let times = og_kernels::in_thread_pool(|| match backend {
        "ndarray" => time::<NdArray<f32>>(variant, repeats, mode, points, image),
        _ => time::<Flex<f32>>(variant, repeats, mode, points, image),
    });
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "variant": variant, "backend": backend, "mode": mode, "points_per_side": points,
            "median_s": sorted[sorted.len() / 2], "times_s": times,
        })
    );
}
