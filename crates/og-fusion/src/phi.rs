//! Φ_α: from a binary mask to the encoder patches it selects (paper Eq. 2–3, Listing 1).
//!
//! Both operators return, per mask, the **ascending** patch indices (raster order over the
//! grid) that the mask keeps; `P_i X'` of Eq. (4) is then a row selection of the features.

use og_segment::Bitmap;
use og_vision::{Frame, PatchCoverage};
use serde::{Deserialize, Serialize};

use crate::error::{FusionError, Result, expect_mask_size};

/// The threshold of [`Phi::PatchGrid2d`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "unit", content = "value", rename_all = "snake_case")]
pub enum Threshold {
    /// Keep a patch when the mask covers at least this many encoder-input pixels of it
    /// (0.5: any real overlap, the listing's "at least one pixel").
    Pixels(f64),
    /// Keep a patch when the mask covers at least this fraction of its p² pixels.
    Fraction(f64),
}

impl Threshold {
    fn min_coverage(&self, patch_size: usize) -> f64 {
        match *self {
            Threshold::Pixels(a) => a,
            Threshold::Fraction(f) => f * (patch_size * patch_size) as f64,
        }
    }

    fn validate(&self) -> Result<()> {
        let ok = match *self {
            Threshold::Pixels(a) => a.is_finite() && a > 0.0,
            Threshold::Fraction(f) => f.is_finite() && f > 0.0 && f <= 1.0,
        };
        if ok {
            Ok(())
        } else {
            Err(FusionError::Config(format!(
                "threshold {self:?} must be positive (a fraction at most 1)"
            )))
        }
    }
}

/// The mask → patch operator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Phi {
    /// The paper's Listing 1, bit-exact: flatten the H×W mask (row-major), PyTorch
    /// `adaptive_avg_pool1d` to V bins (bin i spans `[⌊iL/V⌋, ⌈(i+1)L/V⌉)`, bins overlap when
    /// V ∤ L), count = mean·(L/V) in f32, keep bins with count ≥ α. Bins are contiguous raster
    /// strips of the *original* mask, not encoder patches: kept for reproduction.
    RasterStrip1d { alpha: f64 },
    /// The default: the mask is mapped through the image's [`Frame`] and its exact covered area
    /// per encoder patch is compared with the threshold.
    PatchGrid2d { threshold: Threshold },
}

impl Default for Phi {
    fn default() -> Self {
        Phi::PatchGrid2d {
            threshold: Threshold::Pixels(0.5),
        }
    }
}

impl Phi {
    /// Paper-exact Φ with the paper's α = 0.5.
    pub fn paper() -> Self {
        Phi::RasterStrip1d { alpha: 0.5 }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Phi::RasterStrip1d { alpha } if !(alpha.is_finite() && *alpha > 0.0) => Err(
                FusionError::Config(format!("alpha {alpha} must be a positive number")),
            ),
            Phi::RasterStrip1d { .. } => Ok(()),
            Phi::PatchGrid2d { threshold } => threshold.validate(),
        }
    }

    /// A short name for reports (`raster` / `patch`).
    pub fn name(&self) -> &'static str {
        match self {
            Phi::RasterStrip1d { .. } => "raster",
            Phi::PatchGrid2d { .. } => "patch",
        }
    }

    /// A Φ bound to one image frame: reuse it for every mask of the image.
    pub fn prepare(&self, frame: &Frame) -> Result<PreparedPhi> {
        self.validate()?;
        let (width, height) = frame.original_size();
        Ok(match *self {
            Phi::RasterStrip1d { alpha } => PreparedPhi::Raster {
                bins: frame.num_patches(),
                alpha: alpha as f32,
                width,
                height,
            },
            Phi::PatchGrid2d { threshold } => PreparedPhi::Patch {
                coverage: Box::new(PatchCoverage::new(frame)),
                min_coverage: threshold.min_coverage(frame.config().patch_size),
                width,
                height,
            },
        })
    }
}

