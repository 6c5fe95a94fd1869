//! OG-Fusion, the object-guided connector of OG-LLaVA (Nulli et al., Section 2.1).
//!
//! 1. [`Phi`] maps each mask to the encoder patches it keeps (Eq. 2–3): the paper-exact
//!    [`Phi::RasterStrip1d`] (Listing 1) or the default [`Phi::PatchGrid2d`].
//! 2. [`Selection`] applies the mask policy (drop empty masks, order, complement, token cap,
//!    fallback to the full grid) or sliding [`Windows`], giving ordered groups `P_i`.
//! 3. [`OgFusion`] gathers `Y = [P_1 X'; …; P_N X']` (Eq. 4–5), projects it with
//!    `mlp2x_gelu` (Eq. 6) and adds the configured positional encoding, batched with padding
//!    masks and per-token segment ids for the LLM.

mod connector;
mod error;
mod phi;
mod selection;
mod weights;

pub use connector::{
    Delimiter, FusionOutput, GlobalView, OgFusion, OgFusionConfig, PositionalEncoding, TokenKind,
    TokenLayout, sinusoid,
};
pub use error::{FusionError, Result};
pub use phi::{Phi, PreparedPhi, Threshold, adaptive_bin, raster_strip_1d};
pub use selection::{
    Group, GroupSource, MaskOrder, MaskReport, Selection, SelectionConfig, TOKEN_CAP_POLICY,
    TokensReport, Windows,
};
