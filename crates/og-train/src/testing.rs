//! A tiny training world for tests and examples, and a weight comparison (used by this crate's
//! and the CLI's tests).

use std::path::Path;

use og_llava::og_segment::{Bitmap, CountsFormat, MaskSet};
use serde_json::json;

/// Writes a tiny training world into `root`: `model/` (a copy of the llava-hf directory
/// `llava` — a 64-token vocabulary with image token 63 is assumed — plus a word-level
/// tokenizer), `images/` (four 30×30 PNGs of coloured squares and one corrupt file), `masks/`
/// (COCO RLE for two of them) and `data.json`: 11 rows — captions with images, two-turn text
/// conversations, one row with two images, a missing image and a corrupt one.
pub fn tiny_world(root: &Path, llava: &Path) {
    let model = root.join("model");
    std::fs::create_dir_all(&model).expect("tiny world");
    for e in std::fs::read_dir(llava).expect("tiny world") {
        let e = e.expect("tiny world");
        std::fs::copy(e.path(), model.join(e.file_name())).expect("tiny world");
    }
    std::fs::write(
        model.join("tokenizer.json"),
        og_llava::og_llm::testing::word_tokenizer_json(64, Some(63)),
    )
    .expect("tiny world");
    let images = root.join("images");
    let masks = root.join("masks");
    std::fs::create_dir_all(&images).expect("tiny world");
    std::fs::create_dir_all(&masks).expect("tiny world");
    let colours = [
        [220u8, 30, 30],
        [30, 200, 40],
        [40, 60, 230],
        [230, 220, 40],
    ];
    let mut rows = Vec::new();
    for (i, c) in colours.iter().enumerate() {
        let img = image::RgbImage::from_fn(30, 30, |x, y| {
            if (8..22).contains(&x) && (8..22).contains(&y) {
                image::Rgb(*c)
            } else {
                image::Rgb([128, 128, 128])
            }
        });
        img.save(images.join(format!("{i}.png")))
            .expect("tiny world");
        if i % 2 == 0 {
            MaskSet::from_bitmaps(&[Bitmap::from_fn(30, 30, |x, y| {
                (8..22).contains(&x) && (8..22).contains(&y)
            })])
            .expect("tiny world")
            .write_coco_json(masks.join(format!("{i}.json")), CountsFormat::Compressed)
            .expect("tiny world");
        }
        let answer = format!("w{} w{}", 10 + i, 20 + i);
        rows.push(
            json!({"id": format!("img{i}"), "image": format!("{i}.png"), "conversations": [
            {"from": "human", "value": "<image>\nw5 w6"}, {"from": "gpt", "value": answer}]}),
        );
        rows.push(json!({"id": format!("txt{i}"), "conversations": [
            {"from": "human", "value": format!("w7 w{}", 30 + i)}, {"from": "gpt", "value": format!("w{}", 40 + i)},
            {"from": "human", "value": "w8"}, {"from": "gpt", "value": "w9 w9"}]}));
    }
    // Two images in one row.
    rows.push(
        json!({"id": "pair", "image": ["0.png", "1.png"], "conversations": [
        {"from": "human", "value": "<image> w5 <image> w6"}, {"from": "gpt", "value": "w50 w51"}]}),
    );
    // Bad rows: a missing image and a corrupt one.
    std::fs::write(images.join("corrupt.png"), b"not a png").expect("tiny world");
    rows.push(
        json!({"id": "missing", "image": "nope.png", "conversations": [
        {"from": "human", "value": "w5"}, {"from": "gpt", "value": "w6"}]}),
    );
    rows.push(
        json!({"id": "corrupt", "image": "corrupt.png", "conversations": [
        {"from": "human", "value": "w5"}, {"from": "gpt", "value": "w6"}]}),
    );
    std::fs::write(
        root.join("data.json"),
        serde_json::to_string(&rows).expect("tiny world"),
    )
    .expect("tiny world");
}

/// Each tensor's largest absolute difference between two safetensors files, by name (sorted).
/// Panics, naming the files, when they cannot be read or hold different tensor names.
pub fn weight_differences(a: &Path, b: &Path) -> Vec<(String, f32)> {
    let open =
        |p: &Path| og_weights::Weights::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (wa, wb) = (open(a), open(b));
    let mut names = wa.names();
    names.sort();
    let mut names_b = wb.names();
    names_b.sort();
    assert_eq!(
        names,
        names_b,
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    names
        .into_iter()
        .map(|n| {
            let (x, _) = wa.f32(n).expect("readable tensor");
            let (y, _) = wb.f32(n).expect("readable tensor");
            let worst = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            (n.to_string(), worst)
        })
        .collect()
}
