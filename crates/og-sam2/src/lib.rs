//! SAM 2 (Ravi et al. 2024, "SAM 2: Segment Anything in Images and Videos") for images, in
//! Burn, generic over the backend.
//!
//! - [`Sam2Config`]: transformers' `Sam2Config` read from `config.json` (every Hiera variant:
//!   tiny, small, base-plus, large).
//! - [`Sam2Model`]: the Hiera image encoder with its FPN neck, the prompt encoder (points,
//!   boxes, mask logits) and the mask decoder (multimask output, IoU and object-score heads,
//!   dynamic multimask selection by stability), loading transformers' `Sam2Model`
//!   checkpoints. Parameter names are transformers'.
//!
//! The video memory (memory encoder/attention, object pointers) is not part of the image model.

pub mod amg;
pub mod config;
pub mod decoder;
mod error;
pub mod hiera;
mod load;
mod model;
pub mod preprocess;
pub mod prompt;

pub use amg::{AmgConfig, GeneratedMask, Region, Sam2Segmenter, remove_small_regions};
pub use config::{HieraConfig, MaskDecoderConfig, NeckConfig, PromptEncoderConfig, Sam2Config};
pub use decoder::MaskPrediction;
pub use error::{Result, Sam2Error};
pub use load::Layout;
pub use model::{ImageEmbeddings, Sam2Model};
pub use prompt::{Points, Prompts, label};

/// A tensor's values on the host as f32 (converted first, so bf16 devices read back too).
pub(crate) fn host_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("converted data is f32")
}
