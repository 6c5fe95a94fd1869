//! Felzenszwalb–Huttenlocher graph segmentation (IJCV 2004), the weight-free segmenter.
//!
//! The algorithm and its arithmetic follow scikit-image's `segmentation.felzenszwalb(image,
//! scale, sigma, min_size, channel_axis=-1)` step for step, so the same photo and parameters
//! give the same partition:
//! 1. pixels as `u8 / 255` in f64, smoothed per channel by SciPy's `gaussian_filter` (radius
//!    `⌊4σ + ½⌋`, `reflect` borders, rows then columns, the symmetric-kernel summation order);
//! 2. an 8-connected grid graph whose edge weight is the Euclidean RGB distance, edges in
//!    scikit-image's order (right, down, down-right, up-right), sorted by weight;
//! 3. Kruskal-style merging: two components join when the edge is lighter than both
//!    `Int(C) + k/|C|` (with `k = scale / 255`, the threshold kept in f32 as scikit-image does);
//! 4. a second pass over the sorted edges joins every component smaller than `min_size`;
//! 5. labels numbered by each component's first pixel in raster order.
//!
//! Where the two can differ: edges of exactly equal weight are taken in graph order here
//! (NumPy's `argsort` leaves their order to its sorting network), and NumPy's vectorised `exp`
//! rounds a few kernel weights one unit in the last place away from the C library's. Both only
//! reorder near-ties; the result is a partition either way.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SegmentError};
use crate::maskset::{Mask, MaskSet};
use crate::rle::Rle;

/// Parameters, named and defaulted as scikit-image's, plus a size limit on the input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FelzenszwalbConfig {
    /// Observation scale `k` (higher: fewer, larger segments).
    pub scale: f64,
    /// Standard deviation of the Gaussian pre-smoothing, in pixels (0: none).
    pub sigma: f64,
    /// Components smaller than this many pixels are merged into a neighbour.
    pub min_size: usize,
    /// Largest image accepted, in pixels (segmenting takes about 130 bytes a pixel at its
    /// peak, while the edges are sorted).
    pub max_pixels: usize,
}

impl Default for FelzenszwalbConfig {
    /// scikit-image's defaults (`scale=1, sigma=0.8, min_size=20`); at most 4096² pixels.
    fn default() -> Self {
        Self {
            scale: 1.0,
            sigma: 0.8,
            min_size: 20,
            max_pixels: 4096 * 4096,
        }
    }
}

impl FelzenszwalbConfig {
    /// Fails on a scale that is not a positive number or a negative or non-finite sigma.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SegmentError::Invalid(m));
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad(format!(
                "felzenszwalb: scale must be > 0, got {}",
                self.scale
            ));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return bad(format!(
                "felzenszwalb: sigma must be ≥ 0, got {}",
                self.sigma
            ));
        }
        Ok(())
    }

    /// Segments a row-major RGB8 image into one mask per segment ([`felzenszwalb`], then
    /// [`Labels::to_mask_set`]).
    pub fn segment(&self, rgb: &[u8], width: usize, height: usize) -> Result<MaskSet> {
        felzenszwalb(rgb, width, height, self)?.to_mask_set()
    }

    fn check(&self, width: usize, height: usize, rgb_len: usize) -> Result<()> {
        self.validate()?;
        let bad = |m: String| Err(SegmentError::Invalid(m));
        if width == 0 || height == 0 {
            return bad(format!("the image has no pixels ({width}x{height})"));
        }
        let pixels = width.saturating_mul(height);
        if pixels > self.max_pixels || pixels >= 1 << 30 {
            return bad(format!(
                "the image is {width}x{height} = {pixels} pixels, over the limit of {} \
                 (raise --max-pixels to segment it)",
                self.max_pixels
            ));
        }
        if rgb_len != 3 * pixels {
            return bad(format!(
                "{rgb_len} bytes given for a {width}x{height} RGB image (want {})",
                3 * pixels
            ));
        }
        Ok(())
    }
}

/// A partition of an image: one label per pixel (row-major), labels `0..count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u32>,
    pub count: usize,
}

