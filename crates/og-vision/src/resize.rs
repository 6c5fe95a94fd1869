//! Bicubic resampling as Pillow does it (`Image.resize(..., BICUBIC)`, which
//! `CLIPImageProcessor` calls): separable, antialiased when shrinking (the kernel support grows
//! with the scale), a = −0.5, coefficients in 22-bit fixed point, horizontal pass first with the
//! intermediate rounded and clipped to 8 bits, then the vertical pass.
//!
//! The `image` crate's Catmull-Rom resize uses the same kernel but a float intermediate and the
//! other pass order; on the shared photos it differs from Pillow by up to 6/255, this by 0–1
//! (rounding only).

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position: first input index, and fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for x in 0..xmax {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = v * (1u64 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if v < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        bounds,
        weights,
        ksize,
    }
}

#[inline]
fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an RGB8 image to `width`×`height` exactly as Pillow's BICUBIC.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if (iw, ih) == (ow, oh) {
        return img.clone();
    }
    let src = img.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass (only where the width changes), over the rows the vertical pass reads.
    let vert = coeffs(ih, oh);
    let (row0, row1) = if oh != ih {
        let first = vert.bounds[0].0;
        let (lmin, lsize) = vert.bounds[oh - 1];
        (first, lmin + lsize)
    } else {
        (0, ih)
    };
    let rows = row1 - row0;
    let temp: Vec<u8> = if ow != iw {
        let hc = coeffs(iw, ow);
        let mut out = vec![0u8; rows * ow * 3];
        for y in 0..rows {
            let line = &src[(y + row0) * iw * 3..(y + row0 + 1) * iw * 3];
            for (xx, &(xmin, xmax)) in hc.bounds.iter().enumerate() {
                let k = &hc.weights[xx * hc.ksize..xx * hc.ksize + xmax];
                let mut ss = [half; 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &line[(x + xmin) * 3..(x + xmin) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += p[c] as i64 * kx as i64;
                    }
                }
                for c in 0..3 {
                    out[(y * ow + xx) * 3 + c] = clip8(ss[c]);
                }
            }
        }
        out
    } else {
        src[row0 * iw * 3..row1 * iw * 3].to_vec()
    };
    if oh == ih {
        return RgbImage::from_raw(width, height, temp).expect("sized buffer");
    }
    let mut out = vec![0u8; oh * ow * 3];
    for (yy, &(ymin, ymax)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + ymax];
        let ymin = ymin - row0;
        for xx in 0..ow {
            let mut ss = [half; 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = &temp[((y + ymin) * ow + xx) * 3..((y + ymin) * ow + xx) * 3 + 3];
                for c in 0..3 {
                    ss[c] += p[c] as i64 * ky as i64;
                }
            }
            for c in 0..3 {
                out[(yy * ow + xx) * 3 + c] = clip8(ss[c]);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("sized buffer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant_and_sizes_hold() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 200, 255]));
        for (w, h) in [(10, 10), (74, 46), (37, 5), (3, 23)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [10, 200, 255]), "{w}x{h}");
        }
    }
}
