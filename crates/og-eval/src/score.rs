//! Log-likelihood ranking: each option is scored as the assistant's answer to the item's
//! prompt (with the image, and with its masks when a mask folder is given); the option with
//! the highest mean log-probability per token is the model's choice. Generation with rotated
//! options (circular evaluation) is the second way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use og_llava::og_fusion::{Selection, SelectionConfig};
use og_llava::og_llm::{ChatTokenizer, Message, Segment};
use og_llava::og_segment::MaskSet;
use og_llava::og_vision::ImageProcessor;
use og_llava::{ImageInput, OgLlava, OgLlavaInput};

use crate::bench::Item;

/// Failures of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] og_llava::ModelError),
    #[error(transparent)]
    Llm(#[from] og_llava::og_llm::LlmError),
}

/// Under rotation `r` of `n` options, the option shown at position `k`.
pub fn rotated_option(k: usize, r: usize, n: usize) -> usize {
    (k + r) % n
}

/// Under rotation `r` of `n` options, the position where option `option` is shown.
pub fn rotated_position(option: usize, r: usize, n: usize) -> usize {
    (option + n - r % n) % n
}

/// Correct out of total.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
}

impl Accuracy {
    pub fn add(&mut self, ok: bool) {
        self.correct += ok as usize;
        self.total += 1;
    }

    pub fn value(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Accuracy per benchmark and split (`all` plus each split named in the files), MMVP pairs
/// (both images of a pair right), and every prediction.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Results {
    pub accuracy: BTreeMap<String, BTreeMap<String, Accuracy>>,
    pub mmvp_pairs: Option<Accuracy>,
    pub predictions: Vec<usize>,
}

/// Scores items with one model.
pub struct Evaluator<'a, B: Backend> {
    pub model: &'a OgLlava<B>,
    pub tokenizer: &'a ChatTokenizer,
    pub processor: &'a ImageProcessor,
    pub selection: SelectionConfig,
    /// Group images by sliding windows instead of masks (when a mask folder is not given).
    pub windows: Option<og_llava::og_fusion::Windows>,
    pub device: B::Device,
}

