use std::path::PathBuf;

/// Every failure of this crate. Messages name the file, mask index and field involved.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed mask JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error(
        "{context}: the file holds no masks (use the mask-free path instead of an empty mask set)"
    )]
    NoMasks { context: String },
    #[error("{context}: mask {index}: {message}")]
    BadMask {
        context: String,
        index: usize,
        message: String,
    },
    #[error("{context}: mask {index} is {got_h}x{got_w} (HxW) but mask 0 is {want_h}x{want_w}")]
    InconsistentSize {
        context: String,
        index: usize,
        got_h: usize,
        got_w: usize,
        want_h: usize,
        want_w: usize,
    },
    #[error("masks are {mask_h}x{mask_w} (HxW) but the image is {image_h}x{image_w}")]
    SizeMismatch {
        mask_h: usize,
        mask_w: usize,
        image_h: usize,
        image_w: usize,
    },
    #[error("corrupt RLE: {0}")]
    CorruptRle(String),
    #[error("{path}: not a usable .npy mask: {message}")]
    Npy { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, SegmentError>;
