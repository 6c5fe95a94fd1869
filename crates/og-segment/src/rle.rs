//! Run-length encoded binary masks in the COCO convention, and row-major bit-packed bitmaps.
//!
//! COCO RLE (pycocotools `maskApi.c`) scans the H×W mask in **column-major** order and stores
//! alternating run lengths, starting with a run of zeros (possibly of length 0). The compressed
//! string form (`rleToString`) writes each count, after the first two, as the difference to the
//! count two places before, in little-endian groups of 5 bits with a continuation bit, offset by
//! ASCII 48. This module reproduces both forms byte for byte.

use crate::error::{Result, SegmentError};

/// One binary mask as COCO run lengths (column-major, first run counts zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    height: usize,
    width: usize,
    counts: Vec<u32>,
}

/// The most pixels one mask may have (a 46 340² image): far beyond any real image, and a
/// bound on what decoding a mask allocates.
pub const MAX_MASK_PIXELS: u64 = 1 << 31;

impl Rle {
    /// Builds from run lengths, checking that they cover exactly `height·width` pixels.
    pub fn from_counts(height: usize, width: usize, counts: Vec<u32>) -> Result<Self> {
        let pixels = (height as u128) * (width as u128);
        if pixels > MAX_MASK_PIXELS as u128 {
            return Err(SegmentError::CorruptRle(format!(
                "a {height}x{width} mask is over {MAX_MASK_PIXELS} pixels"
            )));
        }
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        if total as u128 != pixels {
            return Err(SegmentError::CorruptRle(format!(
                "run lengths sum to {total} but the mask is {height}x{width} = {pixels} pixels"
            )));
        }
        Ok(Self {
            height,
            width,
            counts,
        })
    }

    /// Decodes the compressed string form written by pycocotools (`rleFrString`).
    pub fn from_compressed(height: usize, width: usize, s: &str) -> Result<Self> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut k = 0u32;
            loop {
                let b = bytes[p];
                if !(48..48 + 64).contains(&b) {
                    return Err(SegmentError::CorruptRle(format!(
                        "byte {p} ({:?}) is outside the RLE alphabet",
                        b as char
                    )));
                }
                if k >= 12 {
                    return Err(SegmentError::CorruptRle(format!(
                        "run length at byte {p} is longer than 12 groups"
                    )));
                }
                let c = (b - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                let more = c & 0x20 != 0;
                if !more {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
                if p >= bytes.len() {
                    return Err(SegmentError::CorruptRle(
                        "string ends inside a run length".into(),
                    ));
                }
            }
            let m = counts.len();
            if m > 2 {
                x += counts[m - 2] as i64;
            }
            if !(0..=u32::MAX as i64).contains(&x) {
                return Err(SegmentError::CorruptRle(format!(
                    "run {m} decodes to {x}, not a valid length"
                )));
            }
            counts.push(x as u32);
        }
        Self::from_counts(height, width, counts)
    }

    /// Encodes as the compressed string form (`rleToString`), byte-compatible with pycocotools.
    pub fn to_compressed(&self) -> String {
        let mut out = Vec::with_capacity(self.counts.len() * 2);
        for i in 0..self.counts.len() {
            let mut x = self.counts[i] as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            loop {
                let mut c = x & 0x1f;
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                out.push((c + 48) as u8);
                if !more {
                    break;
                }
            }
        }
        // Every byte is in 48..112: ASCII.
        String::from_utf8(out).expect("RLE alphabet is ASCII")
    }

    /// Encodes a row-major bitmap.
    pub fn from_bitmap(bitmap: &Bitmap) -> Self {
        let (h, w) = (bitmap.height, bitmap.width);
        let mut counts = Vec::new();
        let mut current = false;
        let mut run = 0u32;
        for x in 0..w {
            for y in 0..h {
                let v = bitmap.get(y, x);
                if v != current {
                    counts.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Self {
            height: h,
            width: w,
            counts,
        }
    }

    /// Decodes into a row-major bit-packed bitmap.
    pub fn to_bitmap(&self) -> Bitmap {
        let mut bitmap = Bitmap::new(self.height, self.width);
        let (h, w) = (self.height, self.width);
        // Walk (y, x) along the column-major scan without dividing per pixel.
        let (mut y, mut x) = (0usize, 0usize);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut c = c as usize;
            if i % 2 == 0 {
                let pos = x * h + y + c;
                (y, x) = (pos % h, pos / h);
                continue;
            }
            while c > 0 {
                let n = c.min(h - y);
                let mut bit = y * w + x;
                for _ in 0..n {
                    bitmap.words[bit >> 6] |= 1 << (bit & 63);
                    bit += w;
                }
                c -= n;
                y += n;
                if y == h {
                    y = 0;
                    x += 1;
                }
            }
        }
        bitmap
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Run lengths, column-major, starting with zeros.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// Tight bounding box `[x, y, w, h]` in pixels as pycocotools `toBbox` computes it
    /// (all zeros for an empty mask).
    pub fn bbox(&self) -> [f64; 4] {
        let h = self.height;
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (usize::MAX, 0usize, usize::MAX, 0usize);
        let mut pos = 0usize;
        let mut any = false;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = c as usize;
            if i % 2 == 1 && c > 0 {
                any = true;
                let (start, end) = (pos, pos + c - 1);
                let (x0, x1) = (start / h, end / h);
                xmin = xmin.min(x0);
                xmax = xmax.max(x1);
                if x0 == x1 {
                    ymin = ymin.min(start % h);
                    ymax = ymax.max(end % h);
                } else {
                    ymin = 0;
                    ymax = h - 1;
                }
            }
            pos += c;
        }
        if !any {
            return [0.0; 4];
        }
        [
            xmin as f64,
            ymin as f64,
            (xmax - xmin + 1) as f64,
            (ymax - ymin + 1) as f64,
        ]
    }

    /// Heap bytes held by this mask.
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u32>()
    }
}

/// A row-major, bit-packed binary mask (bit `y·W + x` of the flattened mask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    height: usize,
    width: usize,
    words: Vec<u64>,
}

