//! `og-llava tokens` end to end: TOKENS.json as documented, overlays, and clear errors that
//! leave no output behind.

use std::path::Path;
use std::process::Command;

use og_segment::{Bitmap, CountsFormat, MaskSet};
use serde_json::Value;

fn og() -> Command {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
}

/// A 168x112 image and three masks: a patch-aligned square, an empty mask, a single pixel.
fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let img = image::RgbImage::from_fn(168, 112, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    });
    let image_path = dir.join("img.png");
    img.save(&image_path).unwrap();
    // grid 12, patch 14 → 168 px encoder input; 168x112 pads to 168x168 with the image at
    // y = 28 = two patch rows. Mask 0 covers encoder patches rows 3..5, cols 2..4.
    let m0 = Bitmap::from_fn(112, 168, |y, x| {
        (14..42).contains(&y) && (28..56).contains(&x)
    });
    let m1 = Bitmap::new(112, 168);
    let m2 = Bitmap::from_fn(112, 168, |y, x| y == 100 && x == 160);
    let masks = MaskSet::from_bitmaps(&[m0, m1, m2]).unwrap();
    let masks_path = dir.join("masks.json");
    masks
        .write_coco_json(&masks_path, CountsFormat::Compressed)
        .unwrap();
    (image_path, masks_path)
}

#[test]
fn writes_documented_tokens_json_and_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let (image, masks_path) = setup(dir.path());
    let out = dir.path().join("tokens.json");
    let overlay = dir.path().join("overlay.png");
    let status = og()
        .args(["tokens", "--grid", "12", "--image"])
        .arg(&image)
        .arg("--masks")
        .arg(&masks_path)
        .arg("--out")
        .arg(&out)
        .arg("--overlay")
        .arg(&overlay)
        .arg("--compare")
        .status()
        .unwrap();
    assert!(status.success());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["grid"], 12);
    assert_eq!(v["phi"], "patch");
    assert_eq!(v["alpha"], 0.5);
    let masks = v["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 3);
    let kept0: Vec<u64> = masks[0]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(kept0, vec![3 * 12 + 2, 3 * 12 + 3, 4 * 12 + 2, 4 * 12 + 3]);
    assert_eq!(masks[1]["kept"].as_array().unwrap().len(), 0);
    assert_eq!(masks[2]["kept"], serde_json::json!([9 * 12 + 11]));
    assert_eq!(v["sequence"], serde_json::json!([0, 2]));
    assert_eq!(v["total_tokens"], 5);
    let png = image::open(&overlay).unwrap();
    assert_eq!((png.width(), png.height()), (168 * 2 + 8, 168));

    // Paper-exact Φ over the same masks.
    let status = og()
        .args(["tokens", "--grid", "12", "--phi", "raster", "--image"])
        .arg(&image)
        .arg("--masks")
        .arg(&masks_path)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["phi"], "raster");
    assert_eq!(v["masks"][1]["kept"], serde_json::json!([]));
}

/// With a segmenter instead of --masks, the groups come from the segmenter's masks.
#[test]
fn a_segmenter_replaces_the_mask_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tokens.json");
    let image =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/felzenszwalb/coffee.png");
    let o = og()
        .args([
            "tokens",
            "--segmenter",
            "felzenszwalb",
            "--scale",
            "300",
            "--image",
        ])
        .arg(&image)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["masks"].as_array().unwrap().len() > 1);
    // Neither --masks nor --segmenter: refused.
    let o = og()
        .args(["tokens", "--image"])
        .arg(&image)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn bad_inputs_fail_clearly_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = setup(dir.path());
    let out = dir.path().join("tokens.json");
    let wrong = dir.path().join("wrong.json");
    MaskSet::from_bitmaps(&[Bitmap::from_fn(10, 10, |_, _| true)])
        .unwrap()
        .write_coco_json(&wrong, CountsFormat::Compressed)
        .unwrap();
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(
        &corrupt,
        r#"[{"segmentation": {"size": [112, 168], "counts": "@@@"}}]"#,
    )
    .unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let none = dir.path().join("none.json");
    std::fs::write(&none, "[]").unwrap();
    for (masks, needle) in [
        (&wrong, "does not fit"),
        (&corrupt, "corrupt RLE"),
        (&empty, "empty"),
        (&none, "no masks"),
    ] {
        let o = og()
            .args(["tokens", "--image"])
            .arg(&image)
            .arg("--masks")
            .arg(masks)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "no output after an error");
    }
}
