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