impl Bitmap {
    /// An all-false mask.
    pub fn new(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            words: vec![0; (height * width).div_ceil(64)],
        }
    }

    /// From row-major values (`values.len() == height·width`).
    pub fn from_fn(height: usize, width: usize, mut f: impl FnMut(usize, usize) -> bool) -> Self {
        let mut b = Self::new(height, width);
        for y in 0..height {
            for x in 0..width {
                if f(y, x) {
                    b.set(y, x, true);
                }
            }
        }
        b
    }

    /// From row-major bytes where any non-zero byte is foreground.
    pub fn from_bytes(height: usize, width: usize, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != height * width {
            return Err(SegmentError::Invalid(format!(
                "{} bytes given for a {height}x{width} mask",
                bytes.len()
            )));
        }
        let mut words = vec![0u64; (height * width).div_ceil(64)];
        for (wi, chunk) in bytes.chunks(64).enumerate() {
            let mut word = 0u64;
            for (bi, &b) in chunk.iter().enumerate() {
                word |= ((b != 0) as u64) << bi;
            }
            words[wi] = word;
        }
        Ok(Self {
            height,
            width,
            words,
        })
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    #[inline]
    pub fn get(&self, y: usize, x: usize) -> bool {
        let i = y * self.width + x;
        (self.words[i >> 6] >> (i & 63)) & 1 == 1
    }

    #[inline]
    pub fn set(&mut self, y: usize, x: usize, v: bool) {
        let i = y * self.width + x;
        if v {
            self.words[i >> 6] |= 1 << (i & 63);
        } else {
            self.words[i >> 6] &= !(1 << (i & 63));
        }
    }

    /// Packed words; bits past `height·width` are zero.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of set bits among flattened positions `[start, end)`.
    #[inline]
    pub fn count_range(&self, start: usize, end: usize) -> u32 {
        if start >= end {
            return 0;
        }
        let (ws, we) = (start >> 6, (end - 1) >> 6);
        let lo_mask = !0u64 << (start & 63);
        let hi_mask = !0u64 >> (63 - ((end - 1) & 63));
        if ws == we {
            return (self.words[ws] & lo_mask & hi_mask).count_ones();
        }
        let mut n =
            (self.words[ws] & lo_mask).count_ones() + (self.words[we] & hi_mask).count_ones();
        for w in &self.words[ws + 1..we] {
            n += w.count_ones();
        }
        n
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_mask_size_beyond_the_bound_is_an_error_not_an_overflow() {
        let e = Rle::from_counts(usize::MAX, 300, vec![1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("over 2147483648 pixels"), "{e}");
        let e = Rle::from_compressed(1 << 40, 1 << 40, "0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pixels"), "{e}");
    }
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_pycocotools_string() {
        // A 3x4 mask with the middle 2x2 set: column-major runs 4 zeros, 2 ones, 1 zero,
        // 2 ones, 3 zeros. Byte-level agreement with pycocotools is tested on fixtures.
        let rle = Rle::from_counts(3, 4, vec![4, 2, 1, 2, 3]).unwrap();
        let s = rle.to_compressed();
        assert_eq!(Rle::from_compressed(3, 4, &s).unwrap(), rle);
        assert_eq!(rle.area(), 4);
        assert_eq!(rle.bbox(), [1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn corrupt_strings_are_errors() {
        assert!(Rle::from_compressed(3, 4, "4~").is_err());
        assert!(Rle::from_compressed(3, 4, "42").is_err()); // sums to 6, not 12
        assert!(Rle::from_compressed(3, 4, "o").is_err()); // ends inside a run
        assert!(Rle::from_compressed(3, 4, "\u{e9}").is_err());
    }

    #[test]
    fn count_range_matches_naive() {
        let b = Bitmap::from_fn(7, 31, |y, x| (x * 7 + y * 3) % 5 < 2);
        let n = 7 * 31;
        for s in (0..n).step_by(13) {
            for e in (s..=n).step_by(17) {
                let naive = (s..e).filter(|&i| b.get(i / 31, i % 31)).count() as u32;
                assert_eq!(b.count_range(s, e), naive, "[{s},{e})");
            }
        }
    }

    proptest! {
        #[test]
        fn rle_round_trip(h in 1usize..20, w in 1usize..20, seed in any::<u64>()) {
            let mut state = seed | 1;
            let bm = Bitmap::from_fn(h, w, |_, _| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                state % 3 == 0
            });
            let rle = Rle::from_bitmap(&bm);
            prop_assert_eq!(rle.to_bitmap(), bm.clone());
            let back = Rle::from_compressed(h, w, &rle.to_compressed()).unwrap();
            prop_assert_eq!(&back, &rle);
            prop_assert_eq!(rle.area(), bm.count_ones());
        }
    }
}