impl<B: Backend> Evaluator<'_, B> {
    /// The prompt's token ids (chat template, generation prompt, the model's image token).
    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, EvalError> {
        let content = format!("{}\n{prompt}", og_llava::og_llm::IMAGE_PLACEHOLDER);
        let mut ids = Vec::new();
        for seg in self
            .tokenizer
            .encode_chat(&[Message::new("user", content)], true)?
        {
            match seg {
                Segment::Text(t) => ids.extend(t),
                Segment::Image(_) => ids.push(self.model.image_token_id),
            }
        }
        Ok(ids)
    }

    /// The image's input: pixel values and, with a mask folder, its groups
    /// (`<masks>/<image without extension>.json`; an image without a mask file takes the
    /// plain path).
    fn image(
        &self,
        item: &Item,
        images: &Path,
        masks: Option<&Path>,
    ) -> Result<ImageInput<B>, EvalError> {
        let path = images.join(&item.image);
        let image = og_llava::og_vision::load_rgb(&path).map_err(|e| EvalError::Input {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let (pixel_values, frame) = self
            .processor
            .pixel_values::<B>(&image, &self.device)
            .map_err(|e| EvalError::Input {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let selection = match masks {
            None => match self.windows {
                Some(w) => {
                    let g = self.model.vision.grid();
                    Some(
                        Selection::from_windows((g, g), w).map_err(|e| EvalError::Input {
                            path: path.clone(),
                            message: e.to_string(),
                        })?,
                    )
                }
                None => None,
            },
            Some(root) => {
                let file = root.join(&item.image).with_extension("json");
                if file.is_file() {
                    let m = MaskSet::read_coco_json(&file).map_err(|e| EvalError::Input {
                        path: file.clone(),
                        message: e.to_string(),
                    })?;
                    m.expect_size(image.width() as usize, image.height() as usize)
                        .map_err(|e| EvalError::Input {
                            path: file.clone(),
                            message: e.to_string(),
                        })?;
                    Some(
                        Selection::from_masks(&m, &frame, &self.selection).map_err(|e| {
                            EvalError::Input {
                                path: file.clone(),
                                message: e.to_string(),
                            }
                        })?,
                    )
                } else {
                    None
                }
            }
        };
        Ok(ImageInput {
            pixel_values,
            selection,
        })
    }

    /// The index of the option the model prefers.
    pub fn choose(
        &self,
        item: &Item,
        images: &Path,
        masks: Option<&Path>,
    ) -> Result<usize, EvalError> {
        let prompt = OgLlavaInput {
            token_ids: self.prompt_ids(&item.prompt)?,
            images: vec![self.image(item, images, masks)?],
        };
        let eos = self.tokenizer.eos_id();
        let candidates: Vec<Vec<u32>> = item
            .options
            .iter()
            .map(|o| {
                let mut ids = self.tokenizer.encode(o, false)?;
                ids.extend(eos);
                Ok(ids)
            })
            .collect::<Result<_, og_llava::og_llm::LlmError>>()?;
        let scores = self.model.score(&prompt, &candidates)?;
        Ok(scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean))
            .map(|(i, _)| i)
            .unwrap_or(0))
    }

    /// Generation with rotated options (MMBench's circular evaluation): the options are listed
    /// as `(a) … (b) …` in the prompt, rotated once per position; the model answers greedily
    /// and the first option letter in its answer is its choice. Returns, per rotation, whether
    /// the choice was right. An item counts as right only when every rotation is.
    pub fn generate_rotations(
        &self,
        item: &Item,
        images: &Path,
        masks: Option<&Path>,
    ) -> Result<Vec<bool>, EvalError> {
        let n = item.options.len();
        let letters: Vec<char> = ('a'..='z').take(n).collect();
        let image = self.image(item, images, masks)?;
        let eos: Vec<u32> = self.tokenizer.eos_id().into_iter().collect();
        let mut out = Vec::with_capacity(n);
        for r in 0..n {
            // Position k shows option (k + r) mod n.
            let listed: Vec<String> = (0..n)
                .map(|k| format!("({}) {}", letters[k], item.options[rotated_option(k, r, n)]))
                .collect();
            let prompt = format!(
                "{}\n{}\nanswer with the option's letter.",
                item.prompt,
                listed.join("\n")
            );
            let input = OgLlavaInput {
                token_ids: self.prompt_ids(&prompt)?,
                images: vec![image.clone()],
            };
            let cfg = og_llava::og_llm::GenerationConfig {
                max_new_tokens: 4,
                eos_token_ids: eos.clone(),
                ..Default::default()
            };
            let ids = self.model.generate(&input, &cfg, |_| {})?;
            let text = self.tokenizer.decode(&ids, true)?;
            let chosen = text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .find(|w| w.len() == 1)
                .and_then(|w| letters.iter().position(|&l| w.starts_with(l)));
            out.push(chosen == Some(rotated_position(item.answer, r, n)));
        }
        Ok(out)
    }

    /// [`Evaluator::generate_rotations`] over every item: accuracy under `<bench>@gen`, an
    /// item right only when all its rotations are.
    pub fn evaluate_generation(
        &self,
        items: &[Item],
        images: &Path,
        masks: Option<&Path>,
    ) -> Result<Results, EvalError> {
        let mut r = Results::default();
        for item in items {
            let all = self
                .generate_rotations(item, images, masks)?
                .iter()
                .all(|&ok| ok);
            let b = r.accuracy.entry(format!("{}@gen", item.bench)).or_default();
            b.entry("all".into()).or_default().add(all);
            if let Some(s) = &item.split {
                b.entry(s.clone()).or_default().add(all);
            }
        }
        Ok(r)
    }

    /// Scores every item; `on_item(done, total)` reports progress.
    pub fn evaluate(
        &self,
        items: &[Item],
        images: &Path,
        masks: Option<&Path>,
        mut on_item: impl FnMut(usize, usize),
    ) -> Result<Results, EvalError> {
        let mut r = Results::default();
        let mut pairs: BTreeMap<usize, bool> = BTreeMap::new();
        for (k, item) in items.iter().enumerate() {
            let choice = self.choose(item, images, masks)?;
            let ok = choice == item.answer;
            let b = r.accuracy.entry(item.bench.clone()).or_default();
            b.entry("all".into()).or_default().add(ok);
            if let Some(s) = &item.split {
                b.entry(s.clone()).or_default().add(ok);
            }
            if let Some(p) = item.pair {
                *pairs.entry(p).or_insert(true) &= ok;
            }
            r.predictions.push(choice);
            on_item(k + 1, items.len());
        }
        if !pairs.is_empty() {
            let mut a = Accuracy::default();
            for ok in pairs.values() {
                a.add(*ok);
            }
            r.mmvp_pairs = Some(a);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_put_every_option_everywhere_once() {
        for n in 2..6 {
            for option in 0..n {
                let mut seen = vec![false; n];
                for r in 0..n {
                    let k = rotated_position(option, r, n);
                    assert_eq!(rotated_option(k, r, n), option);
                    assert!(!seen[k]);
                    seen[k] = true;
                }
                assert!(seen.iter().all(|&s| s));
            }
        }
        let mut a = Accuracy::default();
        a.add(true);
        a.add(false);
        assert_eq!((a.correct, a.total), (1, 2));
        assert!((a.value() - 0.5).abs() < 1e-12);
    }
}
