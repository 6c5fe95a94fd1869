//! [`Frame`]: the geometry from an original image to the vision encoder's input, applied alike
//! to the image and to its masks.
//!
//! The steps are those of LLaVA-1.5 and `CLIPImageProcessor`:
//! 1. optional `expand2square`: pad to a square with the mean colour, the image placed at
//!    offset `((S−W)/2, 0)` or `(0, (S−H)/2)` (integer division), as LLaVA's `expand2square`;
//! 2. resize so the shortest side equals `shortest_edge`, the long side `⌊size·long/short⌋`
//!    (transformers' `get_resize_output_image_size`);
//! 3. centre crop to `crop_height`×`crop_width` at offset `⌊(H'−h)/2⌋`, `⌊(W'−w)/2⌋` (padding
//!    with zeros where the resized image is smaller than the crop).
//!
//! Continuous coordinates: original pixel `(x, y)` covers `[x, x+1)×[y, y+1)`; the frame maps
//! this square affinely to the encoder input, where patch `(r, c)` covers
//! `[c·p, (c+1)·p)×[r·p, (r+1)·p)`. Masks are mapped with *area* semantics (exact overlap of
//! pixel footprints with patches, [`Frame::patch_coverage`]) or *nearest* semantics
//! ([`Frame::map_mask`], a mask at the encoder resolution).

use image::{Rgb, RgbImage, imageops};
use og_segment::Bitmap;
use serde::{Deserialize, Serialize};

use crate::error::{Result, VisionError};

/// CLIP's normalisation mean, as `CLIPImageProcessor.image_mean`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation std, as `CLIPImageProcessor.image_std`.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How an image becomes an encoder input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrameConfig {
    /// LLaVA's `expand2square` before resizing (`image_aspect_ratio = "pad"`).
    pub pad_to_square: bool,
    /// Padding colour: LLaVA uses `int(255·mean)` per channel.
    pub pad_color: [u8; 3],
    /// Target of the shortest side after resizing.
    pub shortest_edge: usize,
    pub crop_height: usize,
    pub crop_width: usize,
    /// Side of one encoder patch in encoder-input pixels.
    pub patch_size: usize,
}

impl FrameConfig {
    /// `CLIPImageProcessor` for ViT-L/14@336: resize shortest side 336, centre crop 336, p=14.
    pub fn clip_336() -> Self {
        Self {
            pad_to_square: false,
            pad_color: mean_color(CLIP_MEAN),
            shortest_edge: 336,
            crop_height: 336,
            crop_width: 336,
            patch_size: 14,
        }
    }

    /// LLaVA-1.5 training and evaluation: `expand2square` with the CLIP mean colour, then
    /// [`FrameConfig::clip_336`]. The 24×24 grid of OG-LLaVA.
    pub fn llava_1_5() -> Self {
        Self {
            pad_to_square: true,
            ..Self::clip_336()
        }
    }

    /// A square encoder input of `size` pixels with patches of `patch_size`, padded to square.
    pub fn square(size: usize, patch_size: usize) -> Self {
        Self {
            pad_to_square: true,
            pad_color: mean_color(CLIP_MEAN),
            shortest_edge: size,
            crop_height: size,
            crop_width: size,
            patch_size,
        }
    }

    /// The frame of an image of `width`×`height`.
    pub fn frame(&self, width: usize, height: usize) -> Result<Frame> {
        Frame::new(*self, width, height)
    }
}

/// The largest padded or resized image a frame may ask for (2²⁷ pixels, 384 MiB as RGB8): a
/// photo of 11 000 × 11 000 pixels fits, a 1 × 100 000 strip padded to a square does not.
pub const MAX_INTERMEDIATE_PIXELS: u128 = 1 << 27;

/// LLaVA's padding colour: `tuple(int(x * 255) for x in image_mean)`.
pub fn mean_color(mean: [f32; 3]) -> [u8; 3] {
    mean.map(|m| (m as f64 * 255.0) as u8)
}

/// One axis of a frame: original extent → padded → resized → cropped.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    original: usize,
    pad_before: usize,
    padded: usize,
    resized: usize,
    /// Offset of the crop window in the resized image (negative: the crop pads).
    crop_offset: i64,
    out: usize,
}

impl Axis {
    fn scale(&self) -> f64 {
        self.resized as f64 / self.padded as f64
    }