impl Labels {
    /// One mask per label, in label order (each mask's `source_index` is its label).
    pub fn to_mask_set(&self) -> Result<MaskSet> {
        let (h, w) = (self.height, self.width);
        // Column-major runs per label, built in one pass (COCO RLE: the first run counts zeros).
        struct Runs {
            counts: Vec<u32>,
            end: usize,
            run: u32,
        }
        let mut runs: Vec<Runs> = (0..self.count)
            .map(|_| Runs {
                counts: Vec::new(),
                end: 0,
                run: 0,
            })
            .collect();
        for x in 0..w {
            for y in 0..h {
                let p = x * h + y;
                let r = &mut runs[self.labels[y * w + x] as usize];
                if r.run > 0 && r.end == p {
                    r.run += 1;
                } else {
                    if r.run > 0 {
                        r.counts.push(r.run);
                    }
                    r.counts.push((p - r.end) as u32);
                    r.run = 1;
                }
                r.end = p + 1;
            }
        }
        let masks = runs
            .into_iter()
            .enumerate()
            .map(|(label, mut r)| {
                r.counts.push(r.run);
                if r.end < h * w {
                    r.counts.push((h * w - r.end) as u32);
                }
                Ok(Mask {
                    source_index: label,
                    ..Mask::new(Rle::from_counts(h, w, r.counts)?)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        MaskSet::new(masks)
    }
}

/// Segments a row-major RGB8 image (see the module docs for what is computed).
pub fn felzenszwalb(
    rgb: &[u8],
    width: usize,
    height: usize,
    config: &FelzenszwalbConfig,
) -> Result<Labels> {
    config.check(width, height, rgb.len())?;
    let image = smooth(rgb, width, height, config.sigma);
    let grid = Grid { width, height };
    let edges = grid.sorted_edges(image);
    let mut forest = Forest::new(width * height);
    merge(&mut forest, &grid, &edges, config.scale / 255.0);
    join_small(&mut forest, &grid, &edges, config.min_size);
    Ok(forest.labels(width, height))
}

/// The [`crate::Segmenter`] of this module: a partition, one mask per segment.
#[derive(Debug, Clone, Default)]
pub struct Felzenszwalb {
    pub config: FelzenszwalbConfig,
}

impl crate::Segmenter for Felzenszwalb {
    fn segment(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<MaskSet> {
        self.config.segment(rgb, width, height)
    }
}

/// SciPy's `_gaussian_kernel1d(sigma, 0, radius)`: `exp(-x²/2σ²)` normalised by NumPy's sum.
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let a = -0.5 / (sigma * sigma);
    let phi: Vec<f64> = (-radius..=radius)
        .map(|x| (a * (x * x) as f64).exp())
        .collect();
    let sum = numpy_sum(&phi);
    phi.iter().map(|v| v / sum).collect()
}

/// `np.sum` of a contiguous f64 array: NumPy's pairwise summation (8 accumulators per block
/// of at most 128, halves above that).
fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(-0.0, |s, v| s + v);
    }
    if n <= 128 {
        let mut r: [f64; 8] = a[..8].try_into().expect("8 values");
        let full = n - n % 8;
        for chunk in a[8..full].chunks_exact(8) {
            for (acc, v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &a[full..] {
            res += v;
        }
        return res;
    }
    let half = (n / 2) - (n / 2) % 8;
    numpy_sum(&a[..half]) + numpy_sum(&a[half..])
}

/// SciPy's `reflect` extension (`d c b a | a b c d | d c b a`) of index `i` on a line of `n`.
fn reflect(i: i64, n: i64) -> usize {
    let period = 2 * n;
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - 1 - i;
    }
    i as usize
}

/// The image as f64 in [0, 1], channel-last, Gaussian-smoothed along axis 0 (down the
/// columns) then axis 1 (along the rows), each output as SciPy's `correlate1d` computes it with
/// a symmetric kernel: `x[i]·w₀ + Σ_{j=r..1} (x[i−j] + x[i+j])·w_j`.
fn smooth(rgb: &[u8], width: usize, height: usize, sigma: f64) -> Vec<f64> {
    let inv = 1.0 / 255.0;
    let image: Vec<f64> = rgb.iter().map(|&v| v as f64 * inv).collect();
    if sigma <= 1e-15 {
        return image;
    }
    let kernel = gaussian_kernel(sigma);
    let r = kernel.len() / 2;
    let row = 3 * width;
    // Axis 0: whole rows at once.
    let mut down = vec![0.0; image.len()];
    for y in 0..height {
        let out = &mut down[y * row..(y + 1) * row];
        let at = |dy: i64| {
            let yy = reflect(y as i64 + dy, height as i64);
            &image[yy * row..(yy + 1) * row]
        };
        for (o, v) in out.iter_mut().zip(at(0)) {
            *o = v * kernel[r];
        }
        for j in (1..=r).rev() {
            let (lo, hi, w) = (at(-(j as i64)), at(j as i64), kernel[r - j]);
            for ((o, l), h) in out.iter_mut().zip(lo).zip(hi) {
                *o += (l + h) * w;
            }
        }
    }
    drop(image);
    // Axis 1: each row padded by reflection, then the same sum per sample.
    let mut out = vec![0.0; down.len()];
    let mut padded = vec![0.0; 3 * (width + 2 * r)];
    for y in 0..height {
        let src = &down[y * row..(y + 1) * row];
        for (i, px) in padded.chunks_exact_mut(3).enumerate() {
            let x = reflect(i as i64 - r as i64, width as i64);
            px.copy_from_slice(&src[3 * x..3 * x + 3]);
        }
        let dst = &mut out[y * row..(y + 1) * row];
        for (k, o) in dst.iter_mut().enumerate() {
            let c = k + 3 * r;
            let mut acc = padded[c] * kernel[r];
            for j in (1..=r).rev() {
                acc += (padded[c - 3 * j] + padded[c + 3 * j]) * kernel[r - j];
            }
            *o = acc;
        }
    }
    out
}

/// The 8-connected grid graph in scikit-image's edge order: every right, down, down-right,
/// then up-right neighbour pair, each block in raster order of its top-left pixel.
///
/// An edge is named by `block << 30 | p`, `p` the raster index of the pixel the block's pairs
/// start from (images have fewer than 2³⁰ pixels): names sort in edge order.
struct Grid {
    width: usize,
    height: usize,
}

impl Grid {
    const BLOCK: u32 = 30;

    /// The two pixels of edge `name` (in the order scikit-image lists them).
    fn endpoints(&self, name: u32) -> (u32, u32) {
        let p = name & ((1 << Self::BLOCK) - 1);
        let w = self.width as u32;
        match name >> Self::BLOCK {
            0 => (p + 1, p),
            1 => (p + w, p),
            2 => (p + w + 1, p),
            _ => (p + 1, p + w),
        }
    }

    /// Every edge as (weight bits, name), sorted by weight, ties in edge order.
    fn sorted_edges(&self, image: Vec<f64>) -> Vec<(u64, u32)> {
        let (w, h) = (self.width, self.height);
        let mut keys = Vec::with_capacity(4 * w * h);
        let mut block = |b: u32, rows: usize, cols: usize| {
            for y in 0..rows {
                for x in 0..cols {
                    let name = b << Self::BLOCK | (y * w + x) as u32;
                    let (a, c) = self.endpoints(name);
                    let (a, c) = (3 * a as usize, 3 * c as usize);
                    let (u, v) = (&image[a..a + 3], &image[c..c + 3]);
                    let d = |k: usize| (u[k] - v[k]) * (u[k] - v[k]);
                    // Weights are ≥ 0, so their bit patterns sort as the numbers do.
                    keys.push((((d(0) + d(1)) + d(2)).sqrt().to_bits(), name));
                }
            }
        };
        block(0, h, w - 1);
        block(1, h - 1, w);
        block(2, h - 1, w - 1);
        block(3, h - 1, w - 1);
        drop(image);
        sort_by_weight(keys)
    }
}

/// Sorts (key, name) pairs by key then name: one counting pass into 2¹⁶ buckets of the key
/// range, then each bucket sorted on its own (small and cache-resident).
fn sort_by_weight(keys: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
    let (Some(lo), Some(hi)) = (
        keys.iter().map(|k| k.0).min(),
        keys.iter().map(|k| k.0).max(),
    ) else {
        return keys;
    };
    let shift = (64 - (hi - lo).leading_zeros()).saturating_sub(16);
    let bucket = |k: u64| ((k - lo) >> shift) as usize;
    let mut starts = vec![0usize; (1 << 16) + 1];
    for &(k, _) in &keys {
        starts[bucket(k) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut out = vec![(0u64, 0u32); keys.len()];
    let mut next = starts.clone();
    for &item in &keys {
        let b = bucket(item.0);
        out[next[b]] = item;
        next[b] += 1;
    }
    for range in starts.windows(2) {
        out[range[0]..range[1]].sort_unstable();
    }
    out
}

/// Union–find whose root is always the component's smallest pixel (scikit-image's `_ccomp`).
struct Forest {
    parent: Vec<u32>,
    size: Vec<u32>,
    /// `Int(C)`: the heaviest edge merged into the component.
    inner: Vec<f64>,
}

impl Forest {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
            inner: vec![0.0; n],
        }
    }

    fn root(&mut self, mut p: u32) -> u32 {
        let mut r = p;
        while self.parent[r as usize] != r {
            r = self.parent[r as usize];
        }
        while self.parent[p as usize] != r {
            let next = self.parent[p as usize];
            self.parent[p as usize] = r;
            p = next;
        }
        r
    }

    /// Joins two roots; returns the new root (the smaller).
    fn join(&mut self, a: u32, b: u32) -> u32 {
        let (lo, hi) = (a.min(b), a.max(b));
        self.parent[hi as usize] = lo;
        self.size[lo as usize] = self.size[a as usize] + self.size[b as usize];
        lo
    }

    /// Labels by first pixel in raster order (`np.unique(roots, return_inverse=True)`).
    fn labels(mut self, width: usize, height: usize) -> Labels {
        let n = width * height;
        let mut label_of_root = vec![u32::MAX; n];
        let mut count = 0u32;
        let labels = (0..n as u32)
            .map(|p| {
                let r = self.root(p) as usize;
                if label_of_root[r] == u32::MAX {
                    label_of_root[r] = count;
                    count += 1;
                }
                label_of_root[r]
            })
            .collect();
        Labels {
            width,
            height,
            labels,
            count: count as usize,
        }
    }
}

/// Step 3: join across an edge lighter than both components' `Int(C) + k/|C|` (in f32).
fn merge(forest: &mut Forest, grid: &Grid, edges: &[(u64, u32)], k: f64) {
    for &(bits, e) in edges {
        let (a, b) = grid.endpoints(e);
        let (a, b) = (forest.root(a), forest.root(b));
        if a == b {
            continue;
        }
        let cost = f64::from_bits(bits);
        let threshold =
            |c: u32| (forest.inner[c as usize] + k / forest.size[c as usize] as f64) as f32 as f64;
        if cost < threshold(a).min(threshold(b)) {
            let r = forest.join(a, b);
            forest.inner[r as usize] = cost;
        }
    }
}

/// Step 4: join every component smaller than `min_size` to its neighbour across the lightest
/// edge still between them.
fn join_small(forest: &mut Forest, grid: &Grid, edges: &[(u64, u32)], min_size: usize) {
    for &(_, e) in edges {
        let (a, b) = grid.endpoints(e);
        let (a, b) = (forest.root(a), forest.root(b));
        if a != b
            && ((forest.size[a as usize] as usize) < min_size
                || (forest.size[b as usize] as usize) < min_size)
        {
            forest.join(a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                v.extend(f(x, y));
            }
        }
        v
    }

    #[test]
    fn two_flat_halves_are_two_segments_labelled_in_raster_order() {
        let rgb = image(
            12,
            8,
            |x, _| if x < 5 { [250, 10, 10] } else { [10, 10, 250] },
        );
        let cfg = FelzenszwalbConfig {
            min_size: 1,
            sigma: 0.0,
            ..Default::default()
        };
        let l = felzenszwalb(&rgb, 12, 8, &cfg).unwrap();
        assert_eq!(l.count, 2);
        for y in 0..8 {
            for x in 0..12 {
                assert_eq!(l.labels[y * 12 + x], u32::from(x >= 5), "({x},{y})");
            }
        }
    }

    #[test]
    fn the_masks_are_a_partition_of_the_image() {
        let rgb = image(23, 17, |x, y| {
            [
                (x * 11 % 256) as u8,
                (y * 15 % 256) as u8,
                ((x * y) % 256) as u8,
            ]
        });
        let cfg = FelzenszwalbConfig {
            scale: 50.0,
            min_size: 5,
            ..Default::default()
        };
        let labels = felzenszwalb(&rgb, 23, 17, &cfg).unwrap();
        let set = labels.to_mask_set().unwrap();
        assert_eq!(set.len(), labels.count);
        let bitmaps: Vec<_> = set.iter().map(|m| m.rle.to_bitmap()).collect();
        for y in 0..17 {
            for x in 0..23 {
                let owners: Vec<usize> = (0..bitmaps.len())
                    .filter(|&i| bitmaps[i].get(y, x))
                    .collect();
                assert_eq!(owners, vec![labels.labels[y * 23 + x] as usize]);
            }
        }
        assert!(set.iter().all(|m| m.area() >= 5));
    }

    #[test]
    fn min_size_leaves_no_smaller_segment() {
        let rgb = image(40, 30, |x, y| {
            let v = ((x * 37 + y * 91) % 256) as u8;
            [v, v.wrapping_mul(3), v.wrapping_add(40)]
        });
        for min_size in [1, 10, 50, 400] {
            let cfg = FelzenszwalbConfig {
                min_size,
                ..Default::default()
            };
            let l = felzenszwalb(&rgb, 40, 30, &cfg).unwrap();
            let mut sizes = vec![0usize; l.count];
            for &v in &l.labels {
                sizes[v as usize] += 1;
            }
            assert!(sizes.iter().all(|&s| s >= min_size.min(1200)), "{sizes:?}");
        }
    }

    #[test]
    fn numpy_sum_matches_its_pairwise_order() {
        // 0.1 summed 10 times: the 8-accumulator order gives a different last bit than a fold.
        let a = vec![0.1f64; 10];
        let r = 0.1f64;
        let eight = ((r + r) + (r + r)) + ((r + r) + (r + r));
        assert_eq!(numpy_sum(&a), eight + 0.1 + 0.1);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    #[test]
    fn sort_by_weight_orders_by_key_then_name() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let keys: Vec<(u64, u32)> = (0..5000u32)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Few distinct keys spread over every digit: many ties.
                ((x % 7) << 50 | (x % 3) << 20 | (x % 5), i)
            })
            .collect();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(sort_by_weight(keys), want);
        assert!(sort_by_weight(Vec::new()).is_empty());
        assert_eq!(sort_by_weight(vec![(3, 1), (3, 0)]), vec![(3, 0), (3, 1)]);
    }

    #[test]
    fn reflect_repeats_the_edge_sample() {
        let got: Vec<usize> = (-4..7).map(|i| reflect(i, 3)).collect();
        assert_eq!(got, vec![2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let cfg = FelzenszwalbConfig::default();
        let err = |r: Result<Labels>| r.unwrap_err().to_string();
        assert!(err(felzenszwalb(&[], 0, 0, &cfg)).contains("no pixels"));
        assert!(err(felzenszwalb(&[0; 5], 2, 1, &cfg)).contains("bytes"));
        let small = FelzenszwalbConfig {
            max_pixels: 10,
            ..cfg
        };
        assert!(err(felzenszwalb(&[0; 48], 4, 4, &small)).contains("--max-pixels"));
        let bad = FelzenszwalbConfig { scale: 0.0, ..cfg };
        assert!(err(felzenszwalb(&[0; 3], 1, 1, &bad)).contains("scale"));
        let nan = FelzenszwalbConfig {
            sigma: f64::NAN,
            ..cfg
        };
        assert!(err(felzenszwalb(&[0; 3], 1, 1, &nan)).contains("sigma"));
    }

    #[test]
    fn a_single_pixel_and_a_single_row_work() {
        let cfg = FelzenszwalbConfig::default();
        assert_eq!(felzenszwalb(&[1, 2, 3], 1, 1, &cfg).unwrap().count, 1);
        let row = image(9, 1, |x, _| [(x * 20) as u8, 0, 0]);
        let l = felzenszwalb(&row, 9, 1, &cfg).unwrap();
        assert_eq!(l.labels.len(), 9);
    }
}
