use std::path::PathBuf;

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("llm config: {0}")]
    Config(String),
    #[error("llm input: {0}")]
    Input(String),
    #[error(transparent)]
    Checkpoint(#[from] og_weights::WeightError),
}

pub type Result<T> = std::result::Result<T, LlmError>;
