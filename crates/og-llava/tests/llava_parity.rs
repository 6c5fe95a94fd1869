//! The no-mask path of the composed model equals transformers' LlavaForConditionalGeneration
//! (fixture: scripts/make_llava_fixtures.py): two prompts of different lengths, batched and
//! right-padded, logits within 1e-4 at every real position; the image placeholder may be one
//! token or the repeated run transformers writes.

use burn::backend::NdArray;
use burn::tensor::Tensor;
use og_llava::{OgLlava, OgLlavaInput};
use og_weights::Weights;

type B = NdArray<f32>;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[test]
fn no_mask_path_matches_transformers_llava() {
    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let io = Weights::open(root().join("llava/llava_tiny_io.safetensors")).unwrap();
    let (ids, shape) = io.i64("input_ids").unwrap();
    let (mask, _) = io.i64("attention_mask").unwrap();
    let t = shape[1];
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let want: Tensor<B, 3> = io.tensor("logits", [2, t, 64], &device).unwrap();
    let mut inputs = Vec::new();
    let mut lens = Vec::new();
    for b in 0..2 {
        let n = mask[b * t..(b + 1) * t].iter().filter(|&&m| m == 1).count();
        lens.push(n);
        inputs.push(OgLlavaInput {
            token_ids: ids[b * t..b * t + n].iter().map(|&x| x as u32).collect(),
            pixel_values: Some(pv.clone().slice(b..b + 1)),
            selection: None,
        });
    }
    let (logits, got_lens) = model.forward(&inputs).unwrap();
    assert_eq!(got_lens, lens);
    for (b, &n) in lens.iter().enumerate() {
        let d: f32 = (logits.clone().slice([b..b + 1, 0..n])
            - want.clone().slice([b..b + 1, 0..n]))
        .abs()
        .max()
        .into_scalar();
        assert!(d < 1e-4, "prompt {b}: logits differ by {d}");
    }
    // The placeholder written once expands to the same sequence.
    let once: Vec<u32> = {
        let full = &inputs[1].token_ids;
        let mut v: Vec<u32> = Vec::new();
        for &x in full {
            if !(x == model.image_token_id && v.last() == Some(&x)) {
                v.push(x);
            }
        }
        v
    };
    let single = OgLlavaInput {
        token_ids: once,
        ..inputs[1].clone()
    };
    let (l2, n2) = model.forward(std::slice::from_ref(&single)).unwrap();
    assert_eq!(n2[0], lens[1]);
    let d: f32 = (l2.slice([0..1, 0..lens[1]]) - logits.slice([1..2, 0..lens[1]]))
        .abs()
        .max()
        .into_scalar();
    assert!(d < 1e-4, "{d}");
    // A placeholder without an image is an error.
    let bad = OgLlavaInput::<B> {
        token_ids: vec![1, model.image_token_id, 5],
        pixel_values: None,
        selection: None,
    };
    assert!(model.forward(&[bad]).is_err());
}
