//! Φ `RasterStrip1d` is bit-exact with the paper's Listing 1 run in PyTorch
//! (fixture written by scripts/make_fixtures.py).

use og_fusion::raster_strip_1d;
use og_segment::Rle;
use serde_json::Value;

#[test]
fn raster_strip_matches_pytorch_listing() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/phi/listing1.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() > 200);
    let mut nonempty = 0;
    for c in cases {
        let (h, w) = (
            c["height"].as_u64().unwrap() as usize,
            c["width"].as_u64().unwrap() as usize,
        );
        let mask = Rle::from_compressed(h, w, c["counts"].as_str().unwrap())
            .unwrap()
            .to_bitmap();
        let bins = c["bins"].as_u64().unwrap() as usize;
        let alpha = c["alpha"].as_f64().unwrap();
        let want: Vec<u32> = c["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = raster_strip_1d(&mask, bins, alpha as f32);
        assert_eq!(got, want, "{h}x{w} {} bins={bins} alpha={alpha}", c["kind"]);
        nonempty += !want.is_empty() as usize;
    }
    assert!(nonempty > 100, "the fixture exercises kept bins");
}
