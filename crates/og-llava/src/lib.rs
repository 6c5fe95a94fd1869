//! OG-LLaVA: Object-Guided Visual Tokens (Nulli et al.) in Rust.
//!
//! This facade composes the crates of the workspace — [`og_vision`] (images, `Frame`, CLIP),
//! [`og_segment`] (masks), [`og_fusion`] (the OG-Fusion connector), [`og_llm`] (Llama, LoRA,
//! tokenizer) into [`OgLlava`] — and owns run-time backend selection ([`backend`]).

pub mod backend;
mod checkpoint;

pub use checkpoint::{BaseModel, checkpoint_base};
mod model;
mod open;

pub use model::{
    ImageInput, ImageSettings, ModelError, ORIGINAL_IMAGE_TOKEN, OgLlava, OgLlavaInput, Prepared,
};
pub use og_fusion;
pub use og_llm;
pub use og_segment;
pub use og_vision;
pub use open::{ExternalParts, Layout, ModelPart};

pub use backend::{
    BackendError, BackendTask, DeviceSpec, MultiDeviceTask, Precision, compiled_backends, dispatch,
    dispatch_many,
};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use og_fusion::{OgFusionConfig, Selection};

/// A connector forward at a given size on any backend, with deterministic weights and features:
/// proves a backend works end to end and measures it (`og-llava device-check`).
#[derive(Debug, Clone)]
pub struct ConnectorProbe {
    /// Patch grid side (24 for ViT-L/14@336).
    pub grid: usize,
    /// F, vision width.
    pub vision_hidden_size: usize,
    /// D, LLM width.
    pub text_hidden_size: usize,
    /// Timed repetitions after one warm-up.
    pub iterations: usize,
}

/// What [`ConnectorProbe`] measured.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub backend: String,
    /// Shape of the OGVT produced: [batch, T, D].
    pub shape: [usize; 3],
    /// Mean of the output (finite on a working backend; equal across backends up to rounding,
    /// since weights and features come from a host-side generator).
    pub mean: f32,
    /// Median wall time of one forward, milliseconds.
    pub median_ms: f64,
}

/// `n` values in [−scale/2, scale/2) from a xorshift stream on the host, continuing from
/// `seed`: tensors built from them are the same on every backend, so results compare across
/// backends.
pub fn host_values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

impl BackendTask for ConnectorProbe {
    type Output = ProbeReport;

    fn run<B: Backend>(self, device: B::Device) -> ProbeReport {
        let (f, d) = (self.vision_hidden_size, self.text_hidden_size);
        let mut model = OgFusionConfig::new(f, d).init::<B>(&device);
        // Weights and features from a host-side generator: every backend computes the same
        // function, so the printed means are comparable across backends.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut host = |shape: Vec<usize>, scale: f32| {
            let n: usize = shape.iter().product();
            TensorData::new(host_values(&mut seed, n, scale), shape)
        };
        model.linear_1.weight =
            Param::from_data(host(vec![f, d], 2.0 / (f as f32).sqrt()), &device);
        model.linear_2.weight =
            Param::from_data(host(vec![d, d], 2.0 / (d as f32).sqrt()), &device);
        model.linear_1.bias = Some(Param::from_data(host(vec![d], 0.1), &device));
        model.linear_2.bias = Some(Param::from_data(host(vec![d], 0.1), &device));
        let v = self.grid * self.grid;
        let features = Tensor::<B, 3>::from_data(host(vec![1, v, f], 2.0), &device);
        // Two overlapping "objects" covering the left and right halves plus a shared column.
        let g = self.grid;
        let left: Vec<u32> = (0..v as u32)
            .filter(|i| (*i as usize % g) <= g / 2)
            .collect();
        let right: Vec<u32> = (0..v as u32)
            .filter(|i| (*i as usize % g) >= g / 2)
            .collect();
        let selection = Selection {
            grid: (g, g),
            groups: vec![
                og_fusion::Group {
                    source: og_fusion::GroupSource::Mask(0),
                    indices: left,
                },
                og_fusion::Group {
                    source: og_fusion::GroupSource::Mask(1),
                    indices: right,
                },
            ],
            per_mask: Vec::new(),
        };
        let run = || {
            let out = model
                .forward(features.clone(), std::slice::from_ref(&selection))
                .expect("probe shapes are consistent");
            let shape = out.tokens.dims();
            let mean: f32 = out.tokens.mean().into_scalar().elem();
            (shape, mean)
        };
        let (shape, mean) = run();
        let mut times = Vec::with_capacity(self.iterations);
        for _ in 0..self.iterations.max(1) {
            let t = std::time::Instant::now();
            run();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        ProbeReport {
            backend: B::name(&device),
            shape,
            mean,
            median_ms: times[times.len() / 2],
        }
    }
}
