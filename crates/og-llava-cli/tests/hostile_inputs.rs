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

/// Runs `og-llava args…` and asserts a clean refusal ([`refused`]).
fn refuse(name: &str, args: &[&str], needle: &str, out: &Path) {
    refused(name, &og(args), needle, out);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 40×30 test image, as PNG and as JPEG.
fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 77]));
    let (png, jpg) = (dir.join("img.png"), dir.join("img.jpg"));
    img.save(&png).unwrap();
    img.save(&jpg).unwrap();
    (png, jpg)
}

#[test]
fn broken_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, jpg) = images(dir.path());
    let out = dir.path().join("tokens.json");
    let bytes = std::fs::read(&jpg).unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("truncated JPEG", &bytes[..bytes.len() / 2], "truncated"),
        (
            "not an image",
            b"GIF89a but nothing else",
            "cannot decode image",
        ),
        ("empty image file", b"", "cannot decode image"),
    ];
    for (name, content, needle) in cases {
        let path = dir.path().join("broken.jpg");
        std::fs::write(&path, content).unwrap();
        let args = [
            "tokens",
            "--image",
            s(&path),
            "--segmenter",
            "felzenszwalb",
            "--out",
            s(&out),
        ];
        refuse(name, &args, needle, &out);
    }
    let missing = dir.path().join("missing.png");
    let args = [
        "tokens",
        "--image",
        s(&missing),
        "--segmenter",
        "felzenszwalb",
        "--out",
        s(&out),
    ];
    refuse("missing image", &args, "missing.png", &out);
}

#[test]
fn broken_masks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (png, _) = images(dir.path());
    let out = dir.path().join("tokens.json");
    let rle = |size: [u32; 2], counts: serde_json::Value| {
        serde_json::json!([{"segmentation": {"size": size, "counts": counts}}]).to_string()
    };
    let cases = [
        (
            "masks of another size",
            rle([10, 10], serde_json::json!([40, 60])),
            "masks are 10x10",
        ),
        (
            "polygon masks",
            serde_json::json!([{"segmentation": [[0, 0, 5, 0, 5, 5]]}]).to_string(),
            "polygon",
        ),
        (
            "counts of the wrong type",
            rle([30, 40], serde_json::json!(7)),
            "neither an RLE string",
        ),
        (
            "run lengths that do not fill the image",
            rle([30, 40], serde_json::json!([5, 6])),
            "1200",
        ),
        (
            "masks that are not JSON",
            "[{\"segmentation\": ".into(),
            "masks.json",
        ),
        ("an empty masks file", String::new(), "empty"),
        (
            "masks without segmentation",
            "[{\"area\": 3}]".into(),
            "without \"segmentation\"",
        ),
    ];
    for (name, text, needle) in cases {
        let masks = dir.path().join("masks.json");
        std::fs::write(&masks, text).unwrap();
        let args = [
            "tokens",
            "--image",
            s(&png),
            "--masks",
            s(&masks),
            "--out",
            s(&out),
        ];
        refuse(name, &args, needle, &out);
    }
    let args = [
        "tokens",
        "--image",
        s(&png),
        "--masks",
        "/dev/zero",
        "--out",
        s(&out),
    ];
    refuse(
        "masks read from /dev/zero",
        &args,
        "not a regular file",
        &out,
    );
    let npy = dir.path().join("npy");
    std::fs::create_dir_all(&npy).unwrap();
    std::fs::write(npy.join("mask_0.npy"), b"\x93NUMPY\x01\x00garbage").unwrap();
    let args = [
        "tokens",
        "--image",
        s(&png),
        "--masks",
        s(&npy),
        "--out",
        s(&out),
    ];
    refuse("a corrupt npy mask", &args, "mask_0.npy", &out);
    let args = [
        "tokens",
        "--image",
        s(&png),
        "--segmenter",
        "felzenszwalb",
        "--grid",
        "100000",
        "--out",
        s(&out),
    ];
    refuse("tokens --grid 100000", &args, "--grid 100000", &out);
}

/// A copy of the tiny Llama with `edit` applied to its directory.
fn llama_edited(dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("llm/gqa").join(f), model.join(f)).unwrap();
    }
    edit(&model);
    model
}

