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
pub use maskset::{CountsFormat, Mask, MaskSet};
pub use rle::{Bitmap, Rle};

/// Anything that turns an RGB image into masks at the image's own resolution.
pub trait Segmenter {
    /// Segments a row-major RGB8 image of `width`×`height` (`rgb.len() == 3·width·height`).
    fn segment(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<MaskSet>;
}

/// Reads a text file of at most `max` bytes: a path that names a device or a huge file by
/// mistake (`/dev/zero`, a weights file) is an `InvalidData` error instead of unbounded memory.
pub fn read_text_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over {max} bytes, more than a file of this kind holds"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// The largest masks file read (a COCO RLE JSON list).
pub const MAX_MASKS_JSON_BYTES: u64 = 256 << 20;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| SegmentError::Invalid(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