/// [`Phi`] with its per-image precomputation done.
#[derive(Debug, Clone)]
pub enum PreparedPhi {
    Raster {
        bins: usize,
        alpha: f32,
        width: usize,
        height: usize,
    },
    Patch {
        coverage: Box<PatchCoverage>,
        min_coverage: f64,
        width: usize,
        height: usize,
    },
}

impl PreparedPhi {
    /// The ascending patch indices `mask` keeps.
    pub fn kept(&self, mask: &Bitmap) -> Result<Vec<u32>> {
        let (w, h) = match self {
            PreparedPhi::Raster { width, height, .. }
            | PreparedPhi::Patch { width, height, .. } => (*width, *height),
        };
        expect_mask_size((mask.width(), mask.height()), (w, h))?;
        Ok(match self {
            PreparedPhi::Raster { bins, alpha, .. } => raster_strip_1d(mask, *bins, *alpha),
            PreparedPhi::Patch {
                coverage,
                min_coverage,
                ..
            } => coverage
                .coverage(mask)
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c >= min_coverage - 1e-9)
                .map(|(i, _)| i as u32)
                .collect(),
        })
    }
}

/// PyTorch's adaptive pooling bin `[⌊iL/n⌋, ⌈(i+1)L/n⌉)`.
#[inline]
pub fn adaptive_bin(i: usize, len: usize, n: usize) -> (usize, usize) {
    let start = (i * len) / n;
    let end = ((i + 1) * len).div_ceil(n);
    (start, end)
}

