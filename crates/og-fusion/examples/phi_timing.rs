//! Times Φ + row selection on the masks of a COCO RLE JSON file, for
//! `scripts/compare_phi.py` (which times the paper's Listing 1 in PyTorch on the same masks).
//!
//! `cargo run --release -p og-fusion --example phi_timing -- MASKS.json [REPEATS]`
//! prints one JSON object of median timings in microseconds.

use std::hint::black_box;
use std::time::Instant;

use og_fusion::{Phi, raster_strip_1d};
use og_segment::{Bitmap, MaskSet};
use og_vision::FrameConfig;

fn median_us(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Y = rows of X' selected by each mask, concatenated (the data movement of Eq. 4–5), into a
/// buffer reused across calls as a training loop would.
fn gather(features: &[f32], f: usize, kept: &[Vec<u32>], y: &mut Vec<f32>) -> usize {
    y.clear();
    for k in kept {
        for &i in k {
            y.extend_from_slice(&features[i as usize * f..(i as usize + 1) * f]);
        }
    }
    y.len() / f
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: phi_timing MASKS.json [REPEATS]");
    let repeats: usize = args
        .next()
        .map(|s| s.parse().expect("REPEATS"))
        .unwrap_or(50);
    let set = MaskSet::read_coco_json(&path).unwrap_or_else(|e| panic!("{e}"));
    let (h, w) = (set.height(), set.width());
    let bitmaps: Vec<Bitmap> = set.iter().map(|m| m.rle.to_bitmap()).collect();
    let dense: Vec<Vec<u8>> = bitmaps
        .iter()
        .map(|b| (0..h * w).map(|i| b.get(i / w, i % w) as u8).collect())
        .collect();
    let (v, f) = (576usize, 1024usize);
    let features: Vec<f32> = (0..v * f).map(|i| (i % 97) as f32 * 0.01).collect();

    let mut y = Vec::new();
    let raster = median_us(repeats, || {
        let kept: Vec<Vec<u32>> = bitmaps.iter().map(|b| raster_strip_1d(b, v, 0.5)).collect();
        black_box(gather(&features, f, &kept, &mut y));
    });
    let raster_phi_only = median_us(repeats, || {
        let kept: Vec<Vec<u32>> = bitmaps.iter().map(|b| raster_strip_1d(b, v, 0.5)).collect();
        black_box(kept);
    });
    let rows: usize = bitmaps
        .iter()
        .map(|b| raster_strip_1d(b, v, 0.5).len())
        .sum();
    let frame = FrameConfig::llava_1_5().frame(w, h).expect("frame");
    let patch = median_us(repeats, || {
        let phi = Phi::default().prepare(&frame).expect("phi");
        let kept: Vec<Vec<u32>> = bitmaps.iter().map(|b| phi.kept(b).expect("size")).collect();
        black_box(gather(&features, f, &kept, &mut y));
    });
    let raster_from_rle = median_us(repeats, || {
        let kept: Vec<Vec<u32>> = set
            .iter()
            .map(|m| raster_strip_1d(&m.rle.to_bitmap(), v, 0.5))
            .collect();
        black_box(kept);
    });
    let read_bytes = median_us(repeats, || {
        let mut s = 0u64;
        for d in &dense {
            s += d.iter().map(|&b| b as u64).sum::<u64>();
        }
        black_box(s);
    });
    println!(
        "{{\"masks\": {}, \"height\": {h}, \"width\": {w}, \"raster_rows\": {rows}, \
         \"raster_phi_select_us\": {raster:.1}, \
         \"raster_phi_only_us\": {raster_phi_only:.1}, \"raster_from_rle_us\": {raster_from_rle:.1}, \
         \"patch_phi_select_us\": {patch:.1}, \"read_mask_bytes_us\": {read_bytes:.1}}}",
        set.len()
    );
}
