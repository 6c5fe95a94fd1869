//! `og-llava gpu-check` on the CPU backends at tiny shapes: the half of the GPU check that
//! runs everywhere (`cargo xtask gpu-check --device flex`).

use std::process::Command;

use serde_json::Value;

fn gpu_check(device: &str, out: &std::path::Path) -> (bool, Value) {
    let status = Command::new(env!("CARGO_BIN_EXE_og-llava"))
        .args([
            "gpu-check",
            "--device",
            device,
            "--steps",
            "1",
            "--decode-tokens",
            "4",
        ])
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    (status.success(), report)
}

#[test]
fn flex_passes_parity_and_the_step_in_f32_and_bf16_and_reports_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, report) = gpu_check("flex", dir.path());
    assert!(ok, "{report:#}");
    assert_eq!(report["pass"], true);
    assert_eq!(report["shapes"], "tiny");
    for phase in ["f32", "bf16"] {
        let p = &report["phases"][phase]["ran"];
        assert_eq!(p["precision"], phase, "{report:#}");
        let parity = p["parity"].as_array().unwrap();
        let names: Vec<&str> = parity.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "vision features",
                "llm logits",
                "llava path logits",
                "og path logits"
            ]
        );
        for c in parity {
            assert_eq!(c["pass"], true, "{c}");
            assert!(c["max_abs_diff"].as_f64().unwrap() <= c["tolerance"].as_f64().unwrap());
            assert!(c["reference_max_abs"].as_f64().unwrap() > 0.0);
        }
        let step = &p["sft_step"];
        assert_eq!(step["pass"], true);
        assert!(step["loss"].as_f64().unwrap() > 0.0);
        assert!(step["grad_norm"].as_f64().unwrap() > 0.0);
        let t = &p["throughput"];
        assert_eq!(t["batch"], 2);
        for key in [
            "step_s",
            "train_tokens_per_s",
            "model_tflops",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
        ] {
            let v = t[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{key}: {v}");
        }
        assert!(t["mfu"].is_null(), "no peak is known for a CPU");
    }
    // f32 agrees far more tightly than the tolerance; the probe runs in the f32 phase.
    let f32 = &report["phases"]["f32"]["ran"];
    assert!(f32["parity"][3]["max_abs_diff"].as_f64().unwrap() < 1e-5);
    assert!(f32["device_check"]["median_ms"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("PASS") && md.contains("## f32") && md.contains("## bf16"));
}

#[test]
fn a_backend_without_bf16_skips_that_phase() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, report) = gpu_check("ndarray", dir.path());
    assert!(ok, "{report:#}");
    assert!(
        report["phases"]["bf16"]["skipped"]["reason"]
            .as_str()
            .unwrap()
            .contains("bf16"),
        "{report:#}"
    );
    assert_eq!(report["phases"]["f32"]["ran"]["sft_step"]["pass"], true);
}
