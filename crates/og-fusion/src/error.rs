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
    Checkpoint(#[from] og_weights::WeightError),
    #[error(transparent)]
    Vision(#[from] og_vision::VisionError),
    #[error(transparent)]
    Segment(#[from] og_segment::SegmentError),
}

pub type Result<T> = std::result::Result<T, FusionError>;

/// Fails with [`FusionError::MaskSize`] unless a `mask` (width, height) equals the `image`'s.
pub(crate) fn expect_mask_size(mask: (usize, usize), image: (usize, usize)) -> Result<()> {
    if mask != image {
        return Err(FusionError::MaskSize {
            mask_w: mask.0,
            mask_h: mask.1,
            image_w: image.0,
            image_h: image.1,
        });
    }
    Ok(())
}
