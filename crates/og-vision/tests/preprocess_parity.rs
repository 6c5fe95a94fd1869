//! Our preprocessing (Frame: optional expand2square, shortest-side bicubic resize, centre crop)
//! against transformers' CLIPImageProcessor (PIL bicubic) on the four shared photos
//! (fixtures/images; fixture by scripts/make_vision_fixtures.py), before normalisation: equal on
//! the losslessly stored photos (our resize is Pillow's), within 2/255 on the JPEG (where the
//! JPEG decoders differ).

use og_vision::{FrameConfig, load_rgb};
use serde_json::Value;

#[test]
fn pixels_match_clip_image_processor() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("vision/preprocess.json")).unwrap(),
    )
    .unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    let mut failed = false;
    let mut report = Vec::new();
    for c in cases {
        let name = c["image"].as_str().unwrap();
        let img = load_rgb(root.join("images").join(name)).unwrap();
        let cfg = match c["mode"].as_str().unwrap() {
            "clip" => FrameConfig::clip_336(),
            _ => FrameConfig::llava_1_5(),
        };
        let frame = cfg
            .frame(img.width() as usize, img.height() as usize)
            .unwrap();
        let out = frame.apply_image(&img).unwrap();
        let (start, step) = (
            c["grid_start"].as_u64().unwrap() as u32,
            c["grid_step"].as_u64().unwrap() as u32,
        );
        let coords: Vec<u32> = (start..336).step_by(step as usize).collect();
        let want: Vec<i64> = c["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let n = coords.len();
        let mut case_worst = 0;
        let mut sum_abs = 0i64;
        for ch in 0..3 {
            for (yi, &y) in coords.iter().enumerate() {
                for (xi, &x) in coords.iter().enumerate() {
                    let got = out.get_pixel(x, y).0[ch] as i64;
                    let d = (got - want[ch * n * n + yi * n + xi]).abs();
                    case_worst = case_worst.max(d);
                    sum_abs += d;
                }
            }
        }
        report.push(format!(
            "{name} {}: max {case_worst}, mean {:.3}",
            c["mode"],
            sum_abs as f64 / (3 * n * n) as f64
        ));
        let tolerance = if name.ends_with(".jpg") { 2 } else { 0 };
        failed |= case_worst > tolerance;
    }
    assert!(
        !failed,
        "pixel differences above tolerance:\n{}",
        report.join("\n")
    );
    eprintln!("{}", report.join("\n"));
}