    /// Original continuous coordinate → encoder-input coordinate.
    fn forward(&self, u: f64) -> f64 {
        (u + self.pad_before as f64) * self.scale() - self.crop_offset as f64
    }

    /// Encoder-input coordinate → original continuous coordinate.
    fn inverse(&self, v: f64) -> f64 {
        (v + self.crop_offset as f64) / self.scale() - self.pad_before as f64
    }

    /// For every patch along this axis, the original pixels overlapping it and the overlap
    /// length (in encoder pixels), clipped to the encoder input.
    fn patch_weights(&self, patch: usize) -> Vec<Vec<(usize, f64)>> {
        let cells = self.out / patch;
        let mut out = vec![Vec::new(); cells];
        for (c, list) in out.iter_mut().enumerate() {
            let (lo, hi) = ((c * patch) as f64, ((c + 1) * patch) as f64);
            let first = self.inverse(lo).floor().max(0.0) as usize;
            let last = (self.inverse(hi).ceil().max(0.0) as usize).min(self.original);
            for x in first..last {
                let a = self.forward(x as f64).max(lo);
                let b = self.forward(x as f64 + 1.0).min(hi);
                if b > a + 1e-12 {
                    list.push((x, b - a));
                }
            }
        }
        out
    }
}

/// The geometry of one image through a [`FrameConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    config: FrameConfig,
    x: Axis,
    y: Axis,
}

