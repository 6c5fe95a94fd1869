//! The automatic mask generator equals the `sam2` package's `SAM2AutomaticMaskGenerator` on
//! the same tiny SAM2Base and photo (scripts/make_sam2_fixtures.py): the same number of masks,
//! each matched by its point prompt (and crop) with mask IoU ≥ 0.99, the same predicted IoU and
//! stability score — with NMS off, with the package's NMS, and with a crop layer.

use burn::backend::NdArray;
use og_sam2::{AmgConfig, Sam2Model, Sam2Segmenter};
use og_segment::{Mask, MaskSet, Segmenter};

type B = NdArray<f32>;

mod common;

use common::{fixtures, photo};

fn point(m: &Mask) -> [f64; 2] {
    let p = &m.extra["point_coords"][0];
    [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()]
}

/// The crop box, whether written as integers (here) or floats (the package).
fn crop(m: &Mask) -> Vec<f64> {
    let values = m.extra["crop_box"].as_array().unwrap();
    values.iter().map(|v| v.as_f64().unwrap()).collect()
}

fn mask_iou(a: &Mask, b: &Mask) -> f64 {
    let (a, b) = (a.rle.to_bitmap(), b.rle.to_bitmap());
    let (mut inter, mut union) = (0u64, 0u64);
    for y in 0..a.height() {
        for x in 0..a.width() {
            let (p, q) = (a.get(y, x), b.get(y, x));
            inter += (p && q) as u64;
            union += (p || q) as u64;
        }
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn check(fixture: &str, config: AmgConfig) {
    let device = Default::default();
    let model = Sam2Model::<B>::open(fixtures().join("sam2/original_t/model.pt"), &device).unwrap();
    let want = MaskSet::read_coco_json(fixtures().join(format!("sam2/{fixture}"))).unwrap();
    let (rgb, w, h) = photo();
    let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = batches.clone();
    let mut segmenter = Sam2Segmenter {
        model,
        config,
        progress: Some(Box::new(move |done, total| {
            seen.lock().unwrap().push((done, total))
        })),
    };
    let got = segmenter.segment(&rgb, w, h).unwrap();
    assert_eq!(got.len(), want.len(), "{fixture}: mask count");
    // Progress starts at 0 and counts every point batch of every crop once, up to the total.
    let reported = batches.lock().unwrap().clone();
    let total = reported.last().unwrap().1;
    assert_eq!(
        reported,
        (0..=total).map(|d| (d, total)).collect::<Vec<_>>()
    );
    let mut used = vec![false; got.len()];
    for (i, m) in want.iter().enumerate() {
        let p = point(m);
        let j = (0..got.len())
            .find(|&j| {
                let q = point(&got.masks()[j]);
                !used[j] && (p[0] - q[0]).abs() < 1e-3 && (p[1] - q[1]).abs() < 1e-3
            })
            .unwrap_or_else(|| panic!("{fixture}: no mask from point {p:?} (mask {i})"));
        used[j] = true;
        let g = &got.masks()[j];
        assert_eq!(crop(g), crop(m), "{fixture}: crop of mask {i}");
        let iou = mask_iou(g, m);
        assert!(iou >= 0.99, "{fixture}: mask {i} IoU {iou}");
        let (gs, ms) = (g.score.unwrap(), m.score.unwrap());
        assert!(
            (gs - ms).abs() < 1e-4,
            "{fixture}: mask {i} predicted IoU {gs} vs {ms}"
        );
        let (gt, mt) = (g.stability.unwrap(), m.stability.unwrap());
        assert!(
            (gt - mt).abs() < 2e-3,
            "{fixture}: mask {i} stability {gt} vs {mt}"
        );
    }
}

fn fixture_config() -> AmgConfig {
    AmgConfig {
        points_per_side: 8,
        points_per_batch: 6,
        pred_iou_thresh: 0.55,
        stability_score_thresh: 0.6,
        box_nms_thresh: 1.0,
        ..AmgConfig::default()
    }
}

#[test]
fn every_mask_equals_the_package() {
    check("original_t_amg.json", fixture_config());
}

#[test]
fn box_nms_keeps_what_the_package_keeps() {
    check(
        "original_t_amg_nms.json",
        AmgConfig {
            box_nms_thresh: 0.7,
            ..fixture_config()
        },
    );
}

#[test]
fn crop_layers_equal_the_package() {
    check(
        "original_t_amg_crops.json",
        AmgConfig {
            crop_n_layers: 1,
            crop_nms_thresh: 1.0,
            ..fixture_config()
        },
    );
}

#[test]
fn empty_and_oversized_images_are_refused() {
    let device = Default::default();
    let model = Sam2Model::<B>::open(fixtures().join("sam2/original_t/model.pt"), &device).unwrap();
    let config = AmgConfig {
        max_pixels: 100,
        ..fixture_config()
    };
    let e = config.generate(&model, &[], 0, 0).unwrap_err();
    assert!(e.to_string().contains("0x0"), "{e}");
    let e = config
        .generate(&model, &[0; 3 * 11 * 10], 11, 10)
        .unwrap_err();
    assert!(e.to_string().contains("100-pixel limit"), "{e}");
    let bad = AmgConfig {
        points_per_side: 0,
        ..fixture_config()
    };
    assert!(bad.generate(&model, &[0; 3 * 4], 2, 2).is_err());
    let bad = AmgConfig {
        crop_overlap_ratio: 1.5,
        ..fixture_config()
    };
    assert!(bad.generate(&model, &[0; 3 * 4], 2, 2).is_err());
    // Crop layers on a 3×2 image leave some crops empty: they are skipped, not a failure.
    let tiny = AmgConfig {
        crop_n_layers: 2,
        ..fixture_config()
    };
    tiny.generate(&model, &[90; 3 * 6], 3, 2).unwrap();
}

#[test]
fn small_regions_are_removed_as_the_package_removes_them() {
    use og_sam2::{Region, remove_small_regions};
    use og_segment::Rle;
    let text = std::fs::read_to_string(fixtures().join("sam2/small_regions.json")).unwrap();
    let f: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (h, w) = (
        f["height"].as_u64().unwrap() as usize,
        f["width"].as_u64().unwrap() as usize,
    );
    let input = Rle::from_compressed(h, w, f["input"].as_str().unwrap())
        .unwrap()
        .to_bitmap();
    for case in f["cases"].as_array().unwrap() {
        let region = match case["mode"].as_str().unwrap() {
            "holes" => Region::Holes,
            _ => Region::Islands,
        };
        let area = case["area"].as_u64().unwrap() as usize;
        let (out, changed) = remove_small_regions(&input, area, region);
        assert_eq!(changed, case["changed"].as_bool().unwrap(), "{case}");
        let want = Rle::from_compressed(h, w, case["output"].as_str().unwrap()).unwrap();
        assert_eq!(
            Rle::from_bitmap(&out),
            want,
            "{region:?} below {area} pixels"
        );
    }
}
