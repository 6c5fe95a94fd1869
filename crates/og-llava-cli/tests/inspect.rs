//! `og-llava inspect vision`: the whole path (decode, preprocess, tower) equals transformers
//! (CLIPImageProcessor + CLIPVisionModel) on a photo, and works on every checkpoint layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use og_weights::Weights;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn inspect(model: &Path, image: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(["inspect", "vision", "--model"])
        .arg(model)
        .arg("--image")
        .arg(image)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn max_diff(a: &Weights, b: &Weights, name: &str) -> f32 {
    let (x, sx) = a.f32(name).unwrap();
    let (y, sy) = b.f32(name).unwrap();
    assert_eq!(sx, sy, "{name} shapes");
    x.iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

#[test]
fn features_of_a_photo_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vision.safetensors");
    let o = inspect(
        &root().join("vision/clip_vision_tiny"),
        &root().join("images/chelsea.webp"),
        &out,
        &["--device", "ndarray"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = Weights::open(&out).unwrap();
    let theirs = Weights::open(root().join("vision/clip_vision_tiny_chelsea.safetensors")).unwrap();
    assert!(max_diff(&ours, &theirs, "pixel_values") < 1e-5);
    let d = max_diff(&ours, &theirs, "features");
    assert!(d < 1e-4, "features differ by {d}");
}

#[test]
fn every_layout_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.safetensors");
    let image = root().join("images/rocket.jpg");
    for (model, extra, shape) in [
        ("clip_tiny", vec![], vec![1, 25, 32]),
        ("llava_tiny", vec!["--pad"], vec![1, 25, 32]),
        (
            "clip_vision_tiny",
            vec!["--cls", "--select-layer", "-1"],
            vec![1, 26, 32],
        ),
    ] {
        let o = inspect(&root().join("vision").join(model), &image, &out, &extra);
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let w = Weights::open(&out).unwrap();
        assert_eq!(w.shape("features").unwrap(), shape.as_slice(), "{model}");
        assert_eq!(w.shape("pixel_values").unwrap(), &[1, 3, 30, 30]);
    }
    // Clear errors: a directory without config.json, a missing image, a layer out of range.
    let o = inspect(dir.path(), &image, &out, &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no config.json"));
    let o = inspect(
        &root().join("vision/clip_tiny"),
        &dir.path().join("nope.png"),
        &out,
        &[],
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("nope.png"));
    let o = inspect(
        &root().join("vision/clip_tiny"),
        &image,
        &out,
        &["--select-layer", "-9"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("select_layer -9"),
        "{err}"
    );
}