impl Frame {
    pub fn new(config: FrameConfig, width: usize, height: usize) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(VisionError::ZeroSize { width, height });
        }
        let p = config.patch_size;
        if p == 0
            || config.shortest_edge == 0
            || config.crop_width < p
            || config.crop_height < p
            || !config.crop_width.is_multiple_of(p)
            || !config.crop_height.is_multiple_of(p)
        {
            return Err(VisionError::BadFrame(format!(
                "crop {}x{} is not a positive multiple of the patch size {p} (shortest edge {})",
                config.crop_width, config.crop_height, config.shortest_edge
            )));
        }
        let (pw, ph, pad_x, pad_y) = if config.pad_to_square && width != height {
            let s = width.max(height);
            (s, s, (s - width) / 2, (s - height) / 2)
        } else {
            (width, height, 0, 0)
        };
        // transformers: get_resize_output_image_size(default_to_square=False)
        let size = config.shortest_edge;
        let (rw, rh) = if pw <= ph {
            (size, (size as f64 * ph as f64 / pw as f64) as usize)
        } else {
            ((size as f64 * pw as f64 / ph as f64) as usize, size)
        };
        let largest = (pw as u128 * ph as u128).max(rw as u128 * rh as u128);
        if largest > MAX_INTERMEDIATE_PIXELS {
            return Err(VisionError::TooLarge {
                width,
                height,
                pixels: largest,
                limit: MAX_INTERMEDIATE_PIXELS,
            });
        }
        let axis = |original, pad_before, padded, resized: usize, out: usize| Axis {
            original,
            pad_before,
            padded,
            resized,
            crop_offset: (resized as i64 - out as i64).div_euclid(2),
            out,
        };
        Ok(Self {
            config,
            x: axis(width, pad_x, pw, rw, config.crop_width),
            y: axis(height, pad_y, ph, rh, config.crop_height),
        })
    }

    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Original image size (width, height).
    pub fn original_size(&self) -> (usize, usize) {
        (self.x.original, self.y.original)
    }

    /// Encoder input size (width, height).
    pub fn output_size(&self) -> (usize, usize) {
        (self.x.out, self.y.out)
    }

    /// Size after resizing, before the crop (width, height).
    pub fn resized_size(&self) -> (usize, usize) {
        (self.x.resized, self.y.resized)
    }

    /// Patch grid (rows, columns).
    pub fn grid(&self) -> (usize, usize) {
        let p = self.config.patch_size;
        (self.y.out / p, self.x.out / p)
    }

    /// Number of patches V = rows·columns.
    pub fn num_patches(&self) -> usize {
        let (r, c) = self.grid();
        r * c
    }

    /// Maps a point in original continuous pixel coordinates to encoder-input coordinates.
    pub fn map_point(&self, x: f64, y: f64) -> (f64, f64) {
        (self.x.forward(x), self.y.forward(y))
    }

    /// Maps a point of the encoder input back to original coordinates.
    pub fn unmap_point(&self, x: f64, y: f64) -> (f64, f64) {
        (self.x.inverse(x), self.y.inverse(y))
    }

    /// The raster patch index (`r·columns + c`) holding the centre of original pixel `(x, y)`,
    /// or `None` where the crop removed it.
    pub fn patch_of_pixel(&self, x: usize, y: usize) -> Option<usize> {
        let (u, v) = self.map_point(x as f64 + 0.5, y as f64 + 0.5);
        let p = self.config.patch_size as f64;
        let (rows, cols) = self.grid();
        if u < 0.0 || v < 0.0 {
            return None;
        }
        let (c, r) = ((u / p) as usize, (v / p) as usize);
        (r < rows && c < cols).then_some(r * cols + c)
    }

    fn check_mask(&self, mask: &Bitmap) -> Result<()> {
        if (mask.width(), mask.height()) != (self.x.original, self.y.original) {
            return Err(VisionError::MaskSize {
                mask_w: mask.width(),
                mask_h: mask.height(),
                image_w: self.x.original,
                image_h: self.y.original,
            });
        }
        Ok(())
    }

    /// Area of each patch covered by the mask, in encoder-input pixels (a fully covered patch
    /// gives `p²`), raster order. Exact: every original pixel's footprint is intersected with
    /// the patches it overlaps, so the result does not depend on any resampling filter.
    pub fn patch_coverage(&self, mask: &Bitmap) -> Result<Vec<f64>> {
        self.check_mask(mask)?;
        Ok(PatchCoverage::new(self).coverage(mask))
    }

    /// The mask at the encoder resolution with nearest-neighbour semantics (an output pixel
    /// takes the original pixel under its centre; padding is background).
    pub fn map_mask(&self, mask: &Bitmap) -> Result<Bitmap> {
        self.check_mask(mask)?;
        let xs: Vec<Option<usize>> = (0..self.x.out)
            .map(|u| self.source_index(&self.x, u))
            .collect();
        let ys: Vec<Option<usize>> = (0..self.y.out)
            .map(|v| self.source_index(&self.y, v))
            .collect();
        Ok(Bitmap::from_fn(self.y.out, self.x.out, |v, u| {
            match (ys[v], xs[u]) {
                (Some(y), Some(x)) => mask.get(y, x),
                _ => false,
            }
        }))
    }

    fn source_index(&self, axis: &Axis, out: usize) -> Option<usize> {
        let s = axis.inverse(out as f64 + 0.5).floor();
        (s >= 0.0 && (s as usize) < axis.original).then_some(s as usize)
    }

    /// The encoder input image: pad (if configured), resize with Pillow's bicubic (as
    /// `CLIPImageProcessor`; see [`crate::resize`]), centre crop.
    pub fn apply_image(&self, image: &RgbImage) -> Result<RgbImage> {
        if (image.width() as usize, image.height() as usize) != (self.x.original, self.y.original) {
            return Err(VisionError::BadFrame(format!(
                "frame made for {}x{} applied to a {}x{} image",
                self.x.original,
                self.y.original,
                image.width(),
                image.height()
            )));
        }
        let padded = if (self.x.padded, self.y.padded) != (self.x.original, self.y.original) {
            let mut canvas = RgbImage::from_pixel(
                self.x.padded as u32,
                self.y.padded as u32,
                Rgb(self.config.pad_color),
            );
            imageops::replace(
                &mut canvas,
                image,
                self.x.pad_before as i64,
                self.y.pad_before as i64,
            );
            canvas
        } else {
            image.clone()
        };
        let resized = if (self.x.resized, self.y.resized) != (self.x.padded, self.y.padded) {
            crate::resize::resize_bicubic(&padded, self.x.resized as u32, self.y.resized as u32)
        } else {
            padded
        };
        let mut out = RgbImage::new(self.x.out as u32, self.y.out as u32);
        imageops::replace(&mut out, &resized, -self.x.crop_offset, -self.y.crop_offset);
        Ok(out)
    }
}

