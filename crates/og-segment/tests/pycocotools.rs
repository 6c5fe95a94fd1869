//! Byte-compatibility with pycocotools on committed fixtures (scripts/make_fixtures.py).

use og_segment::{Bitmap, CountsFormat, MaskSet, Rle};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/rle/pycocotools.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn decode_and_encode_match_pycocotools() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for c in cases {
        let (h, w) = (
            c["height"].as_u64().unwrap() as usize,
            c["width"].as_u64().unwrap() as usize,
        );
        let s = c["counts"].as_str().unwrap();
        let rle = Rle::from_compressed(h, w, s).unwrap();
        let counts: Vec<u32> = c["uncompressed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(rle.counts(), counts.as_slice(), "{}", c["kind"]);
        assert_eq!(rle.to_compressed(), s, "encode {h}x{w} {}", c["kind"]);
        assert_eq!(rle.area(), c["area"].as_u64().unwrap());
        let bbox: Vec<f64> = c["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(rle.bbox().to_vec(), bbox, "bbox {h}x{w} {}", c["kind"]);
        if let Some(bits) = c["bits"].as_str() {
            let bytes: Vec<u8> = bits.bytes().map(|b| b - b'0').collect();
            let bm = Bitmap::from_bytes(h, w, &bytes).unwrap();
            assert_eq!(rle.to_bitmap(), bm);
            assert_eq!(Rle::from_bitmap(&bm), rle);
        }
    }
}

#[test]
fn sam_style_json_reads_and_writes_identically() {
    // A SAM automatic-mask-generator style file built from the fixture strings.
    let records: Vec<Value> = cases()
        .into_iter()
        .filter(|c| c["height"] == 40)
        .map(|c| {
            serde_json::json!({
                "segmentation": {"size": [c["height"], c["width"]], "counts": c["counts"]},
                "area": c["area"], "bbox": c["bbox"], "predicted_iou": 0.93,
                "point_coords": [[1.0, 2.0]], "stability_score": 0.97, "crop_box": [0, 0, 60, 40]
            })
        })
        .collect();
    let text = serde_json::to_string(&records).unwrap();
    let set = MaskSet::from_coco_json_str(&text, "sam.json").unwrap();
    assert_eq!(set.len(), records.len());
    assert_eq!(set.masks()[0].score, Some(0.93));
    let back: Value = serde_json::from_str(&set.to_coco_json(CountsFormat::Compressed)).unwrap();
    for (a, b) in back.as_array().unwrap().iter().zip(&records) {
        assert_eq!(a["segmentation"], b["segmentation"]);
        assert_eq!(a["point_coords"], b["point_coords"]);
        assert_eq!(a["area"], b["area"]);
        assert_eq!(a["bbox"], b["bbox"]);
    }
}
