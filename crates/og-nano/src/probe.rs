//! A linear probe on the frozen tiny CLIP: does the patch-feature layer the connector reads
//! encode what the questions ask about? For every object of a scene, the features of the
//! patches its mask covers are averaged; ridge-regression classifiers (one-vs-rest on
//! standardised features) are fit on training scenes' objects and scored on evaluation scenes'
//! objects, for colour, shape, size and the object's column and row third. Chance is the
//! majority class's share of the test objects.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use og_llava::og_segment::MaskSet;
use og_llava::og_vision::ImageProcessor;
use og_llava::og_vision::clip::ClipVisionTransformer;
use serde::{Deserialize, Serialize};

use crate::scene::{Colour, Object, Shape, Size};

/// One attribute's probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub classes: usize,
    /// The majority class's share of the test objects.
    pub chance: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub train_objects: usize,
    pub test_objects: usize,
}

/// Ridge strength on standardised features.
const RIDGE: f64 = 1.0;
/// Training scenes the probe is fit on, at most.
const FIT_SCENES: usize = 300;

/// An object attribute a probe reads (and the tiny CLIP's object objective may teach).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Colour,
    Shape,
    Size,
    /// Which third of the image's width holds the object's centre.
    Column,
    /// Which third of the image's height holds the object's centre.
    Row,
}

impl Attribute {
    pub const ALL: [Attribute; 5] = [
        Attribute::Colour,
        Attribute::Shape,
        Attribute::Size,
        Attribute::Column,
        Attribute::Row,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attribute::Colour => "colour",
            Attribute::Shape => "shape",
            Attribute::Size => "size",
            Attribute::Column => "column",
            Attribute::Row => "row",
        }
    }

    pub fn classes(self) -> usize {
        match self {
            Attribute::Colour => Colour::ALL.len(),
            Attribute::Shape => Shape::ALL.len(),
            Attribute::Size => 2,
            Attribute::Column | Attribute::Row => 3,
        }
    }

    /// The class of `o` in an image `side` pixels wide.
    pub fn label(self, o: &Object, side: f32) -> usize {
        let third = |v: f32| ((3.0 * v / side) as usize).min(2);
        match self {
            Attribute::Colour => Colour::ALL.iter().position(|c| *c == o.colour).unwrap_or(0),
            Attribute::Shape => Shape::ALL.iter().position(|s| *s == o.shape).unwrap_or(0),
            Attribute::Size => usize::from(o.size == Size::Large),
            Attribute::Column => third(o.cx),
            Attribute::Row => third(o.cy),
        }
    }
}

/// The patch cells (row-major over a `grid × grid` patch grid of a `w × h` image) that stand
/// for an object: those its mask covers for at least a quarter, or the most covered ones when
/// none is (small objects). Empty for an empty mask.
pub fn object_cells(
    mask: &og_llava::og_segment::Bitmap,
    w: usize,
    h: usize,
    grid: usize,
) -> Vec<usize> {
    let (cw, ch) = (w / grid, h / grid);
    let mut cover = vec![0usize; grid * grid];
    for y in 0..h.min(ch * grid) {
        for x in 0..w.min(cw * grid) {
            if mask.get(y, x) {
                cover[(y / ch) * grid + x / cw] += 1;
            }
        }
    }
    let best = cover.iter().copied().max().unwrap_or(0);
    if best == 0 {
        return Vec::new();
    }
    (0..cover.len())
        .filter(|&c| 4 * cover[c] >= cw * ch || cover[c] == best)
        .collect()
}