/// A safetensors file holding `tensors` (name, shape, f32 values).
fn safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .unwrap();
            (n.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn broken_model_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let run = |name: &str, model: &Path, ids: &str, needle: &str| {
        let args = [
            "inspect",
            "llm",
            "--model",
            s(model),
            "--token-ids",
            ids,
            "--out",
            s(&out),
        ];
        refuse(name, &args, needle, &out);
    };
    let m = llama_edited(dir.path(), "no-config", |m| {
        std::fs::remove_file(m.join("config.json")).unwrap()
    });
    run("no config.json", &m, "1,2", "config.json");
    let m = llama_edited(dir.path(), "garbage-weights", |m| {
        std::fs::write(
            m.join("model.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk",
        )
        .unwrap();
    });
    run(
        "a safetensors header of 2^63 bytes",
        &m,
        "1,2",
        "model.safetensors",
    );
    let m = llama_edited(dir.path(), "missing-tensor", |m| {
        safetensors(
            &m.join("model.safetensors"),
            &[("model.norm.weight", vec![32], vec![1.0; 32])],
        );
    });
    run(
        "a checkpoint without its tensors",
        &m,
        "1,2",
        "no Llama decoder found",
    );
    let m = llama_edited(dir.path(), "wrong-shape", |m| {
        safetensors(
            &m.join("model.safetensors"),
            &[("model.embed_tokens.weight", vec![3, 3], vec![0.0; 9])],
        );
    });
    run("a tensor of the wrong shape", &m, "1,2", "shape");
    let m = llama_edited(dir.path(), "huge-config", |m| {
        let f = std::fs::File::create(m.join("config.json")).unwrap();
        f.set_len(100 << 20).unwrap();
    });
    run("a 100 MB config.json", &m, "1,2", "config.json");
    let gqa = fixtures().join("llm/gqa");
    run(
        "a token id beyond the vocabulary",
        &gqa,
        "1,99999",
        "outside the vocabulary",
    );
}

#[test]
fn hostile_pickles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let released = fixtures().join("llava/released");
    let pickle_dir = |name: &str, pkl: &[u8]| -> PathBuf {
        let model = dir.path().join(name);
        std::fs::create_dir_all(&model).unwrap();
        for f in ["config.json", "adapter_config.json", "adapter_model.bin"] {
            std::fs::copy(released.join(f), model.join(f)).unwrap();
        }
        let file = std::fs::File::create(model.join("non_lora_trainables.bin")).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        std::io::Write::write_all(&mut zip, pkl).unwrap();
        zip.start_file("archive/data/0", opts).unwrap();
        std::io::Write::write_all(&mut zip, &[0u8; 16]).unwrap();
        zip.finish().unwrap();
        model
    };
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 200_000));
    deep.extend(std::iter::repeat_n(b'a', 199_999));
    deep.push(b'.');
    // {"w": _rebuild_tensor_v2(storage '0' of 4 floats, offset 2, size (3,), stride (1,))}
    let mut beyond = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    beyond.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ");
    beyond.extend(b"K\x02K\x03\x85K\x01\x85\x89tRu.");
    let code = b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touch\x85R.".to_vec();
    let (base, vision) = (
        fixtures().join("llava/released_base"),
        fixtures().join("vision/clip_vision_tiny"),
    );
    for (name, pkl, needle) in [
        ("a pickle nested 200 000 deep", deep, "nested 65 deep"),
        (
            "a tensor view beyond its storage",
            beyond,
            "reaches element 4 of a storage of 4",
        ),
        ("a pickle that calls os.system", code, "not a state dict"),
        ("not a pickle", b"hello".to_vec(), "non_lora_trainables.bin"),
    ] {
        let model = pickle_dir(&name.replace(' ', "-"), &pkl);
        let (png, _) = images(dir.path());
        let args = [
            "inspect",
            "llava",
            "--model",
            s(&model),
            "--base",
            s(&base),
            "--vision",
            s(&vision),
            "--image",
            s(&png),
            "--token-ids",
            "1,-200,2",
            "--out",
            s(&out),
        ];
        refuse(name, &args, needle, &out);
    }
}

