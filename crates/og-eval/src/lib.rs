//! Evaluation of OG-LLaVA.
//!
//! Not yet implemented; the crate exists so the layering is visible (see README.md).
