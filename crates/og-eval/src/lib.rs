//! Evaluation of OG-LLaVA on the benchmarks of the paper's Table 1, from their public files.
//!
//! - [`item`]: the [`Benchmark`]s and the multiple-choice [`Item`]s read from them.
//! - [`table`]: CSV/TSV/JSONL/JSON/parquet files as tables (errors name file, row, column).
//! - [`readers`]: one reader per benchmark family, in the layouts users download.
//! - [`protocol`]: the paper harness's prompts and answer extraction, likelihood ranking and
//!   circular evaluation.
//! - [`score`]: asking a model ([`Evaluator`]): images (ARO's crop, masks on the OG path),
//!   option likelihoods, greedy generation.
//! - [`metrics`]: each benchmark's headline numbers with Wilson 95% intervals.
//! - [`run`]: a resumable run into `items.jsonl` and `results.json`.

pub mod item;
pub mod metrics;
pub mod protocol;
pub mod readers;
pub mod run;
pub mod score;
pub mod table;

pub use item::{Benchmark, ImageSource, Item};
pub use metrics::{Share, Summary, summarize, wilson};
pub use protocol::Protocol;
pub use readers::{CAPTION_PROMPT, read_benchmark};
pub use run::{RunConfig, run_benchmark};
pub use score::{
    Accuracy, EvalError, Evaluator, MaskMode, OnTheFly, Record, Results, generation_key, result_key,
};
