//! Asking one model about items: the image (cropped, with its masks on the OG path), the
//! prompt in the model's chat template, then option likelihoods or greedy generation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use og_llava::og_fusion::{Selection, SelectionConfig};
use og_llava::og_llm::{ChatTokenizer, Message, Role};
use og_llava::og_segment::{MaskSet, SharedSegmenter};
use og_llava::og_vision::{ImageProcessor, RgbImage};
use og_llava::{ImageInput, OgLlava, OgLlavaInput};

use crate::item::{ImageSource, Item, letter};
use crate::protocol::{Protocol, judge, likelihood_prompt, max_new_tokens, paper_prompt, rotation};

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
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Model(#[from] og_llava::ModelError),
    #[error(transparent)]
    Llm(#[from] og_llava::og_llm::LlmError),
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

/// Accuracy per benchmark (`<name>` for likelihood ranking, `<name>@gen` for generation; an
/// `mcq` item counts under its category) and split (`all` plus each split named in the files),
/// MMVP pairs, every likelihood choice, and each item's outcome in item order (for paired
/// statistics across models).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Results {
    pub accuracy: BTreeMap<String, BTreeMap<String, Accuracy>>,
    pub mmvp_pairs: Option<Accuracy>,
    pub predictions: Vec<usize>,
    #[serde(default)]
    pub outcomes: BTreeMap<String, Vec<bool>>,
}

/// The key an item's outcome counts under in [`Results`].
pub fn result_key(item: &Item) -> String {
    match (item.bench, &item.category) {
        (crate::Benchmark::Mcq, Some(c)) => c.clone(),
        (b, _) => b.name().to_string(),
    }
}

/// The key generation results of `key` count under (`<key>@gen`), beside the likelihood
/// results under `key` itself.
pub fn generation_key(key: &str) -> String {
    format!("{key}@gen")
}

impl Results {
    fn add(&mut self, key: String, item: &Item, ok: bool) {
        self.outcomes.entry(key.clone()).or_default().push(ok);
        let b = self.accuracy.entry(key).or_default();
        b.entry("all".into()).or_default().add(ok);
        if let Some(s) = &item.split {
            b.entry(s.clone()).or_default().add(ok);
        }
    }

    /// Another set of results' keys added to these.
    pub fn extend(&mut self, other: Results) {
        self.accuracy.extend(other.accuracy);
        self.outcomes.extend(other.outcomes);
        if other.mmvp_pairs.is_some() {
            self.mmvp_pairs = other.mmvp_pairs;
        }
        self.predictions.extend(other.predictions);
    }
}

/// One item's outcome, a line of `items.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub id: String,
    pub category: Option<String>,
    /// The right answer: option letter, or `Yes`/`No` (MME).
    pub gold: String,
    /// What the answer was read as (letters of the file's option order; circular: one per
    /// rotation, joined by `,`, each naming the original option).
    pub prediction: String,
    pub correct: bool,
    /// Likelihood: the mean log-probability per token of each option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f64>>,
    /// Paper and circular: the generated text of each rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<Vec<String>>,
}

/// Where masks come from at evaluation.
#[derive(Debug, Clone, Default)]
pub enum MaskMode {
    /// The plain LLaVA path (what the paper reports).
    #[default]
    None,
    /// `<dir>/<image name>.json` (COCO RLE) for every image; a missing file is an error.
    Folder(PathBuf),
    /// Fixed sliding windows over the patch grid (the paper's ablation).
    Windows(og_llava::og_fusion::Windows),
    /// Each image (after any crop the benchmark makes) segmented on the fly.
    Felzenszwalb(og_llava::og_segment::FelzenszwalbConfig),
    /// Each image (after any crop) segmented on the fly by a segmenter built elsewhere
    /// (SAM 2's automatic mask generator); an image it finds no mask in is an error naming it.
    Segmenter(OnTheFly),
}

/// A segmenter the items of a run share, and what `run.json` records about it.
#[derive(Clone)]
pub struct OnTheFly {
    pub segmenter: SharedSegmenter,
    pub description: serde_json::Value,
}

impl std::fmt::Debug for OnTheFly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OnTheFly({})", self.description)
    }
}

