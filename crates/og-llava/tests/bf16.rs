//! The composed model in bf16 (Flex, the CPU backend with bf16 arithmetic) against
//! transformers' f32 logits: weights load as bf16, and the logits follow f32 to bf16's
//! resolution. Its own test process: a device's dtype is chosen once per process.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};
use og_llava::{OgLlava, OgLlavaInput, Precision};
use og_weights::Weights;

type B = Flex<f32>;

#[test]
fn bf16_logits_follow_transformers_f32() {
    let device = Default::default();
    assert_eq!(
        Precision::Bf16
            .apply::<B>(std::slice::from_ref(&device))
            .unwrap(),
        DType::BF16
    );
    // Chosen once: asking this device for f32 now is an error, asking for bf16 again is not.
    assert!(
        Precision::F32
            .apply::<B>(std::slice::from_ref(&device))
            .is_err()
    );
    assert!(
        Precision::Bf16
            .apply::<B>(std::slice::from_ref(&device))
            .is_ok()
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let model = OgLlava::<B>::load_llava_hf(root.join("vision/llava_tiny"), None, &device).unwrap();
    assert_eq!(
        model.llm.model.embed_tokens.weight.val().dtype(),
        DType::BF16
    );
    let io = Weights::open(root.join("llava/llava_tiny_io.safetensors")).unwrap();
    let (ids, shape) = io.i64("input_ids").unwrap();
    let (mask, _) = io.i64("attention_mask").unwrap();
    let t = shape[1];
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let (want, _) = io.f32("logits").unwrap();
    let mut worst = 0.0f32;
    let mut scale = 0.0f32;
    for b in 0..2 {
        let n = mask[b * t..(b + 1) * t].iter().filter(|&&m| m == 1).count();
        let input = OgLlavaInput {
            token_ids: ids[b * t..b * t + n].iter().map(|&x| x as u32).collect(),
            images: vec![og_llava::ImageInput {
                pixel_values: pv.clone().slice(b..b + 1),
                selection: None,
            }],
        };
        let (logits, _) = model.forward(std::slice::from_ref(&input)).unwrap();
        assert_eq!(logits.dtype(), DType::BF16);
        let got: Vec<f32> = logits.into_data().convert::<f32>().to_vec().unwrap();
        for (k, g) in got.iter().enumerate() {
            let w = want[b * t * 64 + k];
            worst = worst.max((g - w).abs());
            scale = scale.max(w.abs());
        }
    }
    eprintln!("bf16 vs f32 logits: max |diff| {worst}, max |logit| {scale}");
    assert!(worst > 0.0, "the bf16 run computed in f32");
    assert!(
        worst < 0.05 * scale,
        "bf16 logits differ by {worst} (max |logit| {scale})"
    );
}