/// A two-step training configuration over `og_train::testing::tiny_world`, with `edit`
/// applied to its JSON.
fn train_config(root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut cfg = serde_json::json!({
        "stage": "sft",
        "base": {"kind": "llava_hf", "path": root.join("model")},
        "lora": {"r": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": ["q_proj"]},
        "data": {"json": root.join("data.json"), "images": root.join("images"),
                 "masks": root.join("masks"), "missing_masks": "plain", "workers": 1},
        "output_dir": root.join(name),
        "model_max_length": 64, "epochs": 1, "max_steps": 2, "batch_size": 2,
        "grad_accumulation": 1, "lr_connector": 1e-3, "lr_lora": 1e-3, "warmup_ratio": 0.0,
        "weight_decay": 0.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
        "max_grad_norm": 1.0, "seed": 1, "checkpoint_every": 1, "keep_checkpoints": 2,
        "log_every": 1,
    });
    edit(&mut cfg);
    let path = root.join(format!("{name}.json"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn train_args<'a>(config: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--device", "ndarray", "--config", s(config)];
    v.extend(extra);
    v
}

#[test]
fn broken_training_runs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    og_train::testing::tiny_world(root, &fixtures().join("vision/llava_tiny"));
    let final_of = |name: &str| root.join(name).join("final");

    let c = train_config(root, "no-masks", |c| {
        c["data"]["masks"] = "/nonexistent/masks".into()
    });
    refuse(
        "a masks folder that does not exist",
        &train_args(&c, &[]),
        "does not exist",
        &final_of("no-masks"),
    );
    let c = train_config(root, "zero-steps", |c| c["max_steps"] = 0.into());
    refuse(
        "max_steps 0",
        &train_args(&c, &[]),
        "max_steps must be at least 1",
        &final_of("zero-steps"),
    );
    let c = train_config(root, "no-images", |c| {
        c["data"]["images"] = "/nonexistent".into()
    });
    refuse(
        "an image folder that does not exist",
        &train_args(&c, &[]),
        "data.images",
        &final_of("no-images"),
    );
    std::fs::write(root.join("bad.json"), "[{\"id\": 1,").unwrap();
    let c = train_config(root, "bad-rows", |c| {
        c["data"]["json"] = root.join("bad.json").to_str().into()
    });
    refuse(
        "a data file that is not JSON",
        &train_args(&c, &[]),
        "bad.json",
        &final_of("bad-rows"),
    );
    let c = root.join("broken.toml");
    std::fs::write(&c, "stage = [").unwrap();
    refuse(
        "a configuration that is not TOML",
        &train_args(&c, &[]),
        "broken.toml",
        &final_of("broken"),
    );

    // Another run holds the output directory.
    let c = train_config(root, "locked", |_| {});
    std::fs::create_dir_all(root.join("locked")).unwrap();
    let lock = std::fs::File::create(root.join("locked/.lock")).unwrap();
    lock.try_lock().unwrap();
    refuse(
        "an output directory another run writes",
        &train_args(&c, &[]),
        "another run is writing",
        &final_of("locked"),
    );
    drop(lock);

    // A finished run whose checkpoint is then damaged.
    let c = train_config(root, "done", |_| {});
    let o = og(&train_args(&c, &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = og_train::latest_checkpoint(&root.join("done")).unwrap();
    std::fs::remove_dir_all(final_of("done")).unwrap();
    let optimizer = ckpt.join("optimizer.safetensors");
    let good = std::fs::read(&optimizer).unwrap();
    let w = og_weights::Weights::open(&optimizer).unwrap();
    let name = w
        .names()
        .into_iter()
        .find(|n| n.starts_with("exp_avg."))
        .unwrap()
        .to_string();
    let param = name.trim_start_matches("exp_avg.").to_string();
    let short = vec![0.0f32; 3];
    safetensors(
        &optimizer,
        &[
            (&name, vec![3], short.clone()),
            (&format!("exp_avg_sq.{param}"), vec![3], short),
        ],
    );
    refuse(
        "optimizer moments of the wrong length",
        &train_args(&c, &["--resume"]),
        "3 values for a parameter of",
        &final_of("done"),
    );
    std::fs::write(&optimizer, good).unwrap();
    let state = ckpt.join("state.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    st["step"] = 1_000_000.into();
    std::fs::write(&state, st.to_string()).unwrap();
    refuse(
        "a checkpoint beyond the run's steps",
        &train_args(&c, &["--resume"]),
        "beyond this run's 2 steps",
        &final_of("done"),
    );
}

#[test]
fn commands_refuse_what_they_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    og_train::testing::tiny_world(root, &fixtures().join("vision/llava_tiny"));
    let never = root.join("never");
    let (model, image) = (root.join("model"), root.join("images/0.png"));
    let long = vec!["w5"; 200].join(" ");
    let args = [
        "ask",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--max-new-tokens",
        "2",
        &long,
    ];
    refuse(
        "a prompt longer than the context",
        &args,
        "longer than the model's context of 64",
        &never,
    );
    let args = [
        "train",
        "--config",
        "/nonexistent.toml",
        "--nodes",
        "0",
        "--node-rank",
        "0",
        "--orchestrator",
        "127.0.0.1:1",
    ];
    refuse("--nodes 0", &args, "--nodes 0", &never);
    let mut hub = Command::new(env!("CARGO_BIN_EXE_og-llava"));
    let o = hub
        .args(["orchestrator", "--bind", "0.0.0.0", "--port", "0"])
        .env_remove("OG_HUB_TOKEN")
        .output()
        .unwrap();
    refused(
        "a hub beyond loopback without a token",
        &o,
        "OG_HUB_TOKEN",
        &never,
    );
    let args = [
        "segment",
        "--image",
        s(&image),
        "--scale",
        "NaN",
        "--out",
        s(&never),
    ];
    refuse("segment --scale NaN", &args, "scale", &never);
    let args = [
        "ask",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "what is <image> here?",
    ];
    refuse(
        "a literal <image> in the question",
        &args,
        "literal <image>",
        &never,
    );
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let args = ["ask", "--model", s(&empty), "--image", s(&image), "w5"];
    refuse(
        "a model folder with neither og_llava.json nor config.json",
        &args,
        "neither og_llava.json",
        &never,
    );
    std::fs::write(
        model.join("tokenizer_config.json"),
        r#"{"chat_template": "{% for %}"}"#,
    )
    .unwrap();
    let args = ["ask", "--model", s(&model), "--image", s(&image), "w5"];
    refuse(
        "a chat template that does not parse",
        &args,
        "tokenizer_config.json: chat template",
        &never,
    );
}
