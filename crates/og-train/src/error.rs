use std::path::PathBuf;

/// Every failure of og-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] og_llava::ModelError),
    #[error(transparent)]
    Llm(#[from] og_llava::og_llm::LlmError),
    #[error(transparent)]
    Weights(#[from] og_weights::WeightError),
    #[error(transparent)]
    Segment(#[from] og_llava::og_segment::SegmentError),
    /// A data-parallel run's collective communication or one of its replicas failed.
    #[error("data-parallel training: {0}")]
    Collective(String),
    #[error(
        "step {step}: the loss is not finite ({loss}); stopped. The last good checkpoint is {}",
        last_good.as_ref().map_or("none (no checkpoint written yet)".to_string(), |p| p.display().to_string())
    )]
    NonFinite {
        step: usize,
        loss: f64,
        last_good: Option<PathBuf>,
    },
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
