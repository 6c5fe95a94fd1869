//! SAM 2's automatic mask generator, as the `sam2` package's `SAM2AutomaticMaskGenerator`
//! (the segmenter of the released OG-LLaVA pipeline): a grid of single-point prompts over the
//! image (and over crops of it), three masks per point, filtered by predicted IoU and by
//! stability (the IoU of the mask thresholded at ±offset), binarised at the image's resolution,
//! de-duplicated by box non-maximum suppression, run-length encoded.

use std::borrow::Cow;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use og_segment::{Bitmap, Mask, MaskSet, Rle, Segmenter};
use serde::{Deserialize, Serialize};

use crate::error::{Result, Sam2Error};
use crate::model::Sam2Model;
use crate::preprocess::{check_rgb, pixel_values, upsample_bilinear};
use crate::prompt::{Points, Prompts, label};

/// The generator's settings. Defaults are the released OG-LLaVA configuration (32×32 points,
/// predicted IoU > 0.9, stability ≥ 0.95, box NMS 0.7, no crops); the `sam2` package's own
/// defaults differ only in `pred_iou_thresh` (0.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmgConfig {
    /// Points along each side of the grid (of the whole image; crops of layer `i` use
    /// `points_per_side / crop_n_points_downscale_factor^i`).
    pub points_per_side: usize,
    /// Points decoded together (memory against speed; the masks do not depend on it).
    pub points_per_batch: usize,
    /// Keep masks whose predicted IoU is above this.
    pub pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this.
    pub stability_score_thresh: f32,
    /// The ± shift of the logit threshold the stability score compares.
    pub stability_score_offset: f32,
    /// Logit threshold of a mask pixel.
    pub mask_threshold: f32,
    /// IoU above which box NMS drops the lower-scored mask (within a crop).
    pub box_nms_thresh: f32,
    /// Crop layers (layer `i` has `(2^i)²` overlapping crops, each segmented on its own).
    pub crop_n_layers: usize,
    /// Box NMS across crops (masks of smaller crops preferred, as the package does).
    pub crop_nms_thresh: f32,
    /// Overlap of neighbouring crops, as a fraction of the image's short side.
    pub crop_overlap_ratio: f64,
    /// Grid thinning per crop layer.
    pub crop_n_points_downscale_factor: usize,
    /// Three masks per point (else one).
    pub multimask_output: bool,
    /// The largest image segmented, in pixels (each kept mask is upsampled to the image, so
    /// memory grows with it).
    pub max_pixels: usize,
    /// Holes and islands smaller than this many pixels are removed from every kept mask (8-
    /// connected regions, as the package does with OpenCV), then box NMS runs again; 0: off.
    /// The package's predictor also fills small holes in the low-resolution logits when its
    /// CUDA connected-components extension is built; that step is not applied here (as on a
    /// package installed without the extension).
    pub min_mask_region_area: usize,
}

impl Default for AmgConfig {
    fn default() -> Self {
        Self {
            points_per_side: 32,
            points_per_batch: 64,
            pred_iou_thresh: 0.9,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            mask_threshold: 0.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            multimask_output: true,
            max_pixels: 4096 * 4096,
            min_mask_region_area: 0,
        }
    }
}

/// One mask the generator keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedMask {
    /// At the image's resolution.
    pub rle: Rle,
    /// `[x0, y0, x1, y1]`, inclusive pixel extremes (all 0 for an empty mask).
    pub bbox: [u32; 4],
    pub predicted_iou: f32,
    pub stability_score: f32,
    /// The point prompt, in image pixels.
    pub point: [f32; 2],
    /// `[x0, y0, x1, y1)` of the crop it was found in.
    pub crop_box: [usize; 4],
}

/// Point batches decoded so far, and whom to tell.
struct Batches<'a> {
    done: usize,
    total: usize,
    report: &'a mut dyn FnMut(usize, usize),
}

/// A mask between filtering and NMS, in crop coordinates until uncropped.
struct Candidate {
    bitmap: Bitmap,
    bbox: [u32; 4],
    iou: f32,
    stability: f32,
    point: [f32; 2],
}