/// Precomputed per-frame overlap weights for [`Frame::patch_coverage`]; build once per frame
/// and reuse for every mask of the image.
#[derive(Debug, Clone)]
pub struct PatchCoverage {
    rows: usize,
    cols: usize,
    /// Per original row y: the patch rows it overlaps and the overlap length.
    row_weights: Vec<Vec<(usize, f64)>>,
    /// Per patch column: (fully-overlapping x range, its weight, partial pixels).
    col_spans: Vec<ColSpan>,
    width: usize,
    height: usize,
}

#[derive(Debug, Clone)]
struct ColSpan {
    full: (usize, usize),
    full_weight: f64,
    partial: Vec<(usize, f64)>,
}

impl PatchCoverage {
    pub fn new(frame: &Frame) -> Self {
        let p = frame.config.patch_size;
        let (rows, cols) = frame.grid();
        let mut row_weights = vec![Vec::new(); frame.y.original];
        for (r, list) in frame.y.patch_weights(p).into_iter().enumerate() {
            for (y, w) in list {
                row_weights[y].push((r, w));
            }
        }
        let sx = frame.x.scale();
        let col_spans = frame
            .x
            .patch_weights(p)
            .into_iter()
            .map(|list| {
                let full: Vec<usize> = list
                    .iter()
                    .filter(|(_, w)| (w - sx).abs() < 1e-9)
                    .map(|&(x, _)| x)
                    .collect();
                let full_range = match (full.first(), full.last()) {
                    (Some(&a), Some(&b)) if b + 1 - a == full.len() => (a, b + 1),
                    _ => (0, 0),
                };
                let partial = list
                    .into_iter()
                    .filter(|&(x, _)| !(full_range.0..full_range.1).contains(&x))
                    .collect();
                ColSpan {
                    full: full_range,
                    full_weight: sx,
                    partial,
                }
            })
            .collect();
        Self {
            rows,
            cols,
            row_weights,
            col_spans,
            width: frame.x.original,
            height: frame.y.original,
        }
    }

