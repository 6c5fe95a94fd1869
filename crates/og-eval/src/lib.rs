//! Evaluation of OG-LLaVA: benchmark readers in their native formats and scoring.
//!
//! - [`bench`]: ARO's VG-Relation / VG-Attribution / COCO-Order JSON and MMVP's
//!   `Questions.csv`, read into multiple-choice [`Item`]s (errors name the file and the row).
//! - [`score`]: log-likelihood ranking of the options with [`og_llava::OgLlava::score`], with or
//!   without masks at inference; accuracy per benchmark and split, MMVP's pair accuracy.

pub mod bench;
pub mod score;

pub use bench::{Item, read_aro_attribution, read_aro_order, read_aro_relation, read_mmvp};
pub use score::{Accuracy, EvalError, Evaluator, Results};
