//! Helpers the og-sam2 integration tests share.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use og_weights::Weights;

/// The repository's `fixtures/` folder.
pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The 451×300 test photo as row-major RGB8, with its width and height.
pub fn photo() -> (Vec<u8>, usize, usize) {
    let img = image::open(fixtures().join("images/chelsea.webp"))
        .unwrap()
        .to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

/// `got` equals `want` within `tol` relative to `want`'s largest magnitude (at least 1).
pub fn close<B: Backend, const D: usize>(
    what: &str,
    got: Tensor<B, D>,
    want: Tensor<B, D>,
    tol: f32,
) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let scale = want
        .clone()
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>()
        .max(1.0);
    let d = (got - want).abs().max().into_scalar().elem::<f32>();
    assert!(d <= tol * scale, "{what}: differs by {d} (scale {scale})");
}

/// Tensor `name` of a fixture file, at the shape it was saved with.
pub fn tensor<B: Backend, const D: usize>(
    io: &Weights,
    name: &str,
    device: &B::Device,
) -> Tensor<B, D> {
    let shape = io
        .shape(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_vec();
    let want: [usize; D] = shape.try_into().unwrap();
    io.tensor(name, want, device).unwrap()
}
