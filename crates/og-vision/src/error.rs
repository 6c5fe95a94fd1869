use std::path::PathBuf;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("image is {width}x{height}: zero-sized images have no frame")]
    ZeroSize { width: usize, height: usize },
    #[error(
        "image is {width}x{height}: preprocessing would make a {pixels}-pixel intermediate image \
         (padded to square or resized), over the limit of {limit}"
    )]
    TooLarge {
        width: usize,
        height: usize,
        pixels: u128,
        limit: u128,
    },
    #[error("mask is {mask_w}x{mask_h} (WxH) but the image is {image_w}x{image_h}")]
    MaskSize {
        mask_w: usize,
        mask_h: usize,
        image_w: usize,
        image_h: usize,
    },
    #[error("invalid frame: {0}")]
    BadFrame(String),
    #[error("vision config: {0}")]
    Config(String),
    #[error("vision input: {0}")]
    Input(String),
    #[error(transparent)]
    Checkpoint(#[from] og_weights::WeightError),
}

pub type Result<T> = std::result::Result<T, VisionError>;
