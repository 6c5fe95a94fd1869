//! The original `sam2` package's checkpoint layout (`{"model": state_dict}` in a `.pt`) loads to
//! the model the package runs: on a tiny random SAM2Base (scripts/make_sam2_fixtures.py), the
//! SAM2Transforms pixels of a photo, the predictor's image features, and the low-resolution
//! masks and IoU of point and box prompts equal the package's.

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use og_sam2::{Points, Prompts, Sam2Model, preprocess};
use og_weights::Weights;

type B = NdArray<f32>;

mod common;

use common::{fixtures, photo};

fn close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>, tol: f32) {
    common::close(what, got, want, tol);
}

fn tensor<const D: usize>(io: &Weights, name: &str) -> Tensor<B, D> {
    common::tensor(io, name, &Default::default())
}

#[test]
fn original_checkpoint_runs_as_the_sam2_package() {
    let device = Default::default();
    let model = Sam2Model::<B>::open(fixtures().join("sam2/original_t/model.pt"), &device).unwrap();
    let io = Weights::open(fixtures().join("sam2/original_t_io.safetensors")).unwrap();
    let (rgb, w, h) = photo();
    let pixels = preprocess::pixel_values::<B>(&rgb, w, h, model.image_size(), &device).unwrap();
    close("pixels", pixels.clone(), tensor(&io, "pixel_values"), 1e-5);
    let images = model.image_embeddings(pixels).unwrap();
    close(
        "embedding 0",
        images.high_res[0].clone(),
        tensor(&io, "embedding.0"),
        1e-4,
    );
    close(
        "embedding 1",
        images.high_res[1].clone(),
        tensor(&io, "embedding.1"),
        1e-4,
    );
    close(
        "embedding 2",
        images.embedding.clone(),
        tensor(&io, "embedding.2"),
        1e-4,
    );

    // The package maps pixel coordinates into the model frame: x / w · S, y / h · S.
    let s = model.image_size()[0] as f32;
    let frame = |xy: &[f32]| -> Vec<f32> {
        xy.chunks(2)
            .flat_map(|p| [p[0] / w as f32 * s, p[1] / h as f32 * s])
            .collect()
    };
    let point = Prompts {
        points: Some(Points {
            coords: Tensor::from_data(
                TensorData::new(frame(&[120.0, 80.0, 300.0, 200.0]), [1, 1, 2, 2]),
                &device,
            ),
            labels: vec![1, 0],
        }),
        ..Default::default()
    };
    let boxed = Prompts {
        boxes: Some(Tensor::from_data(
            TensorData::new(frame(&[40.0, 30.0, 350.0, 260.0]), [1, 1, 4]),
            &device,
        )),
        ..Default::default()
    };
    for (name, prompts) in [("point", point), ("box", boxed)] {
        let out = model.predict(&images, &prompts, true).unwrap();
        let [_, _, k, mh, mw] = out.masks.dims();
        close(
            &format!("{name} masks"),
            out.masks.reshape([k, mh, mw]),
            tensor(&io, &format!("{name}.low_res")),
            1e-4,
        );
        close(
            &format!("{name} iou"),
            out.iou_scores.reshape([k]),
            tensor(&io, &format!("{name}.iou")),
            1e-4,
        );
    }
}

#[test]
fn unknown_original_checkpoints_are_named() {
    // Without a config.json beside it, a tiny Hiera matches none of the released models.
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("tiny.pt");
    std::fs::copy(fixtures().join("sam2/original_t/model.pt"), &pt).unwrap();
    let e = Sam2Model::<B>::open(&pt, &Default::default()).unwrap_err();
    assert!(
        e.to_string().contains("none of the released SAM 2 models"),
        "{e}"
    );
}
