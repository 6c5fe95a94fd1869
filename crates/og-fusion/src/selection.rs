//! From masks (or windows) to the ordered groups of patch indices the connector concatenates:
//! `Y = [P_1 X'; …; P_N X']` of Eq. (4)–(5).

use og_segment::MaskSet;
use og_vision::Frame;
use serde::{Deserialize, Serialize};

use crate::error::{FusionError, Result, expect_mask_size};
use crate::phi::Phi;

/// The order in which mask groups are concatenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskOrder {
    /// Largest mask first (by kept patches, then by pixel area, then input index).
    #[default]
    AreaDesc,
    /// Highest segmenter score first (`predicted_iou`; masks without one last).
    Score,
    /// As given in the input.
    Given,
}

/// How the token budget `max_tokens` is enforced.
///
/// Masks are visited in concatenation order; a mask whose kept patches do not fit in what is
/// left of the budget is skipped whole (an object is never half-represented) and later, smaller
/// masks may still fit. The complement group, if any, comes last and is cut to the remaining
/// budget (it is background, not an object).
pub const TOKEN_CAP_POLICY: &str =
    "whole masks in order, skipping those that do not fit; complement truncated";

/// Configuration of the grouping step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionConfig {
    pub phi: Phi,
    pub order: MaskOrder,
    /// Add a group of the patches no kept mask covers (after the masks).
    pub complement: bool,
    /// Cap on the number of selected patch rows T (see [`TOKEN_CAP_POLICY`]).
    pub max_tokens: Option<usize>,
    /// Masks beyond this count are rejected as bad input.
    pub max_masks: usize,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            phi: Phi::default(),
            order: MaskOrder::AreaDesc,
            complement: false,
            max_tokens: None,
            max_masks: 1024,
        }
    }
}

/// Where a group of patches comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "index", rename_all = "snake_case")]
pub enum GroupSource {
    /// Input mask number k (position in the `MaskSet`).
    Mask(usize),
    /// Patches no kept mask covers.
    Complement,
    /// Sliding window number k.
    Window(usize),
    /// The whole grid in raster order: the mask-free path and the no-mask-kept fallback.
    FullGrid,
}

/// One group: its source and its ascending patch indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub source: GroupSource,
    pub indices: Vec<u32>,
}

/// The groups of one image, in concatenation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Patch grid (rows, columns); V = rows·columns.
    pub grid: (usize, usize),
    pub groups: Vec<Group>,
    /// Kept indices of every input mask, in input order (empty lists included), before the
    /// token cap; empty when the selection did not come from masks.
    pub per_mask: Vec<Vec<u32>>,
}

impl Selection {
    /// The plain LLaVA path: all V rows in raster order, one group.
    pub fn full_grid(grid: (usize, usize)) -> Self {
        Self {
            grid,
            groups: vec![Group {
                source: GroupSource::FullGrid,
                indices: (0..(grid.0 * grid.1) as u32).collect(),
            }],
            per_mask: Vec::new(),
        }
    }

    /// True on the mask-free path (or when no mask kept any patch).
    pub fn is_full_grid(&self) -> bool {
        matches!(self.groups.as_slice(), [g] if g.source == GroupSource::FullGrid)
    }

    /// T: the number of selected patch rows.
    pub fn total_tokens(&self) -> usize {
        self.groups.iter().map(|g| g.indices.len()).sum()
    }

