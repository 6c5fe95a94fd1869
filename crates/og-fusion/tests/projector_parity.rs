//! The connector MLP loaded from a transformers Llava checkpoint equals transformers'
//! `multi_modal_projector` on the same features (fixture: scripts/make_vision_fixtures.py).

use burn::backend::NdArray;
use burn::tensor::Tensor;
use og_fusion::OgFusionConfig;
use og_weights::Weights;

type B = NdArray<f32>;

#[test]
fn llava_projector_matches_transformers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vision");
    let device = Default::default();
    let m = OgFusionConfig::new(32, 24)
        .init::<B>(&device)
        .load_safetensors(root.join("llava_tiny"))
        .unwrap();
    let io = Weights::open(root.join("llava_tiny_io.safetensors")).unwrap();
    let features: Tensor<B, 3> = io.tensor("features", [2, 25, 32], &device).unwrap();
    let want: Tensor<B, 3> = io.tensor("projector_out", [2, 25, 24], &device).unwrap();
    let d: f32 = (m.project(features) - want).abs().max().into_scalar();
    assert!(d < 1e-5, "projector differs by {d}");
}
