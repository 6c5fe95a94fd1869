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

type Attribute = (&'static str, usize, fn(&Object, f32) -> usize);

const ATTRIBUTES: [Attribute; 5] = [
    ("colour", 8, |o, _| {
        Colour::ALL.iter().position(|c| *c == o.colour).unwrap_or(0)
    }),
    ("shape", 5, |o, _| {
        Shape::ALL.iter().position(|s| *s == o.shape).unwrap_or(0)
    }),
    ("size", 2, |o, _| usize::from(o.size == Size::Large)),
    ("column", 3, |o, n| ((3.0 * o.cx / n) as usize).min(2)),
    ("row", 3, |o, n| ((3.0 * o.cy / n) as usize).min(2)),
];

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
        let (cw, ch) = (w / grid, h / grid);
        for (mask, object) in masks.masks().iter().zip(objects) {
            let bitmap = mask.rle.to_bitmap();
            let mut cover = vec![0usize; grid * grid];
            for y in 0..h.min(ch * grid) {
                for x in 0..w.min(cw * grid) {
                    if bitmap.get(y, x) {
                        cover[(y / ch) * grid + x / cw] += 1;
                    }
                }
            }
            let best = cover.iter().copied().max().unwrap_or(0);
            if best == 0 {
                continue;
            }
            let cells: Vec<usize> = (0..cover.len())
                .filter(|&c| 4 * cover[c] >= cw * ch || cover[c] == best)
                .filter(|&c| c < v)
                .collect();
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

fn read_scenes(world: &Path) -> Result<Vec<(String, Vec<Object>)>, String> {
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
    for (name, classes, label) in ATTRIBUTES {
        let split = |set: &[(Vec<f64>, Object, f32)]| -> (Vec<Vec<f64>>, Vec<usize>) {
            set.iter()
                .map(|(x, o, n)| (x.clone(), label(o, *n)))
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