    pub fn num_patches(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// Selects groups from masks (Φ, drop empty masks, order, complement, cap). With no mask
    /// keeping any patch, falls back to the full grid (the paper's behaviour).
    pub fn from_masks(masks: &MaskSet, frame: &Frame, config: &SelectionConfig) -> Result<Self> {
        if masks.len() > config.max_masks {
            return Err(FusionError::TooManyMasks {
                got: masks.len(),
                max: config.max_masks,
            });
        }
        expect_mask_size((masks.width(), masks.height()), frame.original_size())?;
        let phi = config.phi.prepare(frame)?;
        let per_mask = masks
            .iter()
            .map(|m| phi.kept(&m.rle.to_bitmap()))
            .collect::<Result<Vec<_>>>()?;
        let grid = frame.grid();
        let mut order: Vec<usize> = (0..masks.len())
            .filter(|&k| !per_mask[k].is_empty())
            .collect();
        if order.is_empty() {
            return Ok(Self {
                per_mask,
                ..Self::full_grid(grid)
            });
        }
        match config.order {
            MaskOrder::Given => {}
            MaskOrder::AreaDesc => order.sort_by_key(|&k| {
                (
                    std::cmp::Reverse(per_mask[k].len()),
                    std::cmp::Reverse(masks.masks()[k].area()),
                    k,
                )
            }),
            MaskOrder::Score => order.sort_by(|&a, &b| {
                let (sa, sb) = (masks.masks()[a].score, masks.masks()[b].score);
                let key = |s: Option<f32>| s.map(|v| -v as f64).unwrap_or(f64::INFINITY);
                key(sa).total_cmp(&key(sb)).then(a.cmp(&b))
            }),
        }
        let mut budget = config.max_tokens.unwrap_or(usize::MAX);
        let mut groups = Vec::with_capacity(order.len() + 1);
        for k in order {
            if per_mask[k].len() <= budget {
                budget -= per_mask[k].len();
                groups.push(Group {
                    source: GroupSource::Mask(k),
                    indices: per_mask[k].clone(),
                });
            }
        }
        if config.complement {
            let mut covered = vec![false; grid.0 * grid.1];
            for g in &groups {
                for &i in &g.indices {
                    covered[i as usize] = true;
                }
            }
            let rest: Vec<u32> = (0..covered.len() as u32)
                .filter(|&i| !covered[i as usize])
                .take(budget)
                .collect();
            if !rest.is_empty() {
                groups.push(Group {
                    source: GroupSource::Complement,
                    indices: rest,
                });
            }
        }
        if groups.is_empty() {
            return Err(FusionError::Config(format!(
                "max_tokens = {:?} leaves room for no mask",
                config.max_tokens
            )));
        }
        Ok(Self {
            grid,
            groups,
            per_mask,
        })
    }

    /// Sliding windows in place of masks (paper 5.4): `k` disjoint windows.
    pub fn from_windows(grid: (usize, usize), windows: Windows) -> Result<Self> {
        let v = grid.0 * grid.1;
        let groups = match windows {
            Windows::Raster { k } => {
                if k == 0 || k > v {
                    return Err(FusionError::Config(format!(
                        "{k} raster windows for {v} patches"
                    )));
                }
                // As the released code: k ranges of ⌊V/k⌋, the last one takes the remainder.
                let size = v / k;
                (0..k)
                    .map(|i| Group {
                        source: GroupSource::Window(i),
                        indices: (i * size..if i + 1 == k { v } else { (i + 1) * size })
                            .map(|j| j as u32)
                            .collect(),
                    })
                    .collect()
            }
            Windows::Tiles { k } => {
                if k == 0 || k > v {
                    return Err(FusionError::Config(format!("{k} tiles for {v} patches")));
                }
                // The most square factorisation k = tr·tc with tr ≤ tc that fits the grid.
                let (tr, tc) = (1..=k)
                    .filter(|&tr| k % tr == 0 && tr <= k / tr && tr <= grid.0 && k / tr <= grid.1)
                    .map(|tr| (tr, k / tr))
                    .next_back()
                    .ok_or_else(|| {
                        FusionError::Config(format!(
                            "{k} tiles do not fit a {}x{} grid",
                            grid.0, grid.1
                        ))
                    })?;
                let mut groups = Vec::with_capacity(k);
                for ti in 0..tr {
                    let (r0, r1) = (ti * grid.0 / tr, (ti + 1) * grid.0 / tr);
                    for tj in 0..tc {
                        let (c0, c1) = (tj * grid.1 / tc, (tj + 1) * grid.1 / tc);
                        let indices = (r0..r1)
                            .flat_map(|r| (c0..c1).map(move |c| (r * grid.1 + c) as u32))
                            .collect();
                        groups.push(Group {
                            source: GroupSource::Window(ti * tc + tj),
                            indices,
                        });
                    }
                }
                groups
            }
        };
        Ok(Self {
            grid,
            groups,
            per_mask: Vec::new(),
        })
    }

    /// The documented TOKENS.json report of this selection.
    pub fn report(&self, phi: &Phi) -> TokensReport {
        let sequence = self
            .groups
            .iter()
            .filter_map(|g| match g.source {
                GroupSource::Mask(k) => Some(k),
                _ => None,
            })
            .collect();
        TokensReport {
            grid: self.grid.1,
            phi: phi.name().to_string(),
            alpha: match *phi {
                Phi::RasterStrip1d { alpha } => alpha,
                Phi::PatchGrid2d { threshold } => match threshold {
                    crate::phi::Threshold::Pixels(a) => a,
                    crate::phi::Threshold::Fraction(f) => f,
                },
            },
            alpha_unit: match *phi {
                Phi::RasterStrip1d { .. } => "listing_count",
                Phi::PatchGrid2d { threshold } => match threshold {
                    crate::phi::Threshold::Pixels(_) => "pixels",
                    crate::phi::Threshold::Fraction(_) => "fraction",
                },
            }
            .to_string(),
            masks: self
                .per_mask
                .iter()
                .enumerate()
                .map(|(k, kept)| MaskReport {
                    input_index: k,
                    kept: kept.clone(),
                })
                .collect(),
            sequence,
            fallback_full_grid: self.is_full_grid(),
            total_tokens: self.total_tokens(),
        }
    }
}

/// Sliding-window groupings used in place of masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Windows {
    /// k contiguous raster ranges of the flattened grid (the released code's windows).
    Raster { k: usize },
    /// k rectangular tiles of the 2-D grid.
    Tiles { k: usize },
}

