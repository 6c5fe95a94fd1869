//! `og-llava segment`: one image to one mask file, a folder to a mirrored folder of mask files
//! (resumable), bad images and parameters reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use og_segment::{FelzenszwalbConfig, MaskSet, felzenszwalb};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn segment(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .arg("segment")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn one_image_gives_the_library_partition() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("felzenszwalb/coffee.png");
    let out = dir.path().join("nested/coffee.json");
    let o = segment(&[
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--scale",
        "100",
        "--sigma",
        "0.5",
        "--min-size",
        "50",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let masks = MaskSet::read_coco_json(&out).unwrap();
    let rgb = image::open(&image).unwrap().to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let cfg = FelzenszwalbConfig {
        scale: 100.0,
        sigma: 0.5,
        min_size: 50,
        ..Default::default()
    };
    let want = felzenszwalb(rgb.as_raw(), w, h, &cfg)
        .unwrap()
        .to_mask_set()
        .unwrap();
    let rles = |m: &MaskSet| m.iter().map(|m| m.rle.clone()).collect::<Vec<_>>();
    assert_eq!(rles(&masks), rles(&want));
    assert_eq!(
        masks.iter().map(|m| m.area()).sum::<u64>(),
        (w * h) as u64,
        "a partition"
    );
}

#[test]
fn a_folder_is_mirrored_resumed_and_bad_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for name in ["chelsea.png", "rocket.png"] {
        std::fs::copy(
            fixtures().join("felzenszwalb").join(name),
            images.join(name),
        )
        .unwrap();
    }
    std::fs::copy(
        fixtures().join("examples/coffee.jpg"),
        images.join("sub/coffee.jpg"),
    )
    .unwrap();
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    std::fs::write(images.join("broken.png"), "not a png").unwrap();
    let out = dir.path().join("masks");
    let args = [
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "2",
    ];
    let o = segment(&args);
    let err = text(&o);
    assert!(!o.status.success(), "a broken image fails the run");
    assert!(
        err.contains("broken.png") && err.contains("1 of 4 images"),
        "{err}"
    );
    for rel in ["chelsea.json", "rocket.json", "sub/coffee.json"] {
        assert!(MaskSet::read_coco_json(out.join(rel)).is_ok(), "{rel}");
    }
    assert!(!out.join("broken.json").exists() && !out.join("notes.json").exists());
    // A rerun keeps what exists and retries only the broken image.
    std::fs::remove_file(images.join("broken.png")).unwrap();
    let before = std::fs::metadata(out.join("chelsea.json"))
        .unwrap()
        .modified()
        .unwrap();
    let o = segment(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 of 3 images already have masks"));
    let after = std::fs::metadata(out.join("chelsea.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn bad_parameters_and_missing_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let image = fixtures().join("examples/coffee.jpg");
    let cases: [(&[&str], &str); 4] = [
        (&["--scale=-1"], "scale"),
        (&["--sigma=nan"], "sigma"),
        (&["--max-pixels", "100"], "--max-pixels"),
        (&[], ""),
    ];
    for (extra, needle) in cases.iter().take(3) {
        let mut args = vec![
            "--image",
            image.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(*extra);
        let o = segment(&args);
        assert!(!o.status.success(), "{extra:?}");
        assert!(text(&o).contains(needle), "{extra:?}: {}", text(&o));
        assert!(!out.exists(), "{extra:?} left an output");
    }
    let o = segment(&[
        "--images",
        dir.path().join("none").to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).contains("not a folder"));
    let o = segment(&["--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
}

/// The flags of the tiny SAM 2 fixture's generator run (scripts/make_sam2_fixtures.py).
const SAM2_FLAGS: &[&str] = &[
    "--segmenter",
    "sam2",
    "--points-per-side",
    "8",
    "--points-per-batch",
    "6",
    "--pred-iou-thresh",
    "0.55",
    "--stability-score-thresh",
    "0.6",
    "--box-nms-thresh",
    "1.0",
];

#[test]
fn sam2_writes_the_generator_masks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chelsea.json");
    let sam = fixtures().join("sam2/original_t/model.pt");
    let image = fixtures().join("images/chelsea.webp");
    let mut args = vec![
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sam",
        sam.to_str().unwrap(),
    ];
    args.extend(SAM2_FLAGS);
    let o = segment(&args);
    assert!(o.status.success(), "{}", text(&o));
    let got = MaskSet::read_coco_json(&out).unwrap();
    let want = MaskSet::read_coco_json(fixtures().join("sam2/original_t_amg.json")).unwrap();
    assert_eq!(got.len(), want.len());
    let scores = |m: &MaskSet| {
        let mut s: Vec<f32> = m.iter().map(|m| m.score.unwrap()).collect();
        s.sort_by(f32::total_cmp);
        s
    };
    for (g, w) in scores(&got).iter().zip(scores(&want)) {
        assert!((g - w).abs() < 1e-4, "predicted IoU {g} vs {w}");
    }
    assert!(
        got.iter()
            .all(|m| m.stability.is_some() && m.extra.contains_key("point_coords"))
    );
    // SAM 2 without weights, and weights that are not SAM 2, are named.
    let o = segment(&[
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--segmenter",
        "sam2",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("--sam"),
        "{}",
        text(&o)
    );
    let not_sam = fixtures().join("vision/clip_vision_tiny");
    let o = segment(&[
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--segmenter",
        "sam2",
        "--sam",
        not_sam.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && text(&o).contains("SAM 2"),
        "{}",
        text(&o)
    );
}
