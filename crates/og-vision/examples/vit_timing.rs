//! Times the CLIP vision tower on the CPU for `scripts/compare_vit.py`.
//!
//! `cargo run --release -p og-vision --example vit_timing -- [l336|tiny] [REPEATS] [ndarray|flex]`
//! prints one JSON line: median seconds for X' (layers up to −2) and for all layers.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use og_vision::clip::ClipVisionConfig;

// The og-llava binary's allocator: every CPU op allocates its output, which mimalloc reuses
// where the system allocator maps and faults in fresh pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run<B: Backend>(cfg: &ClipVisionConfig, repeats: usize) -> (f64, f64) {
    let device = B::Device::default();
    let tower = cfg.init::<B>(&device).expect("valid config");
    let s = cfg.image_size;
    let x = Tensor::<B, 4>::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
    let time = |f: &dyn Fn()| {
        f();
        let mut t: Vec<f64> = (0..repeats)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let features = time(&|| {
        tower.features(x.clone()).unwrap().into_data();
    });
    let all = time(&|| {
        let out = tower
            .forward_hidden_states(x.clone(), tower.num_layers())
            .unwrap();
        out.hidden_states
            .into_iter()
            .next_back()
            .unwrap()
            .into_data();
    });
    (features, all)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "l336".into());
    let repeats: usize = args
        .next()
        .map(|s| s.parse().expect("REPEATS"))
        .unwrap_or(3);
    let backend = args.next().unwrap_or_else(|| "flex".into());
    let cfg = match which.as_str() {
        "tiny" => ClipVisionConfig::tiny(),
        _ => ClipVisionConfig::vit_l_14_336(),
    };
    let (features, all) = og_kernels::in_thread_pool(|| match backend.as_str() {
        "ndarray" => run::<burn::backend::NdArray<f32>>(&cfg, repeats),
        _ => run::<burn::backend::Flex<f32>>(&cfg, repeats),
    });
    println!(
        "{{\"model\": \"{which}\", \"backend\": \"{backend}\", \"features_s\": {features:.4}, \"all_layers_s\": {all:.4}}}"
    );
}
