use std::path::PathBuf;

/// Everything that can go wrong building, loading or running SAM 2.
#[derive(Debug, thiserror::Error)]
pub enum Sam2Error {
    /// A configuration that is malformed or describes a model this crate cannot build.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A configuration built in code that is not a valid SAM 2.
    #[error("invalid SAM 2 configuration: {0}")]
    Invalid(String),
    /// Missing, mis-shaped or unreadable tensors.
    #[error(transparent)]
    Weights(#[from] og_weights::WeightError),
    /// Prompts or images the model cannot take.
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Sam2Error>;
