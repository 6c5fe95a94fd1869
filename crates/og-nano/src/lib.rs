//! The nano world: a procedurally generated scene world in which the whole OG-LLaVA
//! experiment — tokenizer, contrastive tiny CLIP, tiny Llama, stage 1 + 2 for the LLaVA
//! baseline and OG-LLaVA, ARO/MMVP-style evaluation — runs on a CPU.
//!
//! - [`scene`]: coloured shapes, anti-aliased rendering, visible instance masks;
//! - [`text`]: captions, questions, and evaluation items in the real benchmarks' formats;
//! - [`world`]: writes a world (images, masks, LLaVA conversation JSON, evaluation sets);
//! - [`tokenizer`]: step 1, a tokenizer trained on the world's text;
//! - [`pretrain`]: steps 2 and 3, a contrastive tiny CLIP and a tiny Llama;
//! - [`experiment`]: all steps, both arms, evaluation, results;
//! - [`report`]: `report.html` with tables, charts, loss curves and sample scenes.
//!
//! Everything is deterministic by seed (SplitMix64 throughout).

mod base;
mod evaluate;
pub mod experiment;
pub mod pretrain;
pub mod probe;
pub mod report;
pub mod scene;
pub mod summary;
pub mod text;
pub mod tokenizer;
pub mod world;

pub use scene::{Colour, Object, Relation, Scene, SceneSpec, Shape, Size, Texture};
pub use world::{WorldConfig, WorldError, WorldSummary, generate, heldout_pairs};