/// Solves `a x = b` for symmetric positive-definite `a` (n × n, row-major) by Cholesky, for
/// every column of `b` (n × m).
fn solve_spd(mut a: Vec<f64>, n: usize, mut b: Vec<f64>, m: usize) -> Vec<f64> {
    for j in 0..n {
        let d = (a[j * n + j] - (0..j).map(|k| a[j * n + k].powi(2)).sum::<f64>()).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| a[i * n + k] * a[j * n + k]).sum();
            a[i * n + j] = (a[i * n + j] - s) / d;
        }
    }
    for c in 0..m {
        for i in 0..n {
            let s: f64 = (0..i).map(|k| a[i * n + k] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / a[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| a[k * n + i] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / a[i * n + i];
        }
    }
    b
}

/// A one-vs-rest ridge classifier fit on `x` (rows of `f` features) with labels `y`.
struct Ridge {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// (f + 1) × classes, the last row the bias.
    w: Vec<f64>,
    classes: usize,
}

impl Ridge {
    fn row(&self, x: &[f64]) -> Vec<f64> {
        let mut r: Vec<f64> = x
            .iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(|(v, (m, s))| (v - m) / s)
            .collect();
        r.push(1.0);
        r
    }

    fn fit(x: &[Vec<f64>], y: &[usize], classes: usize) -> Ridge {
        let f = x[0].len();
        let n = x.len() as f64;
        let mean: Vec<f64> = (0..f)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let scale: Vec<f64> = (0..f)
            .map(|j| {
                let v = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
                v.sqrt().max(1e-8)
            })
            .collect();
        let mut model = Ridge {
            mean,
            scale,
            w: Vec::new(),
            classes,
        };
        let d = f + 1;
        let (mut a, mut b) = (vec![0.0; d * d], vec![0.0; d * classes]);
        for (xi, &yi) in x.iter().zip(y) {
            let r = model.row(xi);
            for i in 0..d {
                for j in 0..d {
                    a[i * d + j] += r[i] * r[j];
                }
                b[i * classes + yi] += r[i];
            }
        }
        for i in 0..f {
            a[i * d + i] += RIDGE;
        }
        // The bias is not penalised; a tiny term keeps the system definite.
        a[f * d + f] += 1e-9;
        model.w = solve_spd(a, d, b, classes);
        model
    }

    fn predict(&self, x: &[f64]) -> usize {
        let r = self.row(x);
        (0..self.classes)
            .map(|c| {
                let s: f64 = r
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * self.w[i * self.classes + c])
                    .sum();
                (c, s)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(c, _)| c)
    }

    fn accuracy(&self, x: &[Vec<f64>], y: &[usize]) -> f64 {
        let right = x
            .iter()
            .zip(y)
            .filter(|(xi, yi)| self.predict(xi) == **yi)
            .count();
        right as f64 / x.len().max(1) as f64
    }
}

/// Each object's mean patch feature, the object and its image's width, for the scenes of one
/// split.
fn object_features<B: Backend>(
    world: &Path,
    scenes: &[(String, Vec<Object>)],
    tower: &ClipVisionTransformer<B>,
    processor: &ImageProcessor,
    device: &B::Device,
) -> Result<Vec<(Vec<f64>, Object, f32)>, String> {
    let grid = tower.grid();
    let mut out = Vec::new();
    for (image, objects) in scenes {
        let img = og_llava::og_vision::load_rgb(world.join("images").join(image))
            .map_err(|e| e.to_string())?;
        let (pixels, _) = processor
            .pixel_values::<B>(&img, device)
            .map_err(|e| e.to_string())?;
        let feats = tower.features(pixels).map_err(|e| e.to_string())?;
        let [_, v, f] = feats.dims();
        let values: Vec<f32> = feats
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let masks = MaskSet::read_coco_json(world.join("masks").join(image).with_extension("json"))
            .map_err(|e| e.to_string())?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        for (mask, object) in masks.masks().iter().zip(objects) {
            let cells: Vec<usize> = object_cells(&mask.rle.to_bitmap(), w, h, grid)
                .into_iter()
                .filter(|&c| c < v)
                .collect();
            if cells.is_empty() {
                continue;
            }
            let mut mean = vec![0.0f64; f];
            for &c in &cells {
                for (m, x) in mean.iter_mut().zip(&values[c * f..(c + 1) * f]) {
                    *m += *x as f64 / cells.len() as f64;
                }
            }
            out.push((mean, *object, w as f32));
        }
    }
    Ok(out)
}

pub(crate) fn read_scenes(world: &Path) -> Result<Vec<(String, Vec<Object>)>, String> {
    let path = world.join("scenes.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display()))?;
            let image = v["image"].as_str().unwrap_or_default().to_string();
            let objects: Vec<Object> = serde_json::from_value(v["objects"].clone())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((image, objects))
        })
        .collect()
}