impl MaskMode {
    /// What `run.json` records: `"none"`, `{"folder": …}`, `{"windows": …}`,
    /// `{"felzenszwalb": …}` or `{"segmenter": …}`.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            MaskMode::None => "none".into(),
            MaskMode::Folder(dir) => serde_json::json!({ "folder": dir }),
            MaskMode::Windows(w) => serde_json::json!({ "windows": w }),
            MaskMode::Felzenszwalb(c) => serde_json::json!({ "felzenszwalb": c }),
            MaskMode::Segmenter(s) => serde_json::json!({ "segmenter": s.description }),
        }
    }
}

/// A generation prompt and the order its options are shown in.
type OrderedPrompt<B> = (Vec<usize>, OgLlavaInput<B>);

/// The generation prompts of several items, flattened for batching, with what it takes to
/// give each item its answer back.
struct PromptBatch<B: Backend> {
    prompts: Vec<OgLlavaInput<B>>,
    /// Each prompt's token budget.
    budgets: Vec<usize>,
    /// Each prompt's item (index into the items).
    owners: Vec<usize>,
    /// Per item, the option order of each of its prompts.
    orders: Vec<Vec<Vec<usize>>>,
    /// Per item, the error that kept its prompts from being built.
    failed: Vec<Option<EvalError>>,
}

/// Scores items with one model.
pub struct Evaluator<'a, B: Backend> {
    pub model: &'a OgLlava<B>,
    pub tokenizer: &'a ChatTokenizer,
    pub processor: &'a ImageProcessor,
    pub selection: SelectionConfig,
    pub masks: MaskMode,
    /// Tokens that end an answer (the chat's end of turn first): any of them stops
    /// generation; the first closes each option scored by likelihood.
    pub stop_ids: Vec<u32>,
    pub device: B::Device,
    /// Prompts generated at once under the generation protocols (1: one at a time). Answers
    /// do not depend on it.
    pub batch_size: usize,
}

