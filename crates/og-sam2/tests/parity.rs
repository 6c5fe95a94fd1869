//! SAM 2 equal to transformers' `Sam2Model` on committed tiny random checkpoints shaped like the
//! four Hiera variants, tiny, small, base-plus and large (scripts/make_sam2_fixtures.py): every
//! Hiera stage, the FPN levels, the image embeddings, the image position encoding, and for point,
//! box, point+box, point+mask and empty prompts the mask logits, IoU scores and object-score
//! logits, with multimask output and with single-mask output on both branches of the stability
//! selection — on NdArray and on Flex.

use burn::backend::{Flex, NdArray};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use og_sam2::{Points, Prompts, Sam2Error, Sam2Model};
use og_weights::Weights;

mod common;

use common::tensor;

fn fixtures() -> std::path::PathBuf {
    common::fixtures().join("sam2")
}

fn close<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    common::close(what, got, want, 1e-4);
}

fn prompts<B: Backend>(io: &Weights, case: &str, device: &B::Device) -> Prompts<B> {
    let has = |k: &str| io.contains(&format!("{case}.{k}"));
    Prompts {
        points: has("input_points").then(|| Points {
            coords: tensor(io, &format!("{case}.input_points"), device),
            labels: io
                .f32(&format!("{case}.input_labels"))
                .unwrap()
                .0
                .into_iter()
                .map(|l| l as i32)
                .collect(),
        }),
        boxes: has("input_boxes").then(|| tensor(io, &format!("{case}.input_boxes"), device)),
        masks: has("input_masks").then(|| tensor(io, &format!("{case}.input_masks"), device)),
    }
}

fn check<B: Backend>(name: &str) {
    let device = Default::default();
    let mut model = Sam2Model::<B>::open(fixtures().join(name), &device).unwrap();
    let io = Weights::open(fixtures().join(format!("{name}_io.safetensors"))).unwrap();
    let pixels: Tensor<B, 4> = tensor(&io, "pixel_values", &device);

    let stages = model.vision_encoder.backbone.forward(pixels.clone());
    for (i, s) in stages.iter().enumerate() {
        close(
            &format!("{name} stage {i}"),
            s.clone(),
            tensor(&io, &format!("stage.{i}"), &device),
        );
    }
    let levels = model.vision_encoder.neck.forward(stages);
    for (i, level) in levels.iter().take(3).enumerate() {
        let want = tensor(&io, &format!("fpn.{i}"), &device);
        close(&format!("{name} fpn {i}"), level.clone(), want);
    }
    let images = model.image_embeddings(pixels).unwrap();
    close(
        &format!("{name} embedding 0"),
        images.high_res[0].clone(),
        tensor(&io, "embedding.0", &device),
    );
    close(
        &format!("{name} embedding 1"),
        images.high_res[1].clone(),
        tensor(&io, "embedding.1", &device),
    );
    close(
        &format!("{name} embedding 2"),
        images.embedding.clone(),
        tensor(&io, "embedding.2", &device),
    );
    close(
        &format!("{name} image pe"),
        model.image_positional_embeddings(),
        tensor(&io, "image_pe", &device),
    );

    for case in ["points", "boxes", "points_boxes", "points_mask", "none"] {
        let p = prompts::<B>(&io, case, &device);
        for (mode, multimask, threshold) in [
            ("multi", true, 0.98),
            ("single0", false, 0.0),
            ("single2", false, 2.0),
        ] {
            model.mask_decoder.set_stability_threshold(threshold);
            let out = model.predict(&images, &p, multimask).unwrap();
            let key = format!("{case}.{mode}");
            close(
                &format!("{name} {key} masks"),
                out.masks,
                tensor(&io, &format!("{key}.masks"), &device),
            );
            close(
                &format!("{name} {key} iou"),
                out.iou_scores,
                tensor(&io, &format!("{key}.iou"), &device),
            );
            close(
                &format!("{name} {key} object"),
                out.object_score_logits,
                tensor(&io, &format!("{key}.object"), &device),
            );
        }
    }
}

#[test]
fn hiera_tiny_shape_equals_transformers() {
    check::<NdArray<f32>>("hiera_t");
    check::<Flex<f32>>("hiera_t");
}

#[test]
fn hiera_large_shape_equals_transformers() {
    check::<NdArray<f32>>("hiera_l");
    check::<Flex<f32>>("hiera_l");
}

#[test]
fn hiera_small_shape_equals_transformers() {
    check::<NdArray<f32>>("hiera_s");
    check::<Flex<f32>>("hiera_s");
}

#[test]
fn hiera_base_plus_shape_equals_transformers() {
    check::<NdArray<f32>>("hiera_b");
    check::<Flex<f32>>("hiera_b");
}

#[test]
fn bad_prompts_and_images_are_typed_errors() {
    type B = NdArray<f32>;
    let device = Default::default();
    let model = Sam2Model::<B>::open(fixtures().join("hiera_t"), &device).unwrap();
    let wrong = Tensor::<B, 4>::zeros([1, 3, 32, 64], &device);
    assert!(matches!(
        model.image_embeddings(wrong),
        Err(Sam2Error::Input(_))
    ));
    let images = model
        .image_embeddings(Tensor::zeros([1, 3, 64, 64], &device))
        .unwrap();
    let bad_label = Prompts {
        points: Some(Points {
            coords: Tensor::zeros([1, 1, 1, 2], &device),
            labels: vec![7],
        }),
        ..Default::default()
    };
    let e = model.predict(&images, &bad_label, true).unwrap_err();
    assert!(e.to_string().contains("point label 7"), "{e}");
    let wrong_batch = Prompts {
        boxes: Some(Tensor::zeros([2, 1, 4], &device)),
        ..Default::default()
    };
    assert!(matches!(
        model.predict(&images, &wrong_batch, true),
        Err(Sam2Error::Input(_))
    ));
    let wrong_mask = Prompts {
        masks: Some(Tensor::zeros([1, 1, 8, 8], &device)),
        ..Default::default()
    };
    assert!(matches!(
        model.predict(&images, &wrong_mask, true),
        Err(Sam2Error::Input(_))
    ));
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    type B = NdArray<f32>;
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("hiera_t");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let w = Weights::open(&src).unwrap();
    let names: Vec<String> = w
        .names()
        .into_iter()
        .filter(|n| *n != "mask_decoder.iou_token.weight")
        .map(String::from)
        .collect();
    let tensors: Vec<og_weights::SaveTensor> = names
        .iter()
        .map(|n| {
            let (values, shape) = w.f32(n).unwrap();
            og_weights::SaveTensor {
                name: n.clone(),
                shape,
                values,
            }
        })
        .collect();
    og_weights::save_safetensors(dir.path().join("model.safetensors"), &tensors).unwrap();
    let e = Sam2Model::<B>::open(dir.path(), &Default::default()).unwrap_err();
    assert!(
        e.to_string().contains("mask_decoder.iou_token.weight"),
        "{e}"
    );
}
