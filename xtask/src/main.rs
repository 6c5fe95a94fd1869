//! `cargo xtask <task>`: developer tasks, thin wrappers over the crates and scripts.

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fixtures      regenerate fixtures/ (scripts/make_fixtures.py, scripts/make_vision_fixtures.py;
                needs: pip install torch transformers numpy pycocotools pillow safetensors)
  compare-phi   time Φ against the paper's Listing 1 in PyTorch (scripts/compare_phi.py)
  compare-vit   time the CLIP ViT-L/14@336 forward against transformers (scripts/compare_vit.py)
  ci            run .ci/run (fmt, clippy, tests, backend compile check)
  demo          the README's main job: og-llava tokens on the example image";

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

fn main() -> ExitCode {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("fixtures") => run(Command::new("python3")
            .arg("scripts/make_fixtures.py")
            .current_dir(&root)),
        Some("compare-phi") => run(Command::new("python3")
            .arg("scripts/compare_phi.py")
            .current_dir(&root)),
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
        Some("train") => {
            eprintln!(
                "xtask: `train` arrives with og-train and the nano world (not implemented yet)"
            );
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}
