//! `og-llava train` survives `kill -9`: a run killed (SIGKILL) at an arbitrary point after
//! its first checkpoint and resumed ends with the same trainable weights and optimiser state,
//! byte for byte, as a run that was never interrupted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn write_config(root: &Path, out: &str) -> PathBuf {
    let cfg = serde_json::json!({
        "stage": "sft",
        "base": {"kind": "llava_hf", "path": root.join("model")},
        "fusion": {"delimiter": "before_mask"},
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "data": {"json": root.join("data.json"), "images": root.join("images"),
                 "masks": root.join("masks"), "missing_masks": "plain", "workers": 2},
        "output_dir": root.join(out),
        "model_max_length": 64, "epochs": 40, "batch_size": 2, "grad_accumulation": 2,
        "lr_connector": 1e-3, "lr_lora": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "max_grad_norm": 0.3, "seed": 3,
        "checkpoint_every": 5, "keep_checkpoints": 1, "log_every": 20,
    });
    let path = root.join(format!("{out}.json"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn train(config: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_og-llava"));
    c.args(["train", "--device", "flex", "--config"])
        .arg(config);
    if resume {
        c.arg("--resume");
    }
    c
}

fn last_checkpoint(out: &Path) -> PathBuf {
    og_train::latest_checkpoint(out).expect("a checkpoint")
}

#[test]
fn resume_after_kill_9_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    og_train::testing::tiny_world(root, &fixtures().join("vision/llava_tiny"));

    let full = write_config(root, "full");
    let o = train(&full, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = summary["steps"].as_u64().unwrap();
    assert_eq!(steps, 120);

    let cut = write_config(root, "cut");
    let mut child = train(&cut, false)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = root.join("cut/checkpoints/step-00000005/state.json");
    let t0 = Instant::now();
    while !first.is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run ended before the kill: nothing was tested"
    );
    let o = train(&cut, true).output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("resuming from"), "{log}");
    for f in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        let a = std::fs::read(last_checkpoint(&root.join("full")).join(f)).unwrap();
        let b = std::fs::read(last_checkpoint(&root.join("cut")).join(f)).unwrap();
        assert!(a == b, "{f} differs after kill -9 and resume");
    }
    // The trained model answers through `ask` (our checkpoint format, tokenizer from its base).
    let o = Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(["ask", "--model"])
        .arg(root.join("full/final"))
        .arg("--image")
        .arg(root.join("images/0.png"))
        .arg("--masks")
        .arg(root.join("masks/0.json"))
        .args(["--max-new-tokens", "3", "w5 w6"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Resuming a finished run has nothing left to do and changes nothing.
    let o = train(&cut, true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A free local TCP port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The all-reduce hub on `port` of localhost, killed when the returned value drops.
fn orchestrator(port: u16) -> Reap {
    Reap(vec![
        Command::new(env!("CARGO_BIN_EXE_og-llava"))
            .args(["orchestrator", "--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ])
}

/// Kills the child processes of a test when it ends, passing or not.
struct Reap(Vec<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for every child (at most five minutes) and asserts each succeeded; returns their
/// standard error.
fn finish(children: Vec<std::process::Child>) -> Vec<String> {
    finish_outputs(children)
        .into_iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        .collect()
}

/// [`finish`], returning each child's whole output.
fn finish_outputs(children: Vec<std::process::Child>) -> Vec<std::process::Output> {
    let mut reap = Reap(children);
    let t0 = Instant::now();
    while reap.0.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the two-node run did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    reap.0
        .drain(..)
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            o
        })
        .collect()
}

/// The run in `out` took the same steps as the one in `one`: losses and trained weights.
fn assert_same_run(one: &Path, out: &Path) {
    let (m1, m2) = (
        og_train::read_metrics(one).unwrap(),
        og_train::read_metrics(out).unwrap(),
    );
    assert_eq!(m1.len(), m2.len());
    assert_eq!(m1.len(), 6);
    for (a, b) in m1.iter().zip(&m2) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * a.loss.abs().max(1.0),
            "step {}: loss {} on one device, {} in {}",
            a.step,
            a.loss,
            b.loss,
            out.display()
        );
    }
    for (n, worst) in og_train::testing::weight_differences(
        &last_checkpoint(one).join("trainable.safetensors"),
        &last_checkpoint(out).join("trainable.safetensors"),
    ) {
        assert!(worst < 1e-4, "{}: {n} differs by {worst}", out.display());
    }
}

/// Two nodes (two processes, one CPU replica each) train the same steps as one process on one
/// device with twice the micro-batch: joined through the orchestrator (the all-reduce hub) by
/// flags, and launched torchrun-style (`WORLD_SIZE`, `RANK`, `MASTER_ADDR`, `MASTER_PORT`),
/// where rank 0 hosts the hub.
#[test]
fn two_nodes_train_like_one_device_with_twice_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    og_train::testing::tiny_world(root, &fixtures().join("vision/llava_tiny"));
    let common = [
        "--set",
        "lora.dropout=0.0",
        "--set",
        "epochs=2",
        "--set",
        "checkpoint_every=100",
    ];
    let one = write_config(root, "one");
    let o = train(&one, false)
        .args(common)
        .args(["--set", "batch_size=2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let node = |config: &Path| {
        let mut c = train(config, false);
        c.args(common)
            .args(["--set", "batch_size=1"])
            .env_remove(og_train::hub::TOKEN_ENV)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };

    let nodes = write_config(root, "nodes");
    let port = free_port();
    let hub = orchestrator(port);
    let by_flags = |rank: u32| {
        node(&nodes)
            .args(["--nodes", "2", "--node-rank", &rank.to_string()])
            .arg("--orchestrator")
            .arg(format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap()
    };
    finish(vec![by_flags(1), by_flags(0)]);
    drop(hub);
    assert_same_run(&root.join("one"), &root.join("nodes"));

    let launched = write_config(root, "launched");
    let port = free_port().to_string();
    let by_env = |rank: &str| {
        node(&launched)
            .envs([
                ("WORLD_SIZE", "2"),
                ("RANK", rank),
                ("LOCAL_RANK", "0"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", &port),
            ])
            .spawn()
            .unwrap()
    };
    let errs = finish(vec![by_env("1"), by_env("0")]);
    assert!(
        errs[1].contains("node 0 of 2") && errs[1].contains("hosted here"),
        "{}",
        errs[1]
    );
    assert_same_run(&root.join("one"), &root.join("launched"));
}

/// Each node reads and decodes only the rows of its own micro-batches: the two shares are
/// disjoint and together the whole epoch, and a row whose pixels turn out corrupt (its header
/// passes the start-up check) is found, and counted, by the one node that decodes it.
#[test]
fn two_nodes_decode_only_their_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    og_train::testing::tiny_world(root, &fixtures().join("vision/llava_tiny"));
    let png = std::fs::read(root.join("images/0.png")).unwrap();
    std::fs::write(root.join("images/torn.png"), &png[..png.len() * 2 / 3]).unwrap();
    let data = root.join("data.json");
    let mut rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&data).unwrap()).unwrap();
    rows.push(
        serde_json::json!({"id": "torn", "image": "torn.png", "conversations": [
        {"from": "human", "value": "<image>\nw5"}, {"from": "gpt", "value": "w6"}]}),
    );
    std::fs::write(&data, serde_json::to_string(&rows).unwrap()).unwrap();

    let config = write_config(root, "nodes");
    let port = free_port();
    let hub = orchestrator(port);
    let node = |rank: u32| {
        train(&config, false)
            .args(["--set", "epochs=1", "--set", "checkpoint_every=100"])
            .args(["--nodes", "2", "--node-rank", &rank.to_string()])
            .arg("--orchestrator")
            .arg(format!("127.0.0.1:{port}"))
            .env_remove(og_train::hub::TOKEN_ENV)
            .env("RUST_LOG", "og_train=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let outputs = finish_outputs(vec![node(0), node(1)]);
    drop(hub);
    // 10 usable rows (the tiny world's 9 and the torn one), steps of 2 × 2 × 2 = 8 rows:
    // node 0 reads micro-batches 0 and 2 of step 1 and micro-batch 0 of step 2, node 1 the rest.
    let mut read = Vec::new();
    let mut torn_found_by = Vec::new();
    for (rank, o) in outputs.iter().enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("this node reads"))
            .unwrap_or_else(|| panic!("node {rank} says what it reads:\n{err}"));
        let n: usize = line
            .split("this node reads ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(line.contains("of the epoch's 10 rows"), "{line}");
        read.push(n);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if summary["bad_rows"].to_string().contains("torn") {
            torn_found_by.push(rank);
        }
    }
    assert_eq!(read, vec![6, 4]);
    assert_eq!(torn_found_by.len(), 1, "{torn_found_by:?}");
}

/// A model trained with non-default image settings (the paper's Φ at α = 2, masks as given,
/// a complement group, CLIP's crop) and segment-aware RoPE records them in `og_llava.json`;
/// `ask` without flags answers exactly as with the flags that repeat training, and a flag that
/// departs from what the model records is said.
#[test]
fn a_trained_model_is_asked_as_it_was_trained() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    og_train::testing::tiny_world(root, &fixtures().join("vision/llava_tiny"));
    let template = serde_json::json!({"bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"});
    std::fs::write(
        root.join("model/tokenizer_config.json"),
        template.to_string(),
    )
    .unwrap();
    let cfg = serde_json::json!({
        "stage": "sft",
        "base": {"kind": "llava_hf", "path": root.join("model")},
        "segment_rope": true,
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"json": root.join("data.json"), "images": root.join("images"),
                 "masks": root.join("masks"), "missing_masks": "plain", "workers": 1,
                 "pad_to_square": false,
                 "selection": {"phi": {"kind": "raster_strip1d", "alpha": 2.0}, "order": "given",
                               "complement": true, "max_tokens": null, "max_masks": 1024}},
        "output_dir": root.join("run"),
        "model_max_length": 64, "epochs": 1, "batch_size": 2, "grad_accumulation": 1,
        "lr_connector": 1e-3, "lr_lora": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "max_grad_norm": 1.0, "seed": 5,
        "checkpoint_every": 100, "keep_checkpoints": 1, "log_every": 20,
    });
    let config = root.join("run.json");
    std::fs::write(&config, cfg.to_string()).unwrap();
    let o = train(&config, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model = root.join("run/final");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("og_llava.json")).unwrap())
            .unwrap();
    assert_eq!(meta["image"]["selection"]["order"], "given");
    assert_eq!(meta["image"]["pad_to_square"], false);

    let ask = |flags: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_og-llava"))
            .args([
                "ask",
                "--max-new-tokens",
                "4",
                "--context",
                "512",
                "--model",
            ])
            .arg(&model)
            .arg("--image")
            .arg(root.join("images/0.png"))
            .arg("--masks")
            .arg(root.join("masks/0.json"))
            .args(flags)
            .arg("w5 w6")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };
    let (recorded, err) = ask(&[]);
    assert!(!err.contains("overrides"), "{err}");
    let repeated = [
        "--phi",
        "raster",
        "--alpha",
        "2",
        "--order",
        "given",
        "--frame",
        "clip",
        "--segment-rope",
    ];
    let (flagged, err) = ask(&repeated);
    assert!(!err.contains("overrides"), "{err}");
    assert_eq!(recorded, flagged);
    let (_, err) = ask(&["--no-segment-rope", "--phi", "patch"]);
    assert!(
        err.contains("segment-aware RoPE: false (the model records true")
            && err.contains("Φ: PatchGrid2d"),
        "{err}"
    );
}

/// NCCL sums the gradients of multi-node CUDA runs only; asked for elsewhere it is a usage
/// error that says what it needs.
#[test]
fn nccl_needs_cuda_devices_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.json");
    std::fs::write(&config, "{}").unwrap();
    let o = train(&config, false)
        .args(["--collective", "nccl"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--collective nccl needs CUDA devices and a multi-node run"),
        "{err}"
    );
}