/// Listing 1 of the paper on a row-major mask, reproducing PyTorch's f32 arithmetic:
/// `pooled = f32(sum)/f32(k)`, `count = pooled · f32(L/n)`, keep `count ≥ f32(α)`.
pub fn raster_strip_1d(mask: &Bitmap, bins: usize, alpha: f32) -> Vec<u32> {
    let len = mask.width() * mask.height();
    let bin_size = (len as f64 / bins as f64) as f32;
    let mut kept = Vec::new();
    for i in 0..bins {
        let (s, e) = adaptive_bin(i, len, bins);
        let sum = mask.count_range(s, e);
        if sum == 0 {
            continue;
        }
        let pooled = sum as f32 / (e - s) as f32;
        if pooled * bin_size >= alpha {
            kept.push(i as u32);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use og_vision::FrameConfig;
    use proptest::prelude::*;

    #[test]
    fn bins_match_pytorch_definition() {
        // L=10, n=4: [0,3) [2,5) [5,8) [7,10) — overlapping as in PyTorch.
        let bins: Vec<_> = (0..4).map(|i| adaptive_bin(i, 10, 4)).collect();
        assert_eq!(bins, vec![(0, 3), (2, 5), (5, 8), (7, 10)]);
    }

    #[test]
    fn released_code_strips_are_not_patches() {
        // A centred 56x56 square on a 336x336 image is exactly 4x4 = 16 patches of 14 px.
        // The raster strips select 64 bins (each bin is 196 px = 0.58 of a row) of which only
        // 8 are among those 16 patch indices; the patch-aligned Φ selects exactly the 16.
        let m = Bitmap::from_fn(336, 336, |y, x| {
            (140..196).contains(&y) && (140..196).contains(&x)
        });
        let raster = raster_strip_1d(&m, 576, 0.5);
        let frame = FrameConfig::clip_336().frame(336, 336).unwrap();
        let patch = Phi::default().prepare(&frame).unwrap().kept(&m).unwrap();
        let expect: Vec<u32> = (10..14)
            .flat_map(|r| (10..14).map(move |c| (r * 24 + c) as u32))
            .collect();
        assert_eq!(patch, expect);
        assert_eq!(raster.len(), 64);
        assert_eq!(raster.iter().filter(|i| expect.contains(i)).count(), 8);
    }

    #[test]
    fn one_patch_mask_keeps_that_patch_through_pad_and_crop() {
        // Frames whose scale puts pixel edges on patch edges (0.5 and 0.375 here), so a mask
        // can be exactly one patch's preimage; through the pad (first) and crops (others).
        let cases = [
            (
                FrameConfig::llava_1_5(),
                672usize,
                448usize,
                10usize,
                7usize,
            ),
            (FrameConfig::clip_336(), 896, 672, 3, 20),
            (FrameConfig::clip_336(), 672, 896, 20, 3),
        ];
        for (cfg, w, h, r, c) in cases {
            let frame = cfg.frame(w, h).unwrap();
            // Find the original pixels whose centres map into patch (r, c).
            let m = Bitmap::from_fn(h, w, |y, x| frame.patch_of_pixel(x, y) == Some(r * 24 + c));
            assert!(m.count_ones() > 0);
            for phi in [
                Phi::default(),
                Phi::PatchGrid2d {
                    threshold: Threshold::Fraction(0.99),
                },
            ] {
                let kept = phi.prepare(&frame).unwrap().kept(&m).unwrap();
                assert_eq!(kept, vec![(r * 24 + c) as u32], "{cfg:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn wrong_size_is_an_error() {
        let frame = FrameConfig::clip_336().frame(100, 80).unwrap();
        let p = Phi::paper().prepare(&frame).unwrap();
        assert!(matches!(
            p.kept(&Bitmap::new(100, 80)),
            Err(FusionError::MaskSize { .. })
        ));
        assert!(Phi::RasterStrip1d { alpha: f64::NAN }.validate().is_err());
        assert!(
            Phi::PatchGrid2d {
                threshold: Threshold::Fraction(1.5)
            }
            .validate()
            .is_err()
        );
    }

    fn random_mask(h: usize, w: usize, seed: u64, density: u64) -> Bitmap {
        let mut s = seed | 1;
        Bitmap::from_fn(h, w, |_, _| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % 100 < density
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn full_empty_and_monotone(h in 5usize..60, w in 5usize..60, seed in any::<u64>(),
                                   density in 0u64..30) {
            let frame = FrameConfig::llava_1_5().frame(w, h).unwrap();
            let full = Bitmap::from_fn(h, w, |_, _| true);
            let empty = Bitmap::new(h, w);
            let m = random_mask(h, w, seed, density);
            // Raster: full → all bins, empty → none.
            // (A full bin counts L/V pixels: below α for masks smaller than α·V pixels.)
            let all = (h * w) as f32 / 576.0 >= 0.5;
            prop_assert_eq!(raster_strip_1d(&full, 576, 0.5).len(), if all { 576 } else { 0 });
            prop_assert!(raster_strip_1d(&empty, 576, 0.5).is_empty());
            // Patch: full → every patch the image touches (all of them when it is square).
            let pg = Phi::default().prepare(&frame).unwrap();
            prop_assert!(pg.kept(&empty).unwrap().is_empty());
            if h == w {
                prop_assert_eq!(pg.kept(&full).unwrap().len(), 576);
            }
            // Monotone in α: a larger threshold keeps a subset.
            let mut prev: Option<Vec<u32>> = None;
            for a in [0.25, 0.5, 1.0, 3.0, 20.0] {
                let k = raster_strip_1d(&m, 576, a);
                if let Some(p) = &prev { prop_assert!(k.iter().all(|i| p.contains(i))); }
                prev = Some(k);
            }
            let mut prev: Option<Vec<u32>> = None;
            for f in [0.01, 0.1, 0.5, 0.9, 1.0] {
                let k = Phi::PatchGrid2d { threshold: Threshold::Fraction(f) }
                    .prepare(&frame).unwrap().kept(&m).unwrap();
                prop_assert!(k.windows(2).all(|p| p[0] < p[1]));
                if let Some(p) = &prev { prop_assert!(k.iter().all(|i| p.contains(i))); }
                prev = Some(k);
            }
        }
    }
}
