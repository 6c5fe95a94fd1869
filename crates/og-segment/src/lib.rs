//! Segmentation masks for OG-LLaVA.
//!
//! - [`MaskSet`]: the N binary masks of one image at its original H×W, run-length encoded in
//!   memory, with the per-mask scores segmenters report.
//! - COCO RLE JSON I/O byte-compatible with pycocotools (what SAM/SAM2's automatic mask
//!   generator writes with `output_mode="coco_rle"`), compressed and uncompressed counts.
//! - Import of the released OG-LLaVA layout (`mask_<k>.npy` per image), in numeric order.
//! - The [`Segmenter`] trait every mask source implements, and [`Felzenszwalb`], the weight-free
//!   graph segmenter (scikit-image's `felzenszwalb`).

mod error;
pub mod felzenszwalb;
mod maskset;
pub mod npy;
pub mod rle;

use std::path::Path;

pub use error::{Result, SegmentError};
pub use felzenszwalb::{Felzenszwalb, FelzenszwalbConfig, Labels, felzenszwalb};
pub use maskset::{CountsFormat, MAX_MASKS_PER_IMAGE, Mask, MaskSet};
pub use rle::{Bitmap, Rle};

/// Anything that turns an RGB image into masks at the image's own resolution.
pub trait Segmenter {
    /// Segments a row-major RGB8 image of `width`×`height` (`rgb.len() == 3·width·height`).
    fn segment(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<MaskSet>;
}

/// A segmenter several threads take turns on (data loaders, evaluation items).
pub type SharedSegmenter = std::sync::Arc<std::sync::Mutex<Box<dyn Segmenter + Send>>>;

/// The largest masks file read (a COCO RLE JSON list).
pub const MAX_MASKS_JSON_BYTES: u64 = 256 << 20;

/// Writes `bytes` to `path` whole ([`og_fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    og_fs::write_atomic(path, bytes).map_err(|source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    })
}