/// ARO's crop (PIL's `Image.crop`): the box cut out, parts outside the image black.
pub fn crop(image: &RgbImage, [x, y, w, h]: [f64; 4]) -> RgbImage {
    let (x0, y0) = (x.round() as i64, y.round() as i64);
    let (w, h) = (
        (w.round() as i64).max(1) as u32,
        (h.round() as i64).max(1) as u32,
    );
    RgbImage::from_fn(w, h, |i, j| {
        let (sx, sy) = (x0 + i as i64, y0 + j as i64);
        if sx >= 0 && sy >= 0 && (sx as u32) < image.width() && (sy as u32) < image.height() {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// The item's image decoded (and cropped where the benchmark says).
pub fn load_image(item: &Item) -> Result<RgbImage, EvalError> {
    let decoded = match &item.image {
        ImageSource::File(p) => og_llava::og_vision::load_rgb(p).map_err(|e| EvalError::Input {
            path: p.clone(),
            message: e.to_string(),
        })?,
        ImageSource::Bytes(b) => {
            let name = PathBuf::from(format!(
                "{} item {}: {}",
                item.bench, item.id, item.image_name
            ));
            og_llava::og_vision::decode_rgb(b, &name).map_err(|e| EvalError::Input {
                path: name,
                message: e.to_string(),
            })?
        }
    };
    Ok(match item.crop {
        Some(b) => crop(&decoded, b),
        None => decoded,
    })
}

/// The mask file of an item's image under a mask folder.
pub fn mask_file(dir: &Path, item: &Item) -> PathBuf {
    dir.join(&item.image_name).with_extension("json")
}

impl<B: Backend> Evaluator<'_, B> {
    /// The prompt's token ids (chat template, generation prompt, the model's image token).
    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, EvalError> {
        let content = format!("{}\n{prompt}", og_llava::og_llm::IMAGE_PLACEHOLDER);
        Ok(self.tokenizer.encode_chat_ids(
            &[Message::new(Role::User, content)],
            true,
            self.model.image_token_id,
        )?)
    }

    fn selection(
        &self,
        item: &Item,
        image: &RgbImage,
        frame: &og_llava::og_vision::Frame,
    ) -> Result<Option<Selection>, EvalError> {
        let input_err = |path: PathBuf| move |e: String| EvalError::Input { path, message: e };
        match &self.masks {
            MaskMode::None => Ok(None),
            MaskMode::Windows(w) => {
                let g = self.model.vision.grid();
                Selection::from_windows((g, g), *w)
                    .map(Some)
                    .map_err(|e| input_err(PathBuf::from(&item.image_name))(e.to_string()))
            }
            MaskMode::Felzenszwalb(_) | MaskMode::Segmenter(_) => {
                let (w, h) = (image.width() as usize, image.height() as usize);
                let name = PathBuf::from(&item.image_name);
                let rgb = image.as_raw();
                let m = match &self.masks {
                    MaskMode::Felzenszwalb(cfg) => cfg.segment(rgb, w, h),
                    MaskMode::Segmenter(s) => s
                        .segmenter
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .segment(rgb, w, h),
                    _ => unreachable!("matched above"),
                }
                .map_err(|e| input_err(name.clone())(e.to_string()))?;
                Selection::from_masks(&m, frame, &self.selection)
                    .map(Some)
                    .map_err(|e| input_err(name)(e.to_string()))
            }
            MaskMode::Folder(dir) => {
                let file = mask_file(dir, item);
                if !file.is_file() {
                    return Err(EvalError::Input {
                        path: file,
                        message: format!(
                            "no mask file for image {} (item {})",
                            item.image_name, item.id
                        ),
                    });
                }
                let m = MaskSet::read_coco_json(&file)
                    .map_err(|e| input_err(file.clone())(e.to_string()))?;
                m.expect_size(image.width() as usize, image.height() as usize)
                    .map_err(|e| input_err(file.clone())(e.to_string()))?;
                Selection::from_masks(&m, frame, &self.selection)
                    .map(Some)
                    .map_err(|e| input_err(file.clone())(e.to_string()))
            }
        }
    }

    /// The image's model input: pixel values and, on the OG path, its groups.
    pub fn image(&self, item: &Item) -> Result<ImageInput<B>, EvalError> {
        let image = load_image(item)?;
        let (pixel_values, frame) = self
            .processor
            .pixel_values::<B>(&image, &self.device)
            .map_err(|e| EvalError::Input {
                path: PathBuf::from(&item.image_name),
                message: e.to_string(),
            })?;
        let selection = self.selection(item, &image, &frame)?;
        Ok(ImageInput {
            pixel_values,
            selection,
        })
    }

    /// Log-likelihood of each option as the answer to [`likelihood_prompt`].
    pub fn option_scores(
        &self,
        item: &Item,
        image: ImageInput<B>,
    ) -> Result<Vec<og_llava::og_llm::Score>, EvalError> {
        let prompt = OgLlavaInput {
            token_ids: self.prompt_ids(&likelihood_prompt(item))?,
            images: vec![image],
        };
        let end = self.stop_ids.first().copied();
        let candidates: Vec<Vec<u32>> = item
            .options
            .iter()
            .map(|o| {
                let mut ids = self.tokenizer.encode(o, false)?;
                ids.extend(end);
                Ok(ids)
            })
            .collect::<Result<_, og_llava::og_llm::LlmError>>()?;
        Ok(self.model.score(&prompt, &candidates)?)
    }

    /// An item's prompts under a generation protocol, each with its option order (circular:
    /// every rotation; paper: the original order). The image is read once.
    fn generation_prompts(
        &self,
        item: &Item,
        protocol: Protocol,
    ) -> Result<Vec<OrderedPrompt<B>>, EvalError> {
        let n = item.options.len();
        let rotations = if protocol == Protocol::Circular { n } else { 1 };
        let image = self.image(item)?;
        (0..rotations)
            .map(|r| {
                let order = if n == 0 { Vec::new() } else { rotation(n, r) };
                let input = OgLlavaInput {
                    token_ids: self.prompt_ids(&paper_prompt(item, &order))?,
                    images: vec![image.clone()],
                };
                Ok((order, input))
            })
            .collect()
    }

    /// Every prompt of `items` under a generation protocol, in item order.
    fn prompt_batch(
        &self,
        items: &[&Item],
        protocol: Protocol,
        max_new: Option<usize>,
    ) -> PromptBatch<B> {
        let mut batch = PromptBatch {
            prompts: Vec::new(),
            budgets: Vec::new(),
            owners: Vec::new(),
            orders: Vec::with_capacity(items.len()),
            failed: Vec::with_capacity(items.len()),
        };
        for (k, item) in items.iter().enumerate() {
            let built = check_protocol(item, protocol)
                .and_then(|()| self.generation_prompts(item, protocol));
            let budget = max_new.unwrap_or_else(|| max_new_tokens(item.bench));
            match built {
                Ok(list) => {
                    let (orders, inputs): (Vec<_>, Vec<_>) = list.into_iter().unzip();
                    batch.owners.extend(std::iter::repeat_n(k, inputs.len()));
                    batch
                        .budgets
                        .extend(std::iter::repeat_n(budget, inputs.len()));
                    batch.prompts.extend(inputs);
                    batch.orders.push(orders);
                    batch.failed.push(None);
                }
                Err(e) => {
                    batch.orders.push(Vec::new());
                    batch.failed.push(Some(e));
                }
            }
        }
        batch
    }

    /// Greedy answers to `prompts`, [`Evaluator::batch_size`] at a time, each cut to its own
    /// token budget (greedy decoding makes that the answer it would get alone).
    fn generate_texts(
        &self,
        prompts: &[OgLlavaInput<B>],
        budgets: &[usize],
    ) -> Result<Vec<String>, EvalError> {
        let mut texts = Vec::with_capacity(prompts.len());
        let size = self.batch_size.max(1);
        for (chunk, budgets) in prompts.chunks(size).zip(budgets.chunks(size)) {
            let cfg = og_llava::og_llm::GenerationConfig {
                max_new_tokens: budgets.iter().copied().max().unwrap_or(0),
                eos_token_ids: self.stop_ids.clone(),
                ..Default::default()
            };
            let outputs = self.model.generate_batch(chunk, &cfg, |_, _| {})?;
            for (mut ids, &budget) in outputs.into_iter().zip(budgets) {
                ids.truncate(budget);
                texts.push(self.tokenizer.decode(&ids, true)?);
            }
        }
        Ok(texts)
    }

    /// The index of the option the model finds most likely.
    pub fn choose(&self, item: &Item) -> Result<(usize, Vec<f64>), EvalError> {
        let scores: Vec<f64> = self
            .option_scores(item, self.image(item)?)?
            .iter()
            .map(|s| s.mean)
            .collect();
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Ok((best, scores))
    }

    /// One item under a protocol. `max_new` overrides the benchmark's generation budget.
    pub fn answer(
        &self,
        item: &Item,
        protocol: Protocol,
        max_new: Option<usize>,
    ) -> Result<Record, EvalError> {
        match protocol {
            Protocol::Likelihood => self.likelihood_record(item),
            Protocol::Paper | Protocol::Circular => self
                .answer_many(&[item], protocol, max_new)
                .pop()
                .expect("one answer per item"),
        }
    }

    /// An item ranked by the likelihood of its options.
    fn likelihood_record(&self, item: &Item) -> Result<Record, EvalError> {
        check_protocol(item, Protocol::Likelihood)?;
        let (best, scores) = self.choose(item)?;
        Ok(Record {
            id: item.id.clone(),
            category: item.category.clone(),
            gold: item.gold(),
            prediction: if item.bench.is_yes_no() {
                item.options[best].clone()
            } else {
                letter(best).to_string()
            },
            correct: best == item.answer,
            scores: Some(scores),
            generated: None,
        })
    }

    /// Answers several items, each as [`Evaluator::answer`] would alone. Under the generation
    /// protocols their prompts are decoded [`Evaluator::batch_size`] at a time; an item whose
    /// prompts cannot be built gets its error, and a batch that fails as a whole is answered
    /// again item by item so the error lands on the item that caused it.
    pub fn answer_many(
        &self,
        items: &[&Item],
        protocol: Protocol,
        max_new: Option<usize>,
    ) -> Vec<Result<Record, EvalError>> {
        if protocol == Protocol::Likelihood {
            return items
                .iter()
                .map(|item| self.likelihood_record(item))
                .collect();
        }
        let mut batch = self.prompt_batch(items, protocol, max_new);
        let texts = match self.generate_texts(&batch.prompts, &batch.budgets) {
            Ok(texts) => texts,
            Err(e) if items.len() == 1 => return vec![Err(e)],
            Err(_) => {
                return items
                    .iter()
                    .map(|item| self.answer_many(&[item], protocol, max_new).remove(0))
                    .collect();
            }
        };
        let mut texts_of: Vec<Vec<String>> = vec![Vec::new(); items.len()];
        for (&owner, text) in batch.owners.iter().zip(texts) {
            texts_of[owner].push(text);
        }
        (0..items.len())
            .map(|k| match batch.failed[k].take() {
                Some(e) => Err(e),
                None => Ok(generation_record(
                    items[k],
                    &batch.orders[k],
                    std::mem::take(&mut texts_of[k]),
                )),
            })
            .collect()
    }

    /// Likelihood ranking over items: accuracy under each item's benchmark name, MMVP pairs.
    pub fn evaluate(
        &self,
        items: &[Item],
        mut on_item: impl FnMut(usize, usize),
    ) -> Result<Results, EvalError> {
        let mut r = Results::default();
        let mut pairs: BTreeMap<String, bool> = BTreeMap::new();
        for (k, item) in items.iter().enumerate() {
            let (choice, _) = self.choose(item)?;
            let ok = choice == item.answer;
            r.add(result_key(item), item, ok);
            if let (Some(p), crate::Benchmark::Mmvp) = (&item.group, item.bench) {
                *pairs.entry(p.clone()).or_insert(true) &= ok;
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

    /// Generation over items under `protocol` (paper or circular): accuracy under
    /// `<key>@gen`.
    pub fn evaluate_generation(
        &self,
        items: &[Item],
        protocol: Protocol,
    ) -> Result<Results, EvalError> {
        let mut r = Results::default();
        for chunk in items.chunks(self.batch_size.max(1)) {
            let refs: Vec<&Item> = chunk.iter().collect();
            for (item, rec) in chunk.iter().zip(self.answer_many(&refs, protocol, None)) {
                r.add(generation_key(&result_key(item)), item, rec?.correct);
            }
        }
        Ok(r)
    }
}

/// A letter read under `order`, renamed to the option's letter in the file's order (Yes/No and
/// empty readings pass through).
/// A protocol the item can be asked under: likelihood and circular need options, circular
/// more than a Yes/No pair.
fn check_protocol(item: &Item, protocol: Protocol) -> Result<(), EvalError> {
    let multiple_choice = item.options.len() >= 2;
    if protocol != Protocol::Paper
        && (!multiple_choice || item.bench.is_yes_no() && protocol == Protocol::Circular)
    {
        Err(EvalError::Usage(format!(
            "{} item {}: the {protocol} protocol needs multiple-choice options{}",
            item.bench,
            item.id,
            if item.bench.is_yes_no() {
                " (MME is Yes/No: use paper or likelihood)"
            } else {
                " (none could be read from the question)"
            }
        )))
    } else {
        Ok(())
    }
}

/// The record of a generated answer: each rotation's text judged, the item correct only if
/// every rotation is.
fn generation_record(item: &Item, orders: &[Vec<usize>], texts: Vec<String>) -> Record {
    let (mut preds, mut all) = (Vec::with_capacity(texts.len()), true);
    for (order, text) in orders.iter().zip(&texts) {
        let j = judge(item, order, text);
        all &= j.correct;
        preds.push(original_letter(&j.prediction, order));
    }
    Record {
        id: item.id.clone(),
        category: item.category.clone(),
        gold: item.gold(),
        prediction: preds.join(","),
        correct: all,
        scores: None,
        generated: Some(texts),
    }
}

fn original_letter(prediction: &str, order: &[usize]) -> String {
    match crate::item::letter_index(prediction) {
        Some(k) if prediction.trim().len() == 1 && k < order.len() => letter(order[k]).to_string(),
        _ => prediction.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_cuts_like_pil_with_black_outside() {
        let img = RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let c = crop(&img, [2.0, 1.0, 3.0, 2.0]);
        assert_eq!(c.dimensions(), (3, 2));
        assert_eq!(*c.get_pixel(0, 0), image::Rgb([2, 1, 7]));
        assert_eq!(*c.get_pixel(1, 1), image::Rgb([3, 2, 7]));
        assert_eq!(*c.get_pixel(2, 0), image::Rgb([0, 0, 0]));
        assert_eq!(original_letter("B", &[2, 0, 1]), "A");
        assert_eq!(original_letter("Yes", &[0, 1]), "Yes");
        assert_eq!(original_letter("", &[0, 1]), "");
    }
}
