//! CLIP ViT, the frozen vision encoder of LLaVA-1.5 and OG-LLaVA (ViT-L/14@336: X' is the
//! hidden state of layer −2 with CLS dropped, V = 576, F = 1024).

mod config;
mod load;
mod model;

pub use config::{ClipActivation, ClipVisionConfig, MAX_IMAGE_SIZE, SelectFeature};
pub use load::VISION_PREFIXES;
pub use model::{
    ClipAttention, ClipEncoderLayer, ClipMlp, ClipVisionEmbeddings, ClipVisionOutput,
    ClipVisionTransformer,
};
