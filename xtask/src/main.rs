//! `cargo xtask <task>`: developer tasks, thin wrappers over the crates and scripts.

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fixtures      regenerate fixtures/ (scripts/make_*_fixtures.py;
                needs: pip install torch transformers peft numpy pycocotools pillow safetensors
                pyarrow pandas scikit-image opencv-python-headless; SAM 2's:
                SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2)
  compare-phi   time Φ against the paper's Listing 1 in PyTorch (scripts/compare_phi.py)
  compare-vit   time the CLIP ViT-L/14@336 forward against transformers (scripts/compare_vit.py)
  compare-llm   decode tok/s against transformers, SmolLM2-135M shape (scripts/compare_llm.py)
  compare-train training steps/s against PyTorch eager + peft, small LLaVA (scripts/compare_train.py)
  compare-felzenszwalb  Felzenszwalb against scikit-image, speed and agreement
                (scripts/compare_felzenszwalb.py; needs: pip install scikit-image pycocotools pillow)
  perf          every comparison above in one run (scripts/perf.py): target/perf/perf.json + perf.md
                (needs: pip install torch transformers peft numpy pycocotools pillow)
  compare-sam2  SAM 2 Hiera-L image encoder and automatic mask generator against PyTorch
                (scripts/compare_sam2.py; needs torch, transformers and the sam2 package)
  gpu-check [--device cuda[:N]|wgpu|flex|ndarray] [og-llava gpu-check flags]
                build the binary for the device (CUDA: --features cuda into target/cuda) and
                run og-llava gpu-check: parity with the CPU, one SFT step, throughput, in f32
                and bf16; target/gpu-check/report.json + report.md
  ci            run .ci/run (fmt, clippy, tests, backend compile check)
  demo          the README's main job: og-llava tokens on the example image
  train [--seeds N] [--preset nano|smoke]
                the nano-world experiment on the CPU (og-llava nano; results in runs/nano)
  ablate        the paper's ablations in the nano world (og-llava nano --ablate)
  train ARGS    one training stage: og-llava train --config RUN.toml [--preset P]
                [--set key=value] [--resume]";

fn run(cmd: &mut Command) -> ExitCode {
    eprintln!("+ {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask: command failed with {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: cannot run {:?}: {e}", cmd.get_program());
            ExitCode::FAILURE
        }
    }
}

fn python(root: &std::path::Path, script: &str) -> ExitCode {
    run(Command::new("python3")
        .arg(format!("scripts/{script}"))
        .current_dir(root))
}

/// `cargo xtask gpu-check`: builds the release binary with the device's backend (CUDA in its
/// own target directory, so the CPU build is not rebuilt) and runs `og-llava gpu-check`.
fn gpu_check(root: &std::path::Path, args: &[String]) -> ExitCode {
    let device = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map_or("cuda", String::as_str);
    let backend = device.split(':').next().unwrap_or(device);
    let mut build = Command::new("cargo");
    build
        .args(["build", "--release", "-p", "og-llava-cli"])
        .current_dir(root);
    let target = match backend {
        "cuda" | "wgpu" => {
            build.args(["--features", backend]);
            root.join("target").join(backend)
        }
        _ => root.join("target"),
    };
    build.env("CARGO_TARGET_DIR", &target);
    let code = run(&mut build);
    if code != ExitCode::SUCCESS {
        return code;
    }
    let mut check = Command::new(target.join("release").join("og-llava"));
    check.arg("gpu-check").current_dir(root);
    if !args.iter().any(|a| a == "--device") {
        check.args(["--device", device]);
    }
    run(check.args(args))
}

fn main() -> ExitCode {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned();
    match task.as_deref() {
        Some("fixtures") => {
            for script in [
                "make_fixtures.py",
                "make_vision_fixtures.py",
                "make_llm_fixtures.py",
                "make_tokenizer_fixtures.py",
                "make_llava_fixtures.py",
                "make_train_fixtures.py",
                "make_eval_fixtures.py",
                "make_felzenszwalb_fixtures.py",
                "make_sam2_fixtures.py",
                "make_torch_fixtures.py",
                "make_fuzz_corpus.py",
            ] {
                let code = python(&root, script);
                if code != ExitCode::SUCCESS {
                    return code;
                }
            }
            ExitCode::SUCCESS
        }
        Some("compare-phi") => python(&root, "compare_phi.py"),
        Some("compare-vit") => python(&root, "compare_vit.py"),
        Some("compare-llm") => python(&root, "compare_llm.py"),
        Some("compare-train") => python(&root, "compare_train.py"),
        Some("compare-felzenszwalb") => python(&root, "compare_felzenszwalb.py"),
        Some("compare-sam2") => python(&root, "compare_sam2.py"),
        Some("perf") => python(&root, "perf.py"),
        Some("gpu-check") => gpu_check(&root, &args[1..]),
        Some("ci") => run(Command::new(".ci/run").current_dir(&root)),
        Some("demo") => run(Command::new("cargo")
            .args([
                "run",
                "--release",
                "-p",
                "og-llava-cli",
                "--",
                "tokens",
                "--image",
                "fixtures/examples/coffee.jpg",
                "--masks",
                "fixtures/examples/coffee_masks.json",
                "--out",
                "tokens.json",
                "--overlay",
                "overlay.png",
                "--compare",
            ])
            .current_dir(&root)),
        // One training stage through og-train (`og-llava train`) when given a run configuration;
        // otherwise the nano-world experiment (`og-llava nano`, e.g. `--seeds 3`).
        Some("train")
            if args[1..].iter().any(|a| {
                matches!(a.as_str(), "--config" | "--set" | "--resume") || a.starts_with("paper-")
            }) =>
        {
            run(Command::new("cargo")
                .args(["run", "--release", "-p", "og-llava-cli", "--", "train"])
                .args(&args[1..])
                .current_dir(&root))
        }
        Some("train") => run(Command::new("cargo")
            .args(["run", "--release", "-p", "og-llava-cli", "--", "nano"])
            .args(&args[1..])
            .current_dir(&root)),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}
