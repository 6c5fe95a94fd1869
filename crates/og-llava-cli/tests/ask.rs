//! `og-llava ask` on the tiny Llava checkpoint with a word-level tokenizer: the plain and the OG
//! path run and report timings; user errors are clear.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use og_segment::{Bitmap, CountsFormat, MaskSet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn ask(model: &Path, image: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args([
            "ask",
            "--max-new-tokens",
            "4",
            "--timings",
            "--context",
            "512",
            "--model",
        ])
        .arg(model)
        .arg("--image")
        .arg(image)
        .args(extra)
        .arg("w5 w6")
        .output()
        .unwrap()
}

#[test]
fn plain_and_og_paths_answer() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let image = root().join("images/chelsea.webp"); // 451x300
    let o = ask(dir.path(), &image, &["--no-masks"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("timings: preprocess"), "{err}");
    let masks = MaskSet::from_bitmaps(&[
        Bitmap::from_fn(300, 451, |y, x| {
            (50..200).contains(&y) && (100..300).contains(&x)
        }),
        Bitmap::from_fn(300, 451, |y, x| y > 250 && x < 40),
    ])
    .unwrap();
    let path = dir.path().join("masks.json");
    masks
        .write_coco_json(&path, CountsFormat::Compressed)
        .unwrap();
    for phi in ["patch", "raster"] {
        let o = ask(
            dir.path(),
            &image,
            &[
                "--masks",
                path.to_str().unwrap(),
                "--phi",
                phi,
                "--segment-rope",
            ],
        );
        assert!(
            o.status.success(),
            "{phi}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Masks made for another image size.
    let wrong = dir.path().join("wrong.json");
    MaskSet::from_bitmaps(&[Bitmap::from_fn(10, 10, |_, _| true)])
        .unwrap()
        .write_coco_json(&wrong, CountsFormat::Compressed)
        .unwrap();
    let o = ask(dir.path(), &image, &["--masks", wrong.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("does not fit"));
    let o = ask(dir.path(), &dir.path().join("missing.png"), &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = ask(&root().join("llm"), &image, &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("holds no model"));
}

/// `--segmenter` segments on the fly and answers exactly as the mask file `og-llava segment`
/// writes with the same parameters.
#[test]
fn a_segmenter_on_the_fly_answers_as_its_mask_file() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let image = root().join("images/chelsea.webp");
    let params = ["--scale", "300", "--sigma", "0.5", "--min-size", "400"];
    let masks = dir.path().join("chelsea.json");
    let o = Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(["segment", "--image"])
        .arg(&image)
        .arg("--out")
        .arg(&masks)
        .args(params)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = MaskSet::read_coco_json(&masks).unwrap().len();
    assert!(n > 1, "{n} masks");
    let from_file = ask(dir.path(), &image, &["--masks", masks.to_str().unwrap()]);
    let mut on_the_fly = vec!["--segmenter", "felzenszwalb"];
    on_the_fly.extend(params);
    let live = ask(dir.path(), &image, &on_the_fly);
    let err = String::from_utf8_lossy(&live.stderr);
    assert!(live.status.success(), "{err}");
    assert!(
        err.contains(&format!("{n} masks from Felzenszwalb")),
        "{err}"
    );
    assert_eq!(live.stdout, from_file.stdout);
    let plain = ask(dir.path(), &image, &["--no-masks"]);
    assert!(plain.status.success());
    // Bad parameters and conflicting mask sources are refused.
    let o = ask(
        dir.path(),
        &image,
        &["--segmenter", "felzenszwalb", "--scale=0"],
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("scale"));
    let o = ask(
        dir.path(),
        &image,
        &[
            "--segmenter",
            "felzenszwalb",
            "--masks",
            masks.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
}

#[test]
fn sam2_on_the_fly_answers_as_its_mask_file() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let image = root().join("images/chelsea.webp");
    let sam = root().join("sam2/original_t/model.pt");
    let generator = [
        "--sam",
        sam.to_str().unwrap(),
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0.55",
        "--stability-score-thresh",
        "0.6",
    ];
    let masks = dir.path().join("chelsea.json");
    let o = Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(["segment", "--segmenter", "sam2", "--image"])
        .arg(&image)
        .arg("--out")
        .arg(&masks)
        .args(generator)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = MaskSet::read_coco_json(&masks).unwrap().len();
    let from_file = ask(dir.path(), &image, &["--masks", masks.to_str().unwrap()]);
    let mut on_the_fly = vec!["--segmenter", "sam2"];
    on_the_fly.extend(generator);
    let live = ask(dir.path(), &image, &on_the_fly);
    let err = String::from_utf8_lossy(&live.stderr);
    assert!(live.status.success(), "{err}");
    assert!(err.contains(&format!("{n} masks from Sam2")), "{err}");
    assert_eq!(live.stdout, from_file.stdout);
}

#[test]
fn bf16_where_the_backend_has_it() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let image = root().join("images/chelsea.webp");
    let o = ask(
        dir.path(),
        &image,
        &["--device", "flex", "--precision", "bf16"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ask(
        dir.path(),
        &image,
        &["--device", "ndarray", "--precision", "bf16"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no bf16 arithmetic"),
        "{err}"
    );
    let o = ask(dir.path(), &image, &["--precision", "fp8"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("expected auto, f32 or bf16"),
        "{err}"
    );
}

#[test]
fn inspect_llava_once_or_repeated_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llava(dir.path());
    let image = root().join("images/rocket.jpg");
    let run = |extra: &[&str], out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_og-llava"))
            .args(["inspect", "llava", "--model"])
            .arg(dir.path())
            .arg("--image")
            .arg(&image)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let once = dir.path().join("once.safetensors");
    let repeated = dir.path().join("repeated.safetensors");
    let o = run(&["--token-ids", "1,5,63,7"], &once);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ids: Vec<String> = [1, 5]
        .iter()
        .chain([63; 25].iter())
        .chain([7].iter())
        .map(|i| i.to_string())
        .collect();
    let o = run(&["--token-ids", &ids.join(",")], &repeated);
    assert!(o.status.success());
    let (a, sa) = og_weights::Weights::open(&once)
        .unwrap()
        .f32("logits")
        .unwrap();
    let (b, sb) = og_weights::Weights::open(&repeated)
        .unwrap()
        .f32("logits")
        .unwrap();
    assert_eq!(sa, vec![1, 28, 64]);
    assert_eq!(sa, sb);
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    let prompt = dir.path().join("prompt.safetensors");
    let o = run(&["--prompt", "<|begin_of_text|>w5 <image> w7"], &prompt);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (c, _) = og_weights::Weights::open(&prompt)
        .unwrap()
        .f32("logits")
        .unwrap();
    assert!(
        a.iter().zip(&c).all(|(x, y)| (x - y).abs() < 1e-5),
        "prompt text = the same ids"
    );
    let o = run(&["--prompt", "no placeholder"], &prompt);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("no <image> placeholder")
    );
}

#[test]
fn inspect_llava_released_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_og-llava"))
            .args(["inspect", "llava", "--model"])
            .arg(root().join("llava/released"))
            .arg("--image")
            .arg(root().join("images/rocket.jpg"))
            .arg("--out")
            .arg(&out)
            .args(["--token-ids", "1,5,6,-200,7,8,9"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--base DIR"));
    let base = root().join("llava/released_base");
    let vision = root().join("vision/clip_vision_tiny");
    let o = run(&[
        "--base",
        base.to_str().unwrap(),
        "--vision",
        vision.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (v, shape) = og_weights::Weights::open(&out)
        .unwrap()
        .f32("logits")
        .unwrap();
    // 3 text tokens, the 25-token grid, 3 text tokens.
    assert_eq!(shape, vec![1, 31, 64]);
    assert!(v.iter().all(|x| x.is_finite()));
}
