//! Felzenszwalb against scikit-image: the partitions `scripts/make_felzenszwalb_fixtures.py`
//! recorded for four photos and five parameter sets.

use std::collections::HashMap;
use std::path::Path;

use og_segment::{FelzenszwalbConfig, felzenszwalb};
use serde_json::Value;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/felzenszwalb")
}

/// Adjusted Rand index of two labellings of the same pixels (Hubert & Arabie).
fn adjusted_rand_index(a: &[u32], b: &[u32]) -> f64 {
    let pairs = |n: f64| n * (n - 1.0) / 2.0;
    let mut joint: HashMap<(u32, u32), f64> = HashMap::new();
    let (mut rows, mut cols): (HashMap<u32, f64>, HashMap<u32, f64>) = Default::default();
    for (&x, &y) in a.iter().zip(b) {
        *joint.entry((x, y)).or_default() += 1.0;
        *rows.entry(x).or_default() += 1.0;
        *cols.entry(y).or_default() += 1.0;
    }
    let index: f64 = joint.values().map(|&n| pairs(n)).sum();
    let (sa, sb): (f64, f64) = (
        rows.values().map(|&n| pairs(n)).sum(),
        cols.values().map(|&n| pairs(n)).sum(),
    );
    let expected = sa * sb / pairs(a.len() as f64);
    let max = (sa + sb) / 2.0;
    if max == expected {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[test]
fn partitions_equal_scikit_image() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut identical = 0;
    for case in cases {
        let image = image::open(dir().join(case["image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let (w, h) = (image.width() as usize, image.height() as usize);
        let want: Vec<u32> = image::open(dir().join(case["labels"].as_str().unwrap()))
            .unwrap()
            .to_luma16()
            .into_raw()
            .into_iter()
            .map(u32::from)
            .collect();
        let cfg = FelzenszwalbConfig {
            scale: case["scale"].as_f64().unwrap(),
            sigma: case["sigma"].as_f64().unwrap(),
            min_size: case["min_size"].as_u64().unwrap() as usize,
            ..Default::default()
        };
        let got = felzenszwalb(image.as_raw(), w, h, &cfg).unwrap();
        let ari = adjusted_rand_index(&got.labels, &want);
        let name = format!(
            "{} scale {} sigma {} min_size {}",
            case["image"], cfg.scale, cfg.sigma, cfg.min_size
        );
        eprintln!(
            "{name}: {} segments (scikit-image {}), ARI {ari:.6}",
            got.count, case["count"]
        );
        if got.labels == want {
            identical += 1;
        } else {
            assert!(ari >= 0.999, "{name}: ARI {ari}");
        }
    }
    eprintln!("{identical}/{} identical", cases.len());
}

#[test]
fn adjusted_rand_index_is_one_for_renamed_labels_and_lower_otherwise() {
    let a = [0, 0, 1, 1, 2, 2];
    assert_eq!(adjusted_rand_index(&a, &[5, 5, 3, 3, 9, 9]), 1.0);
    assert!(adjusted_rand_index(&a, &[0, 1, 0, 1, 0, 1]) < 0.0);
}