/// TOKENS.json: what `og-llava tokens` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokensReport {
    pub grid: usize,
    pub phi: String,
    pub alpha: f64,
    /// `listing_count` (Listing 1's count), `pixels` or `fraction` (patch-aligned Φ).
    pub alpha_unit: String,
    pub masks: Vec<MaskReport>,
    /// Input indices in concatenation order.
    pub sequence: Vec<usize>,
    /// True when no mask kept any patch and the full grid was used instead.
    pub fallback_full_grid: bool,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskReport {
    pub input_index: usize,
    pub kept: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use og_segment::{Bitmap, Mask, MaskSet, Rle};
    use og_vision::FrameConfig;

    fn rect(h: usize, w: usize, y0: usize, y1: usize, x0: usize, x1: usize, score: f32) -> Mask {
        Mask {
            score: Some(score),
            ..Mask::new(Rle::from_bitmap(&Bitmap::from_fn(h, w, |y, x| {
                (y0..y1).contains(&y) && (x0..x1).contains(&x)
            })))
        }
    }

    fn set() -> (MaskSet, Frame) {
        // 336x336 image: patches are 14 px. Mask 0: 1 patch, mask 1: 4 patches, mask 2: none.
        let frame = FrameConfig::clip_336().frame(336, 336).unwrap();
        let masks = MaskSet::new(vec![
            rect(336, 336, 0, 14, 0, 14, 0.9),
            rect(336, 336, 28, 56, 28, 56, 0.5),
            rect(336, 336, 0, 0, 0, 0, 0.99),
        ])
        .unwrap();
        (masks, frame)
    }

    #[test]
    fn order_policies_and_empty_masks() {
        let (masks, frame) = set();
        let mut cfg = SelectionConfig::default();
        let s = Selection::from_masks(&masks, &frame, &cfg).unwrap();
        let src: Vec<_> = s.groups.iter().map(|g| g.source).collect();
        assert_eq!(src, vec![GroupSource::Mask(1), GroupSource::Mask(0)]);
        assert_eq!(s.total_tokens(), 5);
        assert_eq!(s.per_mask[2], Vec::<u32>::new());
        assert_eq!(s.groups[0].indices, vec![50, 51, 74, 75]);
        cfg.order = MaskOrder::Score;
        let s = Selection::from_masks(&masks, &frame, &cfg).unwrap();
        assert_eq!(s.groups[0].source, GroupSource::Mask(0));
        cfg.order = MaskOrder::Given;
        cfg.complement = true;
        let s = Selection::from_masks(&masks, &frame, &cfg).unwrap();
        assert_eq!(s.groups.len(), 3);
        assert_eq!(s.groups[2].source, GroupSource::Complement);
        assert_eq!(s.total_tokens(), 576);
        let r = s.report(&cfg.phi);
        assert_eq!(r.sequence, vec![0, 1]);
        assert_eq!(r.masks.len(), 3);
    }

    #[test]
    fn token_cap_skips_whole_masks() {
        let (masks, frame) = set();
        let cfg = SelectionConfig {
            max_tokens: Some(3),
            ..Default::default()
        };
        let s = Selection::from_masks(&masks, &frame, &cfg).unwrap();
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].source, GroupSource::Mask(0));
    }

    #[test]
    fn fallback_and_limits() {
        let frame = FrameConfig::clip_336().frame(336, 336).unwrap();
        let empty = MaskSet::new(vec![rect(336, 336, 0, 0, 0, 0, 0.1)]).unwrap();
        let s = Selection::from_masks(&empty, &frame, &SelectionConfig::default()).unwrap();
        assert!(s.is_full_grid());
        assert_eq!(s.total_tokens(), 576);
        let many = MaskSet::new(vec![
            Mask::new(Rle::from_counts(4, 4, vec![16]).unwrap());
            5000
        ])
        .unwrap();
        let frame4 = FrameConfig::clip_336().frame(4, 4).unwrap();
        let e = Selection::from_masks(&many, &frame4, &SelectionConfig::default()).unwrap_err();
        assert!(
            matches!(e, FusionError::TooManyMasks { got: 5000, .. }),
            "{e}"
        );
        let e = Selection::from_masks(&empty, &frame4, &SelectionConfig::default()).unwrap_err();
        assert!(matches!(e, FusionError::MaskSize { .. }), "{e}");
    }

    #[test]
    fn windows() {
        let s = Selection::from_windows((24, 24), Windows::Raster { k: 5 }).unwrap();
        let lens: Vec<_> = s.groups.iter().map(|g| g.indices.len()).collect();
        assert_eq!(lens, vec![115, 115, 115, 115, 116]);
        let s = Selection::from_windows((24, 24), Windows::Tiles { k: 10 }).unwrap();
        assert_eq!(s.groups.len(), 10);
        assert_eq!(s.total_tokens(), 576);
        let mut all: Vec<u32> = s.groups.iter().flat_map(|g| g.indices.clone()).collect();
        all.sort();
        assert_eq!(all, (0..576).collect::<Vec<u32>>());
        assert_eq!(s.groups[0].indices[..3], [0, 1, 2]);
        assert!(Selection::from_windows((24, 24), Windows::Tiles { k: 0 }).is_err());
    }
}
