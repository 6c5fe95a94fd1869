//! Hostile and broken inputs through the binary: each case must end with a non-zero exit, a
//! message naming what is wrong, and no output file — never a panic, an abort or a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn og(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts a clean refusal: failure, `needle` in stderr, no panic, `out` not written.
fn refused(name: &str, o: &Output, needle: &str, out: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{name}: succeeded\n{err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "{name}: exit {:?}\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{name}: panicked\n{err}");
    assert!(err.contains(needle), "{name}: {needle:?} not in\n{err}");
    assert!(!out.exists(), "{name}: left {}", out.display());
}

/// A copy of the tiny Llama with one config.json field replaced.
fn llama_with(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let model = dir.join(format!("llama-{key}"));
    std::fs::create_dir_all(&model).unwrap();
    let src = fixtures().join("llm/gqa");
    std::fs::copy(
        src.join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    model
}

#[test]
fn broken_model_configs_are_refused_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    for (key, value, needle) in [
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 0, "rope_type": "default"}),
            "rope_theta",
        ),
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000_000_000u64),
            "num_hidden_layers",
        ),
        ("model_type", serde_json::json!("gpt2"), "gpt2"),
    ] {
        let model = llama_with(dir.path(), key, value);
        let o = og(&[
            "inspect",
            "llm",
            "--model",
            model.to_str().unwrap(),
            "--token-ids",
            "1,2,3",
            "--out",
            out.to_str().unwrap(),
        ]);
        refused(key, &o, needle, &out);
    }
}

#[test]
fn sizes_from_the_command_line_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    for hidden in ["0", "1000000000"] {
        let o = og(&["device-check", "--text-hidden", hidden, "--iterations", "1"]);
        refused(
            &format!("--text-hidden {hidden}"),
            &o,
            "--text-hidden",
            &out,
        );
    }
    // Devices are counted before the configuration is read.
    let o = og(&[
        "train",
        "--config",
        "/nonexistent.toml",
        "--devices",
        "100000",
    ]);
    refused("--devices 100000", &o, "count from 1 to 64", &out);
}

#[test]
fn a_strip_image_is_refused_not_padded_to_a_huge_square() {
    let dir = tempfile::tempdir().unwrap();
    let strip = dir.path().join("strip.png");
    image::RgbImage::from_pixel(1, 100_000, image::Rgb([9, 9, 9]))
        .save(&strip)
        .unwrap();
    let out = dir.path().join("tokens.json");
    let o = og(&[
        "tokens",
        "--image",
        strip.to_str().unwrap(),
        "--segmenter",
        "felzenszwalb",
        "--out",
        out.to_str().unwrap(),
    ]);
    refused("tokens on a 1x100000 strip", &o, "1x100000", &out);
    let o = og(&[
        "segment",
        "--image",
        strip.to_str().unwrap(),
        "--max-pixels",
        "50000",
        "--out",
        out.to_str().unwrap(),
    ]);
    refused("segment over --max-pixels", &o, "--max-pixels", &out);
}