/// The probe of the tower in `clip_dir` over the world in `world`.
pub fn probe<B: Backend>(
    world: &Path,
    clip_dir: &Path,
    processor: &ImageProcessor,
    device: &B::Device,
) -> Result<BTreeMap<String, ProbeResult>, String> {
    let tower = ClipVisionTransformer::<B>::load_hf(clip_dir, device).map_err(|e| e.to_string())?;
    let scenes = read_scenes(world)?;
    let train: Vec<_> = scenes
        .iter()
        .filter(|s| s.0.starts_with("train/"))
        .take(FIT_SCENES)
        .cloned()
        .collect();
    let test: Vec<_> = scenes
        .iter()
        .filter(|s| s.0.starts_with("eval/"))
        .cloned()
        .collect();
    let fit = object_features(world, &train, &tower, processor, device)?;
    let held = object_features(world, &test, &tower, processor, device)?;
    if fit.is_empty() || held.is_empty() {
        return Err("no objects to probe".into());
    }
    let mut out = BTreeMap::new();
    for attribute in Attribute::ALL {
        let (name, classes) = (attribute.name(), attribute.classes());
        let split = |set: &[(Vec<f64>, Object, f32)]| -> (Vec<Vec<f64>>, Vec<usize>) {
            set.iter()
                .map(|(x, o, n)| (x.clone(), attribute.label(o, *n)))
                .unzip()
        };
        let ((xf, yf), (xh, yh)) = (split(&fit), split(&held));
        let model = Ridge::fit(&xf, &yf, classes);
        let mut counts = vec![0usize; classes];
        for &y in &yh {
            counts[y] += 1;
        }
        out.insert(
            name.to_string(),
            ProbeResult {
                classes,
                chance: *counts.iter().max().unwrap_or(&0) as f64 / yh.len() as f64,
                train_accuracy: model.accuracy(&xf, &yf),
                test_accuracy: model.accuracy(&xh, &yh),
                train_objects: xf.len(),
                test_objects: xh.len(),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_separates_linearly_separable_classes_and_cholesky_solves() {
        // [[4, 2], [2, 3]] x = [[2], [5]] → x = [-0.5, 2].
        let x = solve_spd(vec![4.0, 2.0, 2.0, 3.0], 2, vec![2.0, 5.0], 1);
        assert!(
            (x[0] + 0.5).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12,
            "{x:?}"
        );
        // Three clusters at the corners of a triangle (linear regression one-vs-rest can
        // separate them; classes on one line would mask the middle one).
        let centre = [[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]];
        let pts: Vec<Vec<f64>> = (0..90)
            .map(|i| {
                let c = centre[i % 3];
                vec![
                    c[0] + (i as f64 * 0.37).sin(),
                    c[1] + (i as f64 * 0.11).cos(),
                ]
            })
            .collect();
        let ys: Vec<usize> = (0..90).map(|i| i % 3).collect();
        let m = Ridge::fit(&pts, &ys, 3);
        assert_eq!(m.accuracy(&pts, &ys), 1.0);
        // Labels unrelated to the features stay near chance.
        let noise: Vec<usize> = (0..90).map(|i| (i * 7 / 3) % 2).collect();
        let m = Ridge::fit(&pts, &noise, 2);
        assert!(m.accuracy(&pts, &noise) < 0.8);
    }
}