    /// Covered area per patch (encoder pixels), raster order. The mask must have the frame's
    /// original size (checked by [`Frame::patch_coverage`]).
    pub fn coverage(&self, mask: &Bitmap) -> Vec<f64> {
        debug_assert_eq!((mask.width(), mask.height()), (self.width, self.height));
        let mut cov = vec![0.0; self.rows * self.cols];
        let mut row_cov = vec![0.0; self.cols];
        for (y, weights) in self.row_weights.iter().enumerate() {
            if weights.is_empty() {
                continue;
            }
            let base = y * self.width;
            if mask.count_range(base, base + self.width) == 0 {
                continue;
            }
            for (c, span) in self.col_spans.iter().enumerate() {
                let n = mask.count_range(base + span.full.0, base + span.full.1);
                let mut v = n as f64 * span.full_weight;
                for &(x, w) in &span.partial {
                    if mask.get(y, x) {
                        v += w;
                    }
                }
                row_cov[c] = v;
            }
            for &(r, wy) in weights {
                for c in 0..self.cols {
                    cov[r * self.cols + c] += wy * row_cov[c];
                }
            }
        }
        cov
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strip_that_would_pad_to_a_huge_square_is_refused() {
        let e = FrameConfig::llava_1_5().frame(1, 100_000).unwrap_err();
        assert!(matches!(e, VisionError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("1x100000"), "{e}");
        // Resized without padding, the same strip would be 336 × 33.6 M pixels: refused too.
        assert!(FrameConfig::clip_336().frame(1, 1_000_000).is_err());
        // A large photo is fine.
        assert!(FrameConfig::llava_1_5().frame(8000, 6000).is_ok());
    }

    #[test]
    fn llava_frame_geometry() {
        // 640x480 → pad to 640x640 (image at y=80) → 336x336, no crop.
        let f = FrameConfig::llava_1_5().frame(640, 480).unwrap();
        assert_eq!(f.output_size(), (336, 336));
        assert_eq!(f.grid(), (24, 24));
        let (u, v) = f.map_point(0.0, 0.0);
        assert!((u - 0.0).abs() < 1e-9 && (v - 80.0 * 336.0 / 640.0).abs() < 1e-9);
        // CLIP processor: 640x480 → 448x336 → crop x from 56.
        let f = FrameConfig::clip_336().frame(640, 480).unwrap();
        assert_eq!(f.resized_size(), (448, 336));
        let (u, _) = f.map_point(0.0, 0.0);
        assert!((u + 56.0).abs() < 1e-9);
        assert_eq!(f.patch_of_pixel(0, 0), None);
        assert_eq!(mean_color(CLIP_MEAN), [122, 116, 104]);
    }

    /// Original pixels whose centres land in a patch, mapped through pad and crop, find the
    /// patch the frame names.
    #[test]
    fn pixels_land_in_their_patch() {
        for (cfg, w, h) in [
            (FrameConfig::llava_1_5(), 672, 448),
            (FrameConfig::clip_336(), 500, 375),
            (FrameConfig::llava_1_5(), 300, 451),
        ] {
            let f = cfg.frame(w, h).unwrap();
            let p = 14.0;
            for (x, y) in [(0, 0), (w / 2, h / 2), (w - 1, h - 1), (w / 3, h - 2)] {
                let (u, v) = f.map_point(x as f64 + 0.5, y as f64 + 0.5);
                let expect = (u >= 0.0 && v >= 0.0 && u < 336.0 && v < 336.0)
                    .then(|| (v / p) as usize * 24 + (u / p) as usize);
                assert_eq!(f.patch_of_pixel(x, y), expect);
            }
        }
        // Through the pad: 672x448 padded to 672x672 puts the image at y = 112 (= 56 after
        // the 0.5 resize = patch row 4).
        let f = FrameConfig::llava_1_5().frame(672, 448).unwrap();
        assert_eq!(f.patch_of_pixel(0, 0), Some(4 * 24));
        assert_eq!(f.patch_of_pixel(671, 447), Some(19 * 24 + 23));
    }

    #[test]
    fn coverage_of_one_patch_preimage() {
        let f = FrameConfig::llava_1_5().frame(672, 448).unwrap();
        // Patch (r=10, c=7) covers encoder [98,112)x[140,154) = original x [196,224),
        // y [280-112, 308-112).
        let m = Bitmap::from_fn(448, 672, |y, x| {
            (168..196).contains(&y) && (196..224).contains(&x)
        });
        let cov = f.patch_coverage(&m).unwrap();
        for (i, &c) in cov.iter().enumerate() {
            if i == 10 * 24 + 7 {
                assert!((c - 196.0).abs() < 1e-9, "{c}");
            } else {
                assert_eq!(c, 0.0, "patch {i}");
            }
        }
        let total: f64 = f
            .patch_coverage(&Bitmap::from_fn(448, 672, |_, _| true))
            .unwrap()
            .iter()
            .sum();
        // The image covers 336x224 encoder pixels.
        assert!((total - 336.0 * 224.0).abs() < 1e-6, "{total}");
    }

    #[test]
    fn upscaled_masks_split_between_patches() {
        // 12x12 → 336: every original pixel spans 28 encoder pixels = 2 patches.
        let f = FrameConfig::llava_1_5().frame(12, 12).unwrap();
        let m = Bitmap::from_fn(12, 12, |y, x| y == 0 && x == 0);
        let cov = f.patch_coverage(&m).unwrap();
        for i in [0, 1, 24, 25] {
            assert!((cov[i] - 196.0).abs() < 1e-9, "{i}: {}", cov[i]);
        }
        assert!((cov.iter().sum::<f64>() - 784.0).abs() < 1e-9);
    }

    #[test]
    fn nearest_mask_and_image() {
        let f = FrameConfig::llava_1_5().frame(64, 32).unwrap();
        let m = Bitmap::from_fn(32, 64, |y, x| y < 16 && x < 32);
        let big = f.map_mask(&m).unwrap();
        assert_eq!((big.width(), big.height()), (336, 336));
        // The padded band (first 84 rows) is background, the mask starts below it.
        assert!(!big.get(83, 10) && big.get(84, 10) && big.get(167, 167));
        assert!(!big.get(168, 10) && !big.get(100, 168));
        let img = RgbImage::from_pixel(64, 32, Rgb([255, 0, 0]));
        let out = f.apply_image(&img).unwrap();
        assert_eq!(out.dimensions(), (336, 336));
        assert_eq!(out.get_pixel(5, 5).0, [122, 116, 104]);
        assert_eq!(out.get_pixel(168, 168).0, [255, 0, 0]);
        let wrong = Bitmap::new(64, 32);
        assert!(matches!(
            f.map_mask(&wrong),
            Err(VisionError::MaskSize { .. })
        ));
    }
}
