//! CLIP vision tower equal to transformers on committed tiny checkpoints
//! (scripts/make_vision_fixtures.py): every hidden state, X' (layer −2, CLS dropped) and the
//! pooled output, within 1e-4, for CLIPVisionModel, CLIPModel and Llava layouts.

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use og_vision::VisionError;
use og_vision::clip::{ClipVisionConfig, ClipVisionTransformer};
use og_weights::{SaveTensor, Weights};

type B = NdArray<f32>;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vision")
}

fn max_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar().elem::<f32>()
}

fn check(name: &str) {
    check_dir(name, &fixtures().join(name));
}

/// The tower in `dir` gives the outputs transformers gave for fixture `name`, on NdArray and on
/// Flex (where og-kernels' fused paths run).
fn check_dir(name: &str, dir: &std::path::Path) {
    check_dir_on::<B>(name, dir);
    check_dir_on::<Flex<f32>>(name, dir);
}

fn check_dir_on<B: Backend>(name: &str, dir: &std::path::Path) {
    let device = Default::default();
    let model = ClipVisionTransformer::<B>::load_hf(dir, &device).unwrap();
    let io = Weights::open(fixtures().join(format!("{name}_io.safetensors"))).unwrap();
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let n = model.num_layers();
    let out = model.forward_hidden_states(pv.clone(), n).unwrap();
    assert_eq!(out.hidden_states.len(), n + 1);
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        let want: Tensor<B, 3> = io
            .tensor(&format!("hidden_states.{i}"), [2, 26, 32], &device)
            .unwrap();
        let d = max_diff(h, want);
        assert!(d < 1e-4, "{name}: hidden state {i} differs by {d}");
    }
    let want_features: Tensor<B, 3> = io.tensor("features", [2, 25, 32], &device).unwrap();
    let d = max_diff(model.features(pv.clone()).unwrap(), want_features.clone());
    assert!(d < 1e-4, "{name}: features differ by {d}");
    let want_pooled: Tensor<B, 2> = io.tensor("pooler_output", [2, 32], &device).unwrap();
    let d = max_diff(model.pooled(pv.clone()).unwrap(), want_pooled.clone());
    assert!(d < 1e-4, "{name}: pooled output differs by {d}");
    let (features, pooled) = model.features_and_pooled(pv).unwrap();
    let d = max_diff(features, want_features).max(max_diff(pooled, want_pooled));
    assert!(
        d < 1e-4,
        "{name}: one-pass features and pooled output differ by {d}"
    );
}

#[test]
fn clip_vision_model_matches_transformers() {
    check("clip_vision_tiny");
}

#[test]
fn clip_model_gelu_tower_matches_transformers() {
    check("clip_tiny");
}

#[test]
fn llava_vision_tower_matches_transformers() {
    check("llava_tiny");
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let device = Default::default();
    let src = Weights::open(fixtures().join("clip_vision_tiny")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("clip_vision_tiny/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let tensors = |skip: &str, reshape: &str| -> Vec<SaveTensor> {
        src.names()
            .into_iter()
            .filter(|n| *n != skip)
            .map(|n| {
                let (values, mut shape) = src.f32(n).unwrap();
                if n == reshape {
                    shape.reverse();
                }
                SaveTensor {
                    name: n.to_string(),
                    shape,
                    values,
                }
            })
            .collect()
    };
    let ckpt = dir.path().join("model.safetensors");
    og_weights::save_safetensors(&ckpt, &tensors("encoder.layers.1.mlp.fc2.bias", "")).unwrap();
    let e = ClipVisionTransformer::<B>::load_hf(dir.path(), &device).unwrap_err();
    assert!(
        e.to_string()
            .contains("missing tensor encoder.layers.1.mlp.fc2.bias"),
        "{e}"
    );
    og_weights::save_safetensors(&ckpt, &tensors("", "encoder.layers.0.mlp.fc1.weight")).unwrap();
    let e = ClipVisionTransformer::<B>::load_hf(dir.path(), &device).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("encoder.layers.0.mlp.fc1.weight has shape [32, 64], expected [64, 32]"),
        "{msg}"
    );
    // A tower that is not CLIP at all.
    og_weights::save_safetensors(
        &ckpt,
        &[SaveTensor {
            name: "x".into(),
            shape: vec![1],
            values: vec![0.0],
        }],
    )
    .unwrap();
    let e = ClipVisionTransformer::<B>::load_hf(dir.path(), &device).unwrap_err();
    assert!(matches!(e, VisionError::Config(_)), "{e}");
    // Wrong input size.
    let m = ClipVisionConfig::tiny().init::<B>(&device).unwrap();
    let e = m
        .features(Tensor::zeros([1, 3, 32, 32], &device))
        .unwrap_err();
    assert!(e.to_string().contains("[_, 3, 30, 30]"), "{e}");
}

/// The llava tower saved under the other prefixes users have (llava-hf on the hub, original
/// LLaVA) loads to the same model.
#[test]
fn llava_hub_and_original_layouts_load() {
    let device = Default::default();
    let src_dir = fixtures().join("llava_tiny");
    let src = Weights::open(&src_dir).unwrap();
    let io = Weights::open(fixtures().join("llava_tiny_io.safetensors")).unwrap();
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let want: Tensor<B, 3> = io.tensor("features", [2, 25, 32], &device).unwrap();
    for prefix in [
        "vision_tower.vision_model.",
        "model.vision_tower.vision_tower.vision_model.",
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src_dir.join("config.json"), dir.path().join("config.json")).unwrap();
        let tensors: Vec<SaveTensor> = src
            .names()
            .into_iter()
            .map(|n| {
                let (values, shape) = src.f32(n).unwrap();
                let name = match n.strip_prefix("vision_tower.") {
                    Some(rest) => format!("{prefix}{rest}"),
                    None => n.to_string(),
                };
                SaveTensor {
                    name,
                    shape,
                    values,
                }
            })
            .collect();
        og_weights::save_safetensors(dir.path().join("model.safetensors"), &tensors).unwrap();
        let m = ClipVisionTransformer::<B>::load_hf(dir.path(), &device).unwrap();
        let d = max_diff(m.features(pv.clone()).unwrap(), want.clone());
        assert!(d < 1e-4, "{prefix}: {d}");
    }
}

/// `save_pretrained` writes a CLIPVisionModel directory that loads back to transformers'
/// outputs (quick-GELU and GELU towers).
#[test]
fn save_pretrained_round_trips() {
    let device = Default::default();
    for name in ["clip_vision_tiny", "clip_tiny"] {
        let cfg = ClipVisionConfig::from_hf_dir(fixtures().join(name)).unwrap();
        let model = ClipVisionTransformer::<B>::load_hf(fixtures().join(name), &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save_pretrained(dir.path(), &cfg).unwrap();
        assert_eq!(ClipVisionConfig::from_hf_dir(dir.path()).unwrap(), cfg);
        check_dir(name, dir.path());
    }
}
