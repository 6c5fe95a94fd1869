//! `og-llava eval` on the tiny Llava checkpoint over the benchmark fixtures in their public
//! layouts (fixtures/eval): every protocol writes the result files' contract; an interrupted
//! run resumes without redoing items; `--suite paper` runs every benchmark found and writes
//! Table 1's columns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A temporary folder holding `model/`: the tiny Llava checkpoint with a word-level tokenizer.
fn tiny_model() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    common::write_tiny_llava(&model);
    (dir, model)
}

fn eval(model: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args([
            "eval",
            "--max-new-tokens",
            "3",
            "--context",
            "512",
            "--model",
        ])
        .arg(model)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_protocol_writes_the_contract_and_runs_resume() {
    let (dir, model) = tiny_model();
    let data = fixtures().join("eval/mmbench/MMBench_DEV_EN.tsv");
    let data = data.to_str().unwrap();
    for protocol in ["paper", "likelihood", "circular"] {
        let out = dir.path().join(protocol);
        let out_s = out.to_str().unwrap();
        let o = eval(
            &model,
            &[
                "--benchmark",
                "mmbench",
                "--data",
                data,
                "--protocol",
                protocol,
                "--out",
                out_s,
            ],
        );
        let stdout = ok(&o);
        assert!(stdout.contains("mmbench:"), "{stdout}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(r["benchmark"], "mmbench");
        assert_eq!(r["protocol"], protocol);
        assert_eq!(r["n"], 4);
        let acc = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(r["metrics"].get("circular_accuracy").is_some(), "{r}");
        assert!(r["by_category"].get("season").is_some(), "{r}");
        let items = lines(&out.join("items.jsonl"));
        assert_eq!(items.len(), 4);
        let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["0", "1", "2", "1000001"]);
        assert_eq!(items[0]["gold"], "A");
        let correct = items.iter().filter(|i| i["correct"] == true).count();
        assert!((acc - correct as f64 / 4.0).abs() < 1e-12);
        if protocol == "circular" {
            // One reading per rotation of the four options.
            assert_eq!(items[0]["generated"].as_array().unwrap().len(), 4);
        }
    }
    // Prompts decoded three at a time give the same lines.
    let batched = dir.path().join("circular-batched");
    ok(&eval(
        &model,
        &[
            "--benchmark",
            "mmbench",
            "--data",
            data,
            "--protocol",
            "circular",
            "--batch-size",
            "3",
            "--out",
            batched.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        lines(&batched.join("items.jsonl")),
        lines(&dir.path().join("circular/items.jsonl"))
    );
    // Resume: two items, then the rest; the first two lines stay as they were.
    let out = dir.path().join("resume");
    let out_s = out.to_str().unwrap();
    let cvb = fixtures().join("eval/cvbench/test.jsonl");
    let cvb = cvb.to_str().unwrap();
    ok(&eval(
        &model,
        &[
            "--benchmark",
            "cvbench",
            "--data",
            cvb,
            "--out",
            out_s,
            "--limit",
            "2",
        ],
    ));
    let first = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    assert_eq!(first.lines().count(), 2);
    // An interruption mid-line leaves a partial last line, which is dropped.
    std::fs::write(
        out.join("items.jsonl"),
        format!("{first}{{\"id\": \"2\", \"go"),
    )
    .unwrap();
    let o = eval(
        &model,
        &["--benchmark", "cvbench", "--data", cvb, "--out", out_s],
    );
    let stdout = ok(&o);
    let all = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    assert!(all.starts_with(&first));
    assert_eq!(all.lines().count(), 4);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["n"], 4);
    for k in ["accuracy_2d", "accuracy_3d", "overall"] {
        assert!(r["metrics"].get(k).is_some(), "{k}: {r}");
    }
    assert!(stdout.contains("overall accuracy"), "{stdout}");
    // The same folder under another protocol is refused.
    let o = eval(
        &model,
        &[
            "--benchmark",
            "cvbench",
            "--data",
            cvb,
            "--out",
            out_s,
            "--protocol",
            "likelihood",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another --out"));
}

#[test]
fn the_paper_suite_runs_every_benchmark_found() {
    let (dir, model) = tiny_model();
    let suite = dir.path().join("benchmarks");
    std::fs::create_dir(&suite).unwrap();
    let e = fixtures().join("eval");
    for (name, target) in [
        ("aro-vgr", e.join("aro")),
        ("aro-vga", e.join("aro")),
        ("conme", e.join("conme")),
        ("mmvp", e.join("mmvp")),
        ("cvbench", e.join("cvbench")),
        ("ai2d", e.join("ai2d")),
        ("mme", e.join("mme")),
        ("mmstar", e.join("mmstar")),
        ("mmbench", e.join("mmbench")),
    ] {
        std::os::unix::fs::symlink(target, suite.join(name)).unwrap();
    }
    // A folder of parquet shards, as Hugging Face serves them.
    std::fs::create_dir(suite.join("aro-coco-order")).unwrap();
    std::os::unix::fs::symlink(
        e.join("aro/coco_order.parquet"),
        suite.join("aro-coco-order/test-00000-of-00001.parquet"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = eval(
        &model,
        &[
            "--suite",
            "paper",
            "--data",
            suite.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("aro-flickr-order: skipped"), "{stderr}");
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    for name in ["aro-vgr", "conme", "mme", "mmstar", "mmbench"] {
        assert!(out.join(name).join("results.json").is_file(), "{name}");
        assert!(md.contains(&format!("| {name} |")), "{name}: {md}");
    }
    assert!(md.contains("perception score"), "{md}");
    assert!(md.contains("| aro-flickr-order | — |"), "{md}");
    assert!(stdout.contains("| benchmark |"), "{stdout}");
    let html = std::fs::read_to_string(out.join("table.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("<td>mme</td>"));
    let mme: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mme/results.json")).unwrap())
            .unwrap();
    for k in [
        "perception",
        "cognition",
        "existence/acc+",
        "code_reasoning/score",
    ] {
        assert!(mme["metrics"].get(k).is_some(), "{k}: {mme}");
    }
    let items = lines(&out.join("mme/items.jsonl"));
    assert_eq!(items[1]["id"], "code_reasoning/0020.png#1");
    assert_eq!(items[1]["gold"], "No");
}

/// `--segmenter` scores every item as the mask folder `og-llava segment` writes for the
/// benchmark's images, and differently from the plain path.
#[test]
fn a_segmenter_on_the_fly_scores_as_its_mask_folder() {
    let (dir, model) = tiny_model();
    // MMVP's layout with photos in place of its 8x8 fixture images.
    let mmvp = dir.path().join("mmvp");
    std::fs::create_dir_all(mmvp.join("MMVP Images")).unwrap();
    std::fs::copy(
        fixtures().join("eval/mmvp/Questions.csv"),
        mmvp.join("Questions.csv"),
    )
    .unwrap();
    for (i, photo) in ["astronaut", "chelsea", "coffee", "rocket"]
        .iter()
        .enumerate()
    {
        image::open(fixtures().join(format!("felzenszwalb/{photo}.png")))
            .unwrap()
            .save(mmvp.join(format!("MMVP Images/{}.jpg", i + 1)))
            .unwrap();
    }
    let masks = dir.path().join("masks");
    let params = ["--scale", "300", "--min-size", "100"];
    let o = Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args(["segment", "--images", mmvp.to_str().unwrap(), "--out"])
        .arg(&masks)
        .args(params)
        .output()
        .unwrap();
    ok(&o);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "--benchmark",
            "mmvp",
            "--data",
            mmvp.to_str().unwrap(),
            "--protocol",
            "likelihood",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        ok(&eval(&model, &args));
        lines(&out.join("items.jsonl"))
            .iter()
            .map(|i| i["scores"].clone())
            .collect::<Vec<_>>()
    };
    let folder = run("folder", &["--masks", masks.to_str().unwrap()]);
    let mut live_args = vec!["--segmenter", "felzenszwalb"];
    live_args.extend(params);
    let live = run("live", &live_args);
    let plain = run("plain", &[]);
    assert_eq!(folder, live);
    assert_ne!(live, plain);
}

#[test]
fn missing_masks_and_bad_data_are_clear_errors() {
    let (dir, model) = tiny_model();
    let masks = dir.path().join("masks");
    std::fs::create_dir(&masks).unwrap();
    let mmvp = fixtures().join("eval/mmvp");
    let out = dir.path().join("o");
    let o = eval(
        &model,
        &[
            "--benchmark",
            "mmvp",
            "--data",
            mmvp.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--masks",
            masks.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("MMVP Images/1.json") && err.contains("no mask file"),
        "{err}"
    );
    let o = eval(
        &model,
        &[
            "--benchmark",
            "mmvp",
            "--data",
            "/nonexistent",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent"));
    let o = eval(
        &model,
        &[
            "--benchmark",
            "mmmu",
            "--data",
            "/tmp",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown benchmark"));
}

#[test]
fn bad_rows_stop_the_run_or_are_skipped_and_counted() {
    let (dir, model) = tiny_model();
    // Row 0 is good, row 1 names an option it does not have, row 2's image is not an image.
    let tsv = std::fs::read_to_string(fixtures().join("eval/mmbench/MMBench_DEV_EN.tsv")).unwrap();
    let good = tsv.lines().nth(1).unwrap();
    let header = tsv.lines().next().unwrap();
    let bad_answer = good.replacen("\tA\tgeography", "\tF\tgeography", 1);
    let bad_image = good
        .replacen("0\t", "5\t", 1)
        .split('\t')
        .enumerate()
        .map(|(k, f)| if k == 9 { "bm90IGFuIGltYWdl" } else { f })
        .collect::<Vec<_>>()
        .join("\t");
    let bad_answer = bad_answer.replacen("0\t", "4\t", 1);
    let data = dir.path().join("bench.tsv");
    std::fs::write(
        &data,
        format!("{header}\n{good}\n{bad_answer}\n{bad_image}\n"),
    )
    .unwrap();
    let (data_s, out) = (data.to_str().unwrap(), dir.path().join("o"));
    let out_s = out.to_str().unwrap();
    let o = eval(
        &model,
        &["--benchmark", "mmbench", "--data", data_s, "--out", out_s],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bench.tsv") && err.contains("row 1") && err.contains("answer"),
        "{err}"
    );
    let o = eval(
        &model,
        &[
            "--benchmark",
            "mmbench",
            "--data",
            data_s,
            "--out",
            out_s,
            "--skip-bad-rows",
        ],
    );
    let stdout = ok(&o);
    assert!(stdout.contains("(2 skipped)"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!((r["n"].as_u64(), r["skipped"].as_u64()), (Some(1), Some(2)));
}
