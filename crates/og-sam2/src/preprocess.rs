//! SAM 2's image transforms (the `sam2` package's `SAM2Transforms`): RGB8 → `[0, 1]` floats →
//! resize to the model's square input (bilinear, antialiased when shrinking, as torchvision's
//! `Resize` on a tensor) → ImageNet normalisation; and the bilinear upsampling of low-resolution
//! mask logits back to the image (`F.interpolate(mode="bilinear", align_corners=False)`).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::error::{Result, Sam2Error};

/// ImageNet mean and standard deviation, per RGB channel.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The largest image accepted (pixels): far above any photo, a bound on what one image
/// allocates.
pub const MAX_IMAGE_PIXELS: usize = 1 << 28;

/// Taps and weights of one output position of an antialiased linear resize.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// PyTorch's `_upsample_bilinear2d_aa` weights along one axis (float arithmetic as PyTorch
/// does it for float32 images): a triangle filter widened by the scale when shrinking.
fn aa_taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f32 / output as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut weights: Vec<f32> = (start..end)
                .map(|j| {
                    let x = ((j as f32 - center + 0.5) * invscale).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let total: f32 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { start, weights }
        })
        .collect()
}

/// Resizes one channel-major plane `[h, w]` to `[oh, ow]`: width first, then height, as
/// PyTorch's separable antialiased kernel.
fn resize_plane(src: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let horizontal = if ow != w {
        let taps = aa_taps(w, ow);
        let mut out = vec![0.0f32; h * ow];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (x, t) in taps.iter().enumerate() {
                out[y * ow + x] = dot(&row[t.start..], &t.weights, 1);
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return horizontal;
    }
    let taps = aa_taps(h, oh);
    let mut out = vec![0.0f32; oh * ow];
    for (y, t) in taps.iter().enumerate() {
        for x in 0..ow {
            out[y * ow + x] = dot(&horizontal[t.start * ow + x..], &t.weights, ow);
        }
    }
    out
}

/// `Σ_j src[j·stride] · weights[j]`, accumulated in order.
fn dot(src: &[f32], weights: &[f32], stride: usize) -> f32 {
    let mut acc = src[0] * weights[0];
    for (j, w) in weights.iter().enumerate().skip(1) {
        acc += src[j * stride] * w;
    }
    acc
}

/// Checks an RGB8 buffer's size.
pub fn check_rgb(rgb: &[u8], width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Sam2Error::Input(format!(
            "an image of {width}x{height} pixels has nothing to segment"
        )));
    }
    if width.saturating_mul(height) > MAX_IMAGE_PIXELS {
        return Err(Sam2Error::Input(format!(
            "a {width}x{height} image is over the {MAX_IMAGE_PIXELS}-pixel limit"
        )));
    }
    if rgb.len() != 3 * width * height {
        return Err(Sam2Error::Input(format!(
            "{} bytes for a {width}x{height} RGB image (want {})",
            rgb.len(),
            3 * width * height
        )));
    }
    Ok(())
}

/// The model input of one row-major RGB8 image: `[1, 3, size[0], size[1]]`.
pub fn pixel_values<B: Backend>(
    rgb: &[u8],
    width: usize,
    height: usize,
    size: [usize; 2],
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    check_rgb(rgb, width, height)?;
    let [oh, ow] = size;
    let mut out = Vec::with_capacity(3 * oh * ow);
    for c in 0..3 {
        let plane: Vec<f32> = rgb[c..]
            .iter()
            .step_by(3)
            .map(|&v| v as f32 / 255.0)
            .collect();
        let resized = resize_plane(&plane, (height, width), (oh, ow));
        out.extend(resized.into_iter().map(|v| (v - MEAN[c]) / STD[c]));
    }
    Ok(Tensor::from_data(
        TensorData::new(out, [1, 3, oh, ow]),
        device,
    ))
}

/// Per output position: the two source indices and the weight of the second
/// (`area_pixel_compute_source_index`, clamped at 0).
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, lambda)
        })
        .collect()
}

/// Bilinear upsampling of one `[h, w]` logit map to `[oh, ow]`
/// (`F.interpolate(mode="bilinear", align_corners=False)`).
pub fn upsample_bilinear(
    src: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let ys = linear_taps(h, oh);
    let xs = linear_taps(w, ow);
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, ly) in &ys {
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, lx) in &xs {
            let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
            let bottom = (1.0 - lx) * r1[x0] + lx * r1[x1];
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antialiased_taps_are_normalised_and_identity_is_exact() {
        for (i, o) in [(451, 64), (64, 1024), (300, 64), (7, 7)] {
            for t in aa_taps(i, o) {
                let s: f32 = t.weights.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o}: {s}");
            }
        }
        let plane: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_plane(&plane, (3, 4), (3, 4)), plane);
    }

    #[test]
    fn bilinear_upsampling_interpolates_between_centres() {
        // 2 → 4: outputs at source positions −0.25 (clamped to 0), 0.25, 0.75, 1.25 (→ last).
        let up = upsample_bilinear(&[0.0, 4.0], (1, 2), (1, 4));
        assert_eq!(up, vec![0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn empty_and_oversized_images_are_refused() {
        assert!(check_rgb(&[], 0, 5).is_err());
        assert!(check_rgb(&[0; 3], 1, 2).is_err());
        assert!(check_rgb(&[], 1 << 15, 1 << 14).is_err());
    }
}
