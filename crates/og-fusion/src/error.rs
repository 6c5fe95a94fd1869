/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    #[error("mask is {mask_w}x{mask_h} (WxH) but the image is {image_w}x{image_h}")]
    MaskSize {
        mask_w: usize,
        mask_h: usize,
        image_w: usize,
        image_h: usize,
    },
    #[error("{got} masks for one image exceed the limit of {max} (raise max_masks if intended)")]
    TooManyMasks { got: usize, max: usize },
    #[error("invalid fusion configuration: {0}")]
    Config(String),
    #[error("inconsistent batch: {0}")]
    Batch(String),
    #[error("{path}: {message}")]
    Weights {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Vision(#[from] og_vision::VisionError),
    #[error(transparent)]
    Segment(#[from] og_segment::SegmentError),
}

pub type Result<T> = std::result::Result<T, FusionError>;