impl AmgConfig {
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Sam2Error::Input(format!("mask generator: {what}")));
        if self.points_per_side == 0 || self.points_per_batch == 0 {
            return bad("points_per_side and points_per_batch must be at least 1");
        }
        if self.crop_n_points_downscale_factor == 0 {
            return bad("crop_n_points_downscale_factor must be at least 1");
        }
        let finite = [
            self.pred_iou_thresh,
            self.stability_score_thresh,
            self.stability_score_offset,
            self.mask_threshold,
            self.box_nms_thresh,
            self.crop_nms_thresh,
        ];
        if finite.iter().any(|v| !v.is_finite()) || !self.crop_overlap_ratio.is_finite() {
            return bad("thresholds must be finite numbers");
        }
        if self.crop_n_layers > 4 {
            return bad("at most 4 crop layers (layer 4 already has 256 crops)");
        }
        if !(0.0..1.0).contains(&self.crop_overlap_ratio) {
            return bad("crop_overlap_ratio must be in [0, 1)");
        }
        Ok(())
    }

    /// The normalised `(x, y)` grid of `n × n` cell centres, row by row.
    fn point_grid(n: usize) -> Vec<[f64; 2]> {
        let offset = 1.0 / (2 * n) as f64;
        let side: Vec<f64> = if n == 1 {
            vec![offset]
        } else {
            let step = (1.0 - 2.0 * offset) / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    if i == n - 1 {
                        1.0 - offset
                    } else {
                        offset + i as f64 * step
                    }
                })
                .collect()
        };
        side.iter()
            .flat_map(|&y| side.iter().map(move |&x| [x, y]))
            .collect()
    }

    /// The crops of every layer, `[x0, y0, x1, y1)`, with their layer; layer 0 is the image.
    pub fn crop_boxes(&self, width: usize, height: usize) -> Vec<([usize; 4], usize)> {
        let mut boxes = vec![([0, 0, width, height], 0)];
        let short = width.min(height) as f64;
        let crop_len = |len: usize, n: usize, overlap: usize| {
            ((overlap * (n - 1) + len) as f64 / n as f64).ceil() as usize
        };
        for layer in 0..self.crop_n_layers {
            let n = 1usize << (layer + 1);
            let overlap = (self.crop_overlap_ratio * short * (2.0 / n as f64)) as usize;
            let (cw, ch) = (crop_len(width, n, overlap), crop_len(height, n, overlap));
            for i in 0..n {
                for j in 0..n {
                    let (x0, y0) = ((cw - overlap) * i, (ch - overlap) * j);
                    let b = [x0, y0, (x0 + cw).min(width), (y0 + ch).min(height)];
                    // A tiny image can leave a crop of no pixels.
                    if b[0] < b[2] && b[1] < b[3] {
                        boxes.push((b, layer + 1));
                    }
                }
            }
        }
        boxes
    }

    /// Segments a row-major RGB8 image into every mask that passes the filters, best first
    /// within each crop.
    pub fn generate<B: Backend>(
        &self,
        model: &Sam2Model<B>,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<GeneratedMask>> {
        self.generate_with_progress(model, rgb, width, height, &mut |_, _| {})
    }

    /// [`AmgConfig::generate`], reporting `(point batches done, total)` before the first
    /// batch and after each.
    pub fn generate_with_progress<B: Backend>(
        &self,
        model: &Sam2Model<B>,
        rgb: &[u8],
        width: usize,
        height: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<GeneratedMask>> {
        self.check()?;
        check_rgb(rgb, width, height)?;
        if width * height > self.max_pixels {
            return Err(Sam2Error::Input(format!(
                "a {width}x{height} image is over the mask generator's {}-pixel limit",
                self.max_pixels
            )));
        }
        let crops = self.crop_boxes(width, height);
        let total: usize = crops
            .iter()
            .map(|&(_, layer)| {
                self.points_in_layer(layer)
                    .pow(2)
                    .div_ceil(self.points_per_batch)
            })
            .sum();
        progress(0, total);
        let mut batches = Batches {
            done: 0,
            total,
            report: progress,
        };
        let mut kept: Vec<GeneratedMask> = Vec::new();
        for &(crop, layer) in &crops {
            kept.extend(self.process_crop(
                model,
                rgb,
                (width, height),
                crop,
                layer,
                &mut batches,
            )?);
        }
        if crops.len() > 1 {
            // Across crops the package prefers masks from smaller crops (score 1/area).
            let scores: Vec<f32> = kept
                .iter()
                .map(|m| {
                    let [x0, y0, x1, y1] = m.crop_box;
                    1.0 / ((x1 - x0) * (y1 - y0)) as f32
                })
                .collect();
            let boxes: Vec<[u32; 4]> = kept.iter().map(|m| m.bbox).collect();
            kept = in_order(kept, &nms(&boxes, &scores, self.crop_nms_thresh));
        }
        if self.min_mask_region_area > 0 {
            kept = self.remove_small_regions(kept);
        }
        Ok(kept)
    }

    /// The package's `postprocess_small_regions`: holes, then islands, below the area removed
    /// from each mask; NMS again, preferring masks that did not change.
    fn remove_small_regions(&self, masks: Vec<GeneratedMask>) -> Vec<GeneratedMask> {
        let area = self.min_mask_region_area;
        let cleaned: Vec<(Bitmap, bool)> = masks
            .iter()
            .map(|m| {
                let (b, holes) = remove_small_regions(&m.rle.to_bitmap(), area, Region::Holes);
                let (b, islands) = remove_small_regions(&b, area, Region::Islands);
                (b, holes || islands)
            })
            .collect();
        let boxes: Vec<[u32; 4]> = cleaned.iter().map(|(b, _)| mask_box(b)).collect();
        let scores: Vec<f32> = cleaned
            .iter()
            .map(|(_, changed)| if *changed { 0.0 } else { 1.0 })
            .collect();
        let order = nms(
            &boxes,
            &scores,
            self.box_nms_thresh.max(self.crop_nms_thresh),
        );
        let cleaned: Vec<_> = masks.into_iter().zip(cleaned).zip(boxes).collect();
        in_order(cleaned, &order)
            .into_iter()
            .map(|((mut m, (bitmap, changed)), bbox)| {
                if changed {
                    m.rle = Rle::from_bitmap(&bitmap);
                    m.bbox = bbox;
                }
                m
            })
            .collect()
    }

    /// Points per side of the grid of crop layer `layer`.
    fn points_in_layer(&self, layer: usize) -> usize {
        (self.points_per_side / self.crop_n_points_downscale_factor.pow(layer as u32)).max(1)
    }

    fn process_crop<B: Backend>(
        &self,
        model: &Sam2Model<B>,
        rgb: &[u8],
        (width, height): (usize, usize),
        crop: [usize; 4],
        layer: usize,
        batches: &mut Batches<'_>,
    ) -> Result<Vec<GeneratedMask>> {
        let [x0, y0, x1, y1] = crop;
        let (cw, ch) = (x1 - x0, y1 - y0);
        let cropped: Cow<[u8]> = if [cw, ch] == [width, height] {
            Cow::Borrowed(rgb)
        } else {
            (y0..y1)
                .flat_map(|y| {
                    rgb[3 * (y * width + x0)..3 * (y * width + x1)]
                        .iter()
                        .copied()
                })
                .collect()
        };
        let device = model.no_memory_embedding.device();
        let pixels = pixel_values::<B>(&cropped, cw, ch, model.image_size(), &device)?;
        let images = model.image_embeddings(pixels)?;
        let points: Vec<[f32; 2]> = Self::point_grid(self.points_in_layer(layer))
            .into_iter()
            .map(|[x, y]| [(x * cw as f64) as f32, (y * ch as f64) as f32])
            .collect();
        let mut candidates = Vec::new();
        for batch in points.chunks(self.points_per_batch) {
            candidates.extend(self.process_batch(
                model,
                &images,
                batch,
                (cw, ch),
                crop,
                (width, height),
            )?);
            batches.done += 1;
            (batches.report)(batches.done, batches.total);
        }
        let boxes: Vec<[u32; 4]> = candidates.iter().map(|c| c.bbox).collect();
        let scores: Vec<f32> = candidates.iter().map(|c| c.iou).collect();
        let order = nms(&boxes, &scores, self.box_nms_thresh);
        Ok(in_order(candidates, &order)
            .into_iter()
            .map(|c| {
                let off = [x0 as u32, y0 as u32, x0 as u32, y0 as u32];
                GeneratedMask {
                    rle: Rle::from_bitmap(&uncrop(c.bitmap, crop, width, height)),
                    bbox: std::array::from_fn(|i| c.bbox[i] + off[i]),
                    predicted_iou: c.iou,
                    stability_score: c.stability,
                    point: [c.point[0] + x0 as f32, c.point[1] + y0 as f32],
                    crop_box: crop,
                }
            })
            .collect())
    }

    /// Decodes one batch of points and keeps the masks that pass the filters.
    fn process_batch<B: Backend>(
        &self,
        model: &Sam2Model<B>,
        images: &crate::model::ImageEmbeddings<B>,
        points: &[[f32; 2]],
        (cw, ch): (usize, usize),
        crop: [usize; 4],
        (width, height): (usize, usize),
    ) -> Result<Vec<Candidate>> {
        let [sh, sw] = model.image_size();
        let coords: Vec<f32> = points
            .iter()
            .flat_map(|p| [p[0] / cw as f32 * sw as f32, p[1] / ch as f32 * sh as f32])
            .collect();
        let device = model.no_memory_embedding.device();
        let prompts = Prompts {
            points: Some(Points {
                coords: Tensor::from_data(
                    TensorData::new(coords, [1, points.len(), 1, 2]),
                    &device,
                ),
                labels: vec![label::FOREGROUND; points.len()],
            }),
            ..Default::default()
        };
        let out = model.predict(images, &prompts, self.multimask_output)?;
        let [_, p, k, lh, lw] = out.masks.dims();
        let logits = crate::host_f32(out.masks);
        let ious = crate::host_f32(out.iou_scores);
        let mut kept = Vec::new();
        for i in 0..p * k {
            let iou = ious[i];
            if self.pred_iou_thresh > 0.0 && iou <= self.pred_iou_thresh {
                continue;
            }
            let full =
                upsample_bilinear(&logits[i * lh * lw..(i + 1) * lh * lw], (lh, lw), (ch, cw));
            let hi = self.mask_threshold + self.stability_score_offset;
            let lo = self.mask_threshold - self.stability_score_offset;
            let (inter, union) = full.iter().fold((0usize, 0usize), |(i, u), &v| {
                (i + usize::from(v > hi), u + usize::from(v > lo))
            });
            // 0/0 is NaN in the package, which no threshold keeps.
            let stability = if union == 0 {
                f32::NAN
            } else {
                inter as f32 / union as f32
            };
            let stable = stability >= self.stability_score_thresh;
            if self.stability_score_thresh > 0.0 && !stable {
                continue;
            }
            let bitmap = Bitmap::from_fn(ch, cw, |y, x| full[y * cw + x] > self.mask_threshold);
            let bbox = mask_box(&bitmap);
            if near_crop_edge(bbox, crop, width, height) {
                continue;
            }
            kept.push(Candidate {
                bitmap,
                bbox,
                iou,
                stability,
                point: points[i / k],
            });
        }
        Ok(kept)
    }
}

/// `[x0, y0, x1, y1]` of the set pixels (inclusive), zeros when none.
fn mask_box(b: &Bitmap) -> [u32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..b.height() {
        for x in 0..b.width() {
            if b.get(y, x) {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    if x0 == usize::MAX {
        [0; 4]
    } else {
        [x0 as u32, y0 as u32, x1 as u32, y1 as u32]
    }
}

/// Whether a box (crop coordinates) touches a crop edge that is not an image edge (within 20
/// pixels): such a mask is likely cut off by the crop.
fn near_crop_edge(bbox: [u32; 4], crop: [usize; 4], width: usize, height: usize) -> bool {
    let off = [crop[0], crop[1], crop[0], crop[1]];
    let image = [0, 0, width, height];
    (0..4).any(|i| {
        let v = (bbox[i] as usize + off[i]) as f32;
        let near = |edge: usize| (v - edge as f32).abs() <= 20.0;
        near(crop[i]) && !near(image[i])
    })
}

/// Which small regions [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Background regions inside or beside the mask, filled.
    Holes,
    /// Foreground regions, dropped (the largest stays if all are small).
    Islands,
}

/// 8-connected components of the set pixels, numbered from 1 in raster order of their first
/// pixel (OpenCV's numbering); 0 where unset. Returns the labels and each component's size.
fn components(b: &Bitmap, set: bool) -> (Vec<u32>, Vec<usize>) {
    let (h, w) = (b.height(), b.width());
    let mut labels = vec![0u32; h * w];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..h * w {
        if labels[start] != 0 || b.get(start / w, start % w) != set {
            continue;
        }
        let label = sizes.len() as u32 + 1;
        labels[start] = label;
        stack.push(start);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p / w, p % w);
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let q = ny * w + nx;
                    if labels[q] == 0 && b.get(ny, nx) == set {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// The `sam2` package's `remove_small_regions`: the mask with its holes (or islands) of fewer
/// than `area` pixels removed, and whether anything changed.
pub fn remove_small_regions(b: &Bitmap, area: usize, region: Region) -> (Bitmap, bool) {
    let holes = region == Region::Holes;
    let (labels, sizes) = components(b, !holes);
    let small: Vec<bool> = sizes.iter().map(|&s| s < area).collect();
    if !small.contains(&true) {
        return (b.clone(), false);
    }
    let keep: Vec<bool> = if holes {
        small
    } else if small.iter().all(|&s| s) {
        // Every island is small: the largest (the first of equals) stays.
        let largest =
            (0..sizes.len()).fold(0, |best, i| if sizes[i] > sizes[best] { i } else { best });
        (0..sizes.len()).map(|i| i == largest).collect()
    } else {
        small.iter().map(|&s| !s).collect()
    };
    let w = b.width();
    let out = Bitmap::from_fn(b.height(), w, |y, x| match labels[y * w + x] {
        // Label 0 is the other side: the mask itself when filling holes, the background when
        // dropping islands.
        0 => holes,
        l => keep[l as usize - 1],
    });
    (out, true)
}

/// A crop's mask placed in the whole image.
fn uncrop(b: Bitmap, crop: [usize; 4], width: usize, height: usize) -> Bitmap {
    if crop == [0, 0, width, height] {
        return b;
    }
    Bitmap::from_fn(height, width, |y, x| {
        (crop[1]..crop[3]).contains(&y)
            && (crop[0]..crop[2]).contains(&x)
            && b.get(y - crop[1], x - crop[0])
    })
}

/// The items at `order`'s indices, in that order (what [`nms`] keeps, best first).
fn in_order<T>(items: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order.iter().filter_map(|&i| slots[i].take()).collect()
}

/// Greedy non-maximum suppression (torchvision's `nms`): indices by descending score, each
/// dropped when its IoU with a kept box exceeds `threshold`.
pub fn nms(boxes: &[[u32; 4]], scores: &[f32], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let area = |b: &[u32; 4]| (b[2] as f32 - b[0] as f32) * (b[3] as f32 - b[1] as f32);
    let mut keep: Vec<usize> = Vec::new();
    for &i in &order {
        let bi = &boxes[i];
        let suppressed = keep.iter().any(|&j| {
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) as f32 - bi[0].max(bj[0]) as f32).max(0.0);
            let h = (bi[3].min(bj[3]) as f32 - bi[1].max(bj[1]) as f32).max(0.0);
            let inter = w * h;
            inter / (area(bi) + area(bj) - inter) > threshold
        });
        if !suppressed {
            keep.push(i);
        }
    }
    keep
}

/// SAM 2's automatic mask generator as a [`Segmenter`].
pub struct Sam2Segmenter<B: Backend> {
    pub model: Sam2Model<B>,
    pub config: AmgConfig,
    /// Told `(point batches done, total)` while an image is segmented.
    pub progress: Option<Box<dyn FnMut(usize, usize) + Send>>,
}

impl<B: Backend> Sam2Segmenter<B> {
    /// The generator's masks as a [`MaskSet`] (scores, stability, point and crop kept as the
    /// package writes them).
    pub fn mask_set(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<Option<MaskSet>> {
        let mut silent = |_: usize, _: usize| {};
        let report: &mut dyn FnMut(usize, usize) = match &mut self.progress {
            Some(p) => p.as_mut(),
            None => &mut silent,
        };
        let masks = self
            .config
            .generate_with_progress(&self.model, rgb, width, height, report)?;
        if masks.is_empty() {
            return Ok(None);
        }
        let masks = masks
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let mut m = Mask::new(g.rle);
                m.score = Some(g.predicted_iou);
                m.stability = Some(g.stability_score);
                m.source_index = i;
                m.extra.insert(
                    "point_coords".into(),
                    serde_json::json!([[g.point[0], g.point[1]]]),
                );
                let [x0, y0, x1, y1] = g.crop_box;
                m.extra.insert(
                    "crop_box".into(),
                    serde_json::json!([x0, y0, x1 - x0, y1 - y0]),
                );
                m
            })
            .collect();
        MaskSet::new(masks)
            .map(Some)
            .map_err(|e| Sam2Error::Input(format!("mask generator: {e}")))
    }
}

impl<B: Backend> Segmenter for Sam2Segmenter<B> {
    fn segment(&mut self, rgb: &[u8], width: usize, height: usize) -> og_segment::Result<MaskSet> {
        match self.mask_set(rgb, width, height) {
            Ok(Some(set)) => Ok(set),
            Ok(None) => Err(og_segment::SegmentError::NoMasks {
                context: "SAM 2 (every mask was below the predicted-IoU or stability threshold)"
                    .into(),
            }),
            Err(e) => Err(og_segment::SegmentError::Invalid(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_grid_is_cell_centres_row_by_row() {
        let g = AmgConfig::point_grid(2);
        assert_eq!(
            g,
            vec![[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
        );
        assert_eq!(AmgConfig::point_grid(1), vec![[0.5, 0.5]]);
    }

    #[test]
    fn crop_boxes_follow_the_package() {
        // generate_crop_boxes((300, 451), 1, 512 / 1500) in the sam2 package.
        let c = AmgConfig {
            crop_n_layers: 1,
            ..AmgConfig::default()
        };
        let boxes: Vec<_> = c.crop_boxes(451, 300).into_iter().map(|b| b.0).collect();
        assert_eq!(
            boxes,
            vec![
                [0, 0, 451, 300],
                [0, 0, 277, 201],
                [0, 99, 277, 300],
                [175, 0, 451, 201],
                [175, 99, 451, 300]
            ]
        );
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]];
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1], 0.7), vec![1, 2]);
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1], 1.0), vec![1, 0, 2]);
    }

    #[test]
    fn boxes_of_masks_and_crop_edges() {
        let b = Bitmap::from_fn(5, 6, |y, x| (1..=3).contains(&y) && (2..=4).contains(&x));
        assert_eq!(mask_box(&b), [2, 1, 4, 3]);
        assert_eq!(mask_box(&Bitmap::new(3, 3)), [0; 4]);
        // A crop's right edge inside the image cuts the mask; an image edge does not.
        assert!(near_crop_edge([0, 0, 100, 50], [0, 0, 110, 300], 451, 300));
        assert!(!near_crop_edge([0, 0, 100, 50], [0, 0, 451, 300], 451, 300));
    }
}
