//! The `tokens --overlay` picture: the encoder's view of the image, the masks tinted, and the
//! grid cells (= rows of X') each mask keeps outlined in the mask's colour. One panel per Φ,
//! side by side (raster-strip left, patch-aligned right when both are drawn).

use image::{Rgb, RgbImage};
use og_fusion::Selection;
use og_segment::MaskSet;
use og_vision::Frame;

/// A colour per mask, well separated in hue.
fn palette(k: usize) -> [u8; 3] {
    let h = (k as f64 * 0.618_033_988_75).fract() * 6.0;
    let x = (1.0 - (h % 2.0 - 1.0).abs()) * 255.0;
    let (r, g, b) = match h as u32 {
        0 => (255.0, x, 0.0),
        1 => (x, 255.0, 0.0),
        2 => (0.0, 255.0, x),
        3 => (0.0, x, 255.0),
        4 => (x, 0.0, 255.0),
        _ => (255.0, 0.0, x),
    };
    [r as u8, g as u8, b as u8]
}

fn blend(p: &mut Rgb<u8>, c: [u8; 3], a: f32) {
    for (v, &c) in p.0.iter_mut().zip(&c) {
        *v = (*v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
    }
}

/// One panel: `base` is the encoder input image (from `Frame::apply_image`).
pub fn panel(base: &RgbImage, frame: &Frame, masks: &MaskSet, selection: &Selection) -> RgbImage {
    let mut img = base.clone();
    let p = frame.config().patch_size as u32;
    let (rows, cols) = frame.grid();
    // Masks, tinted (nearest mapping into the encoder frame).
    for (k, m) in masks.iter().enumerate() {
        let Ok(mapped) = frame.map_mask(&m.rle.to_bitmap()) else {
            continue;
        };
        let c = palette(k);
        for (x, y, px) in img.enumerate_pixels_mut() {
            if mapped.get(y as usize, x as usize) {
                blend(px, c, 0.35);
            }
        }
    }
    // The patch grid, faint.
    for (x, y, px) in img.enumerate_pixels_mut() {
        if x % p == 0 || y % p == 0 {
            blend(px, [255, 255, 255], 0.25);
        }
    }
    // Kept cells, outlined per group (inset by the group's rank so overlaps stay visible).
    for (rank, group) in selection.groups.iter().enumerate() {
        let k = match group.source {
            og_fusion::GroupSource::Mask(k) => k,
            _ => masks.len() + rank,
        };
        let c = palette(k);
        let inset = (rank as u32 % 3).min(p / 4);
        for &i in &group.indices {
            let (r, col) = (i as usize / cols, i as usize % cols);
            if r >= rows {
                continue;
            }
            let (x0, y0) = (col as u32 * p + inset, r as u32 * p + inset);
            let (x1, y1) = (
                (col as u32 + 1) * p - 1 - inset,
                (r as u32 + 1) * p - 1 - inset,
            );
            for x in x0..=x1 {
                img.put_pixel(x, y0, Rgb(c));
                img.put_pixel(x, y1, Rgb(c));
            }
            for y in y0..=y1 {
                img.put_pixel(x0, y, Rgb(c));
                img.put_pixel(x1, y, Rgb(c));
            }
        }
    }
    img
}

/// Panels side by side with an 8-pixel gap.
pub fn side_by_side(panels: &[RgbImage]) -> RgbImage {
    let gap = 8;
    let w: u32 = panels.iter().map(|p| p.width()).sum::<u32>() + gap * (panels.len() as u32 - 1);
    let h = panels.iter().map(|p| p.height()).max().unwrap_or(0);
    let mut out = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let mut x = 0i64;
    for p in panels {
        image::imageops::replace(&mut out, p, x, 0);
        x += p.width() as i64 + gap as i64;
    }
    out
}
