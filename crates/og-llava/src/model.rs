//! [`OgLlava`]: the frozen CLIP tower, the OG-Fusion connector and the Llama LLM composed.
//!
//! A prompt holds the image token where its image goes — once, or repeated as transformers
//! writes it (any run of image tokens is one image). The placeholder is replaced by the image's
//! OGVT (T tokens, varying per image) or, with no masks, by the plain V-token grid. Batches of
//! prompts of different lengths are right-padded; padding is never attended. Position ids are
//! standard or segment-aware (tokens of one mask group share a position), computed from the
//! real layout.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, ElementConversion, Int, Tensor, TensorData};
use og_fusion::{OgFusion, OgFusionConfig, Selection, SelectionConfig};
use og_llm::{LlamaConfig, LlamaForCausalLM, rope};
use og_vision::clip::{ClipVisionConfig, ClipVisionTransformer};
use og_weights::Weights;

/// The image marker in prompts of original-LLaVA checkpoints (LLaVA writes −200, outside
/// every vocabulary).
pub const ORIGINAL_IMAGE_TOKEN: u32 = u32::MAX;

/// Failures of the composed model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Vision(#[from] og_vision::VisionError),
    #[error(transparent)]
    Fusion(#[from] og_fusion::FusionError),
    #[error(transparent)]
    Llm(#[from] og_llm::LlmError),
    #[error(transparent)]
    Checkpoint(#[from] og_weights::WeightError),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {message}")]
    Config {
        path: std::path::PathBuf,
        message: String,
    },
    /// A layout that keeps parts outside its directory, opened without them.
    #[error("{}: {layout} needs {} (kept outside it)", dir.display(), crate::open::describe(parts))]
    MissingParts {
        dir: std::path::PathBuf,
        layout: &'static str,
        parts: Vec<crate::ModelPart>,
    },
}

type R<T> = std::result::Result<T, ModelError>;

/// One image of a prompt.
#[derive(Debug, Clone)]
pub struct ImageInput<B: Backend> {
    /// `pixel_values` `[1, 3, S, S]`.
    pub pixel_values: Tensor<B, 4>,
    /// The image's groups (from masks or windows); `None`: the plain V-token grid.
    pub selection: Option<Selection>,
}

/// One prompt and its images (none, one, or several).
#[derive(Debug, Clone)]
pub struct OgLlavaInput<B: Backend> {
    /// Token ids; the image token marks where each image goes (once or repeated: every run of
    /// image tokens is one image, in the order of `images`).
    pub token_ids: Vec<u32>,
    pub images: Vec<ImageInput<B>>,
}

impl<B: Backend> OgLlavaInput<B> {
    /// A prompt without images.
    pub fn text(token_ids: Vec<u32>) -> Self {
        Self {
            token_ids,
            images: Vec::new(),
        }
    }

    /// A prompt with one image.
    pub fn with_image(
        token_ids: Vec<u32>,
        pixel_values: Tensor<B, 4>,
        selection: Option<Selection>,
    ) -> Self {
        Self {
            token_ids,
            images: vec![ImageInput {
                pixel_values,
                selection,
            }],
        }
    }
}

/// What the LLM receives for a batch.
#[derive(Debug, Clone)]
pub struct Prepared<B: Backend> {
    /// `[batch, T_max, D]`, zero at padding.
    pub embeds: Tensor<B, 3>,
    /// `[batch, T_max]`, true at padding.
    pub padding: Tensor<B, 2, Bool>,
    pub positions: Vec<Vec<i64>>,
    /// Real length of each sequence.
    pub lengths: Vec<usize>,
    /// Per sequence, where its images went, in order: (start of the placeholder run in the
    /// token ids, visual tokens, placeholder tokens replaced).
    pub image_spans: Vec<Vec<(usize, usize, usize)>>,
    /// Seconds spent in the vision tower and in the connector (Φ ran before, in `Selection`).
    pub vision_s: f64,
    pub connector_s: f64,
}

/// A batch's images through the tower and the connector.
struct EncodedImages<B: Backend> {
    /// The connector's output over every image of the batch (none without images).
    fused: Option<og_fusion::FusionOutput<B>>,
    /// `first[i]`: the index of prompt i's first image among the batch's images.
    first: Vec<usize>,
    vision_s: f64,
    connector_s: f64,
}

/// One prompt with its images spliced in: `[T, D]` embeddings, each position's segment id
/// (0 for text; distinct across the prompt's images), and its [`Prepared::image_spans`].
struct SplicedRow<B: Backend> {
    embeds: Tensor<B, 2>,
    segments: Vec<u32>,
    spans: Vec<(usize, usize, usize)>,
}

/// The runs of `image_token` in `ids` as `(start, end)`: each run is one image.
fn image_runs(ids: &[u32], image_token: u32) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut j = 0;
    while j < ids.len() {
        if ids[j] == image_token {
            let start = j;
            while j < ids.len() && ids[j] == image_token {
                j += 1;
            }
            runs.push((start, j));
        } else {
            j += 1;
        }
    }
    runs
}

/// OG-LLaVA.
#[derive(Debug)]
pub struct OgLlava<B: Backend> {
    pub vision: ClipVisionTransformer<B>,
    pub connector: OgFusion<B>,
    pub llm: LlamaForCausalLM<B>,
    pub image_token_id: u32,
    /// Segment-aware 1-D RoPE (paper 5.4.3) instead of consecutive positions.
    pub segment_rope: bool,
    /// How images become visual tokens for this model (as it was trained): recorded in
    /// `og_llava.json`, read by `ask` and `eval`.
    pub image: ImageSettings,
}

/// How an image becomes visual tokens, as a model was trained: the settings inference must
/// repeat to see images as training did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageSettings {
    /// Masks → groups of patches: Φ and its threshold, order, complement, token cap.
    pub selection: SelectionConfig,
    /// LLaVA-1.5's pad-to-square with the CLIP mean colour (`true`), or CLIP's resize and
    /// centre crop.
    pub pad_to_square: bool,
}

impl Default for ImageSettings {
    /// Our defaults: the patch-grid Φ at half a pixel, largest mask first, LLaVA padding.
    fn default() -> Self {
        Self {
            selection: SelectionConfig::default(),
            pad_to_square: true,
        }
    }
}

impl ImageSettings {
    /// What the released OG-LLaVA checkpoints were trained with: the paper's Listing 1 Φ
    /// (raster strips, α = 0.5) over the masks in the order the mask file gives them, on
    /// LLaVA-1.5's padded images.
    pub fn released() -> Self {
        Self {
            selection: SelectionConfig {
                phi: og_fusion::Phi::paper(),
                order: og_fusion::MaskOrder::Given,
                ..SelectionConfig::default()
            },
            pad_to_square: true,
        }
    }
}

impl<B: Backend> OgLlava<B> {
    /// Initialises every lazily initialised parameter (fresh LoRA A, a fresh delimiter or
    /// projector) now, drawing from the backend's RNG, instead of at first use.
    pub fn initialise(&self) {
        use burn::module::{Module, ModuleVisitor, Param};
        struct Initialise;
        impl<B: Backend> ModuleVisitor<B> for Initialise {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let _ = param.val();
            }
        }
        self.vision.visit(&mut Initialise);
        self.connector.visit(&mut Initialise);
        self.llm.visit(&mut Initialise);
    }

    /// A copy on `device`, e.g. a data-parallel replica: trainable parameters stay trainable
    /// and become new autodiff leaves; frozen ones stay frozen. Lazily initialised parameters
    /// are initialised first ([`Self::initialise`]): burn clones an uninitialised parameter as
    /// its initialiser, so a replica would otherwise draw its own random values.
    pub fn fork(&self, device: &B::Device) -> Self {
        use burn::module::Module;
        self.initialise();
        Self {
            vision: self.vision.clone().fork(device),
            connector: self.connector.clone().fork(device),
            llm: self.llm.clone().fork(device),
            image_token_id: self.image_token_id,
            segment_rope: self.segment_rope,
            image: self.image.clone(),
        }
    }

    /// Loads a llava-hf `LlavaForConditionalGeneration` directory (hub or newer transformers
    /// layout, either config spelling); the connector gets `fusion` (its widths are taken from
    /// the checkpoint).
    pub fn load_llava_hf(
        dir: impl AsRef<Path>,
        fusion: Option<OgFusionConfig>,
        device: &B::Device,
    ) -> R<Self> {
        let (cfg_path, value) = og_weights::read_config(dir.as_ref())?;
        let image_token_id = value
            .get("image_token_index")
            .or_else(|| value.get("image_token_id"))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ModelError::Config {
                path: cfg_path.clone(),
                message: "no image_token_index: not a llava-hf config".into(),
            })? as u32;
        let weights = Weights::open(dir.as_ref())?;
        let vcfg = ClipVisionConfig::from_hf_value(&value)?;
        Self::assemble(
            &vcfg,
            &weights,
            &value,
            &weights,
            fusion,
            image_token_id,
            true,
            device,
        )
    }

    /// Loads an original LLaVA-1.5 directory (`model.layers.*`, `model.mm_projector.0/.2`,
    /// config keys `mm_vision_select_layer`, `mm_vision_select_feature`, `mm_projector_type`).
    /// The vision tower comes from `vision` (a CLIP `save_pretrained` directory, what
    /// `mm_vision_tower` names) unless the checkpoint bundles it
    /// (`model.vision_tower.vision_tower.vision_model.*`), in which case `vision` only gives its
    /// config. In prompts, [`ORIGINAL_IMAGE_TOKEN`] marks the image (LLaVA's −200).
    pub fn load_llava_original(
        dir: impl AsRef<Path>,
        vision: impl AsRef<Path>,
        fusion: Option<OgFusionConfig>,
        device: &B::Device,
    ) -> R<Self> {
        let (cfg_path, value) = og_weights::read_config(dir.as_ref())?;
        check_projector_type(&cfg_path, &value)?;
        let weights = Weights::open(dir.as_ref())?;
        let (vcfg, vision_weights) = original_tower(&value, dir.as_ref(), vision.as_ref())?;
        Self::assemble(
            &vcfg,
            &vision_weights,
            &value,
            &weights,
            fusion,
            ORIGINAL_IMAGE_TOKEN,
            true,
            device,
        )
    }

    /// Loads the released OG-LLaVA layout: `dir` holds the LLaVA-style `config.json`, a PEFT
    /// adapter (`adapter_config.json`, `adapter_model.bin` or `.safetensors`) and
    /// `non_lora_trainables.bin` (a `torch.save` state dict with the projector
    /// `…mm_projector.0/.2`, and when trained with them the BoM token `…mm_bom_mask_token` and
    /// the learned PE `…mm_masks_pos_encoding.seg_embed`), read as data, never executed. The
    /// frozen base LLM comes from `base` (a Llama `save_pretrained` directory) and the tower from
    /// `vision` (what `mm_vision_tower` names). Without `fusion`, the connector is configured
    /// from what the file holds: a BoM token means [`og_fusion::Delimiter::BeforeMask`], a PE
    /// table [`og_fusion::PositionalEncoding::Learned1d`]. The adapter is kept unmerged (merge
    /// with `llm.merge_lora()` for inference speed).
    pub fn load_og_llava_released(
        dir: impl AsRef<Path>,
        base: impl AsRef<Path>,
        vision: impl AsRef<Path>,
        fusion: Option<OgFusionConfig>,
        device: &B::Device,
    ) -> R<Self> {
        let dir = dir.as_ref();
        let (cfg_path, value) = og_weights::read_config(dir)?;
        check_projector_type(&cfg_path, &value)?;
        let trainables = Weights::open_pytorch(dir.join("non_lora_trainables.bin"))?;
        let fusion = fusion.unwrap_or_else(|| {
            let mut f = OgFusionConfig::new(0, 0);
            if trainables
                .names()
                .iter()
                .any(|n| n.ends_with("mm_bom_mask_token"))
            {
                f.delimiter = og_fusion::Delimiter::BeforeMask;
            }
            if let Some(n) = trainables
                .names()
                .into_iter()
                .find(|n| n.ends_with("seg_embed.weight"))
            {
                let rows = trainables.shape(n).map_or(1, |s| s[0]);
                f.positional = og_fusion::PositionalEncoding::Learned1d {
                    max_segments: rows.saturating_sub(1),
                };
            }
            f
        });
        let (vcfg, vision_weights) = original_tower(&value, dir, vision.as_ref())?;
        let mut model = Self::assemble(
            &vcfg,
            &vision_weights,
            &value,
            &Weights::open(base.as_ref())?,
            Some(fusion),
            ORIGINAL_IMAGE_TOKEN,
            false,
            device,
        )?;
        model.connector = model.connector.load_weights(&trainables)?;
        model.image = ImageSettings::released();
        if dir.join("adapter_config.json").is_file() {
            model.llm = model.llm.load_peft_adapter(dir)?;
        }
        Ok(model)
    }

    /// Composes a model from parts, as LLaVA training starts: a CLIP tower directory (vision
    /// `save_pretrained`; features from `select_layer`, patch tokens), a Llama directory, and a
    /// fresh connector configured by `fusion` (widths taken from the parts). Prompts mark the
    /// image with [`ORIGINAL_IMAGE_TOKEN`], as LLaVA does.
    pub fn from_parts(
        vision: impl AsRef<Path>,
        llm: impl AsRef<Path>,
        fusion: Option<OgFusionConfig>,
        select_layer: i64,
        device: &B::Device,
    ) -> R<Self> {
        let (_, llm_value) = og_weights::read_config(llm.as_ref())?;
        let select = serde_json::json!({
            "mm_vision_select_layer": select_layer,
            "mm_vision_select_feature": "patch",
        });
        let (vcfg, vision_weights) = original_tower(&select, llm.as_ref(), vision.as_ref())?;
        Self::assemble(
            &vcfg,
            &vision_weights,
            &llm_value,
            &Weights::open(llm.as_ref())?,
            fusion,
            ORIGINAL_IMAGE_TOKEN,
            false,
            device,
        )
    }

    /// Builds the model from its parts' configs; `weights` holds the LLM and the projector
    /// (a LLaVA checkpoint) or only the LLM (a base model, the projector then comes later).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        vcfg: &ClipVisionConfig,
        vision_weights: &Weights,
        llm_config: &serde_json::Value,
        weights: &Weights,
        fusion: Option<OgFusionConfig>,
        image_token_id: u32,
        with_projector: bool,
        device: &B::Device,
    ) -> R<Self> {
        let lcfg = LlamaConfig::from_hf_value(llm_config)?;
        let vision = vcfg.init::<B>(device)?.load_weights(vision_weights)?;
        let llm = lcfg.init::<B>(device)?.load_weights(weights)?;
        let fusion = OgFusionConfig {
            vision_hidden_size: vcfg.hidden_size,
            text_hidden_size: lcfg.hidden_size,
            ..fusion.unwrap_or_else(|| OgFusionConfig::new(vcfg.hidden_size, lcfg.hidden_size))
        };
        // The checkpoint's projector; delimiter and learned PE (new in OG-LLaVA) keep their
        // initialisation unless a checkpoint of ours supplies them (`load_checkpoint`).
        let connector = fusion.init::<B>(device);
        let connector = if with_projector {
            connector.load_projector(weights)?
        } else {
            connector
        };
        Ok(Self {
            vision,
            connector,
            llm,
            image_token_id,
            segment_rope: false,
            image: ImageSettings::default(),
        })
    }

    /// Embeddings, padding and positions of a batch (images encoded, OGVT spliced).
    pub fn prepare(&self, inputs: &[OgLlavaInput<B>]) -> R<Prepared<B>> {
        if inputs.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let encoded = self.encode_images(inputs)?;
        let rows = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| self.splice(i, input, &encoded))
            .collect::<R<Vec<_>>>()?;
        Ok(self.pad_rows(rows, &encoded))
    }

    /// Every image of the batch through the tower and the connector at once.
    fn encode_images(&self, inputs: &[OgLlavaInput<B>]) -> R<EncodedImages<B>> {
        let grid = self.vision.grid();
        let mut first = Vec::with_capacity(inputs.len());
        let mut all: Vec<&ImageInput<B>> = Vec::new();
        for input in inputs {
            first.push(all.len());
            all.extend(input.images.iter());
        }
        if all.is_empty() {
            return Ok(EncodedImages {
                fused: None,
                first,
                vision_s: 0.0,
                connector_s: 0.0,
            });
        }
        let t0 = std::time::Instant::now();
        // An image repeated in consecutive prompts (a circular evaluation's rotations) goes
        // through the tower once; its features serve every copy.
        let (distinct, source) = consecutive_copies(&all);
        let pixels = distinct
            .iter()
            .map(|&k| all[k].pixel_values.clone())
            .collect();
        let mut features = self.vision.features(Tensor::cat(pixels, 0))?;
        if distinct.len() < all.len() {
            let device = features.device();
            let index = TensorData::new(source, [all.len()]);
            features = features.select(0, Tensor::<B, 1, Int>::from_data(index, &device));
        }
        let vision_s = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let selections: Vec<Selection> = all
            .iter()
            .map(|im| {
                im.selection
                    .clone()
                    .unwrap_or_else(|| Selection::full_grid((grid, grid)))
            })
            .collect();
        let fused = self.connector.forward(features, &selections)?;
        Ok(EncodedImages {
            fused: Some(fused),
            first,
            vision_s,
            connector_s: t1.elapsed().as_secs_f64(),
        })
    }

    /// Prompt `i`'s embeddings with each run of image tokens replaced by its image's OGVT.
    fn splice(
        &self,
        i: usize,
        input: &OgLlavaInput<B>,
        encoded: &EncodedImages<B>,
    ) -> R<SplicedRow<B>> {
        let ids = &input.token_ids;
        if ids.is_empty() {
            return Err(ModelError::Input(format!("prompt {i} is empty")));
        }
        let runs = image_runs(ids, self.image_token_id);
        if runs.len() != input.images.len() {
            return Err(ModelError::Input(format!(
                "prompt {i} has {} image placeholder(s) for {} image(s)",
                runs.len(),
                input.images.len()
            )));
        }
        // Image tokens are replaced by the OGVT below; embed them as id 0 (the original
        // LLaVA marker is outside the vocabulary).
        let embeddable: Vec<u32> = ids
            .iter()
            .map(|&t| if t == self.image_token_id { 0 } else { t })
            .collect();
        let text = self.llm.embed(&[embeddable])?.squeeze_dim::<2>(0);
        let d = text.dims()[1];
        let mut parts = Vec::new();
        let mut segments = Vec::new();
        let mut spans = Vec::with_capacity(runs.len());
        let mut at = 0;
        // Segment ids stay distinct across the images of one prompt.
        let mut segment_base = 0u32;
        for (r, &(s, e)) in runs.iter().enumerate() {
            let out = encoded.fused.as_ref().expect("an image was encoded");
            let k = encoded.first[i] + r;
            let t = out.lengths[k];
            if s > at {
                parts.push(text.clone().slice(at..s));
                segments.extend(vec![0u32; s - at]);
            }
            parts.push(out.tokens.clone().slice([k..k + 1, 0..t]).reshape([t, d]));
            let layout = &out.layouts[k].segment_ids;
            segments.extend(
                layout
                    .iter()
                    .map(|&g| if g == 0 { 0 } else { g + segment_base }),
            );
            segment_base += layout.iter().copied().max().unwrap_or(0);
            spans.push((s, t, e - s));
            at = e;
        }
        if at < ids.len() {
            parts.push(text.slice(at..ids.len()));
            segments.extend(vec![0u32; ids.len() - at]);
        }
        Ok(SplicedRow {
            embeds: Tensor::cat(parts, 0),
            segments,
            spans,
        })
    }

    /// The batch the LLM receives: `rows` right-padded to the longest (zero embeddings),
    /// the padding mask, positions (segment-aware with [`Self::segment_rope`], continued
    /// through the padding) and the real lengths.
    fn pad_rows(&self, rows: Vec<SplicedRow<B>>, encoded: &EncodedImages<B>) -> Prepared<B> {
        let device = self.llm.model.embed_tokens.weight.device();
        let lengths: Vec<usize> = rows.iter().map(|r| r.segments.len()).collect();
        let t_max = *lengths.iter().max().expect("non-empty batch");
        let d = self.llm.hidden_size();
        let mut padded = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        let mut padding = Vec::with_capacity(rows.len() * t_max);
        let mut image_spans = Vec::with_capacity(rows.len());
        for row in rows {
            let (emb, segments) = (row.embeds, row.segments);
            image_spans.push(row.spans);
            let n = segments.len();
            let emb = if n < t_max {
                Tensor::cat(vec![emb, Tensor::zeros([t_max - n, d], &device)], 0)
            } else {
                emb
            };
            padded.push(emb.unsqueeze_dim::<3>(0));
            let mut pos = if self.segment_rope {
                rope::segment_positions(&segments)
            } else {
                (0..n as i64).collect()
            };
            let last = pos.last().copied().unwrap_or(-1);
            pos.extend((1..=(t_max - n) as i64).map(|k| last + k));
            positions.push(pos);
            padding.extend((0..t_max).map(|j| j >= n));
        }
        let b = padded.len();
        Prepared {
            embeds: Tensor::cat(padded, 0),
            padding: Tensor::from_data(TensorData::new(padding, [b, t_max]), &device),
            positions,
            lengths,
            image_spans,
            vision_s: encoded.vision_s,
            connector_s: encoded.connector_s,
        }
    }

    /// The causal-LM loss of a batch, LLaVA's way: position q predicts the token at q+1, and
    /// only tokens marked in `trainable` (one flag per token id of each input, e.g. from
    /// [`og_llm::ChatTokenizer::encode_chat_for_training`]) count; image tokens, prompts and
    /// padding never do. Returns the summed negative log-likelihood `[1]` and the number of
    /// supervised tokens, so callers can average over a whole accumulated batch. The LM head
    /// runs only on the positions that are supervised.
    pub fn loss_sum(
        &self,
        inputs: &[OgLlavaInput<B>],
        trainable: &[Vec<bool>],
    ) -> R<(Tensor<B, 1>, usize)> {
        if trainable.len() != inputs.len() {
            return Err(ModelError::Input(format!(
                "{} label rows for {} inputs",
                trainable.len(),
                inputs.len()
            )));
        }
        for (i, (inp, tr)) in inputs.iter().zip(trainable).enumerate() {
            if inp.token_ids.len() != tr.len() {
                return Err(ModelError::Input(format!(
                    "input {i}: {} trainable flags for {} tokens",
                    tr.len(),
                    inp.token_ids.len()
                )));
            }
        }
        let p = self.prepare(inputs)?;
        let t_max = p.lengths.iter().copied().max().unwrap_or(0);
        // Rows of the flattened hidden states that predict a supervised token, and the tokens.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, (inp, tr)) in inputs.iter().zip(trainable).enumerate() {
            for (j, (&id, &on)) in inp.token_ids.iter().zip(tr).enumerate() {
                if !on || id == self.image_token_id {
                    continue;
                }
                // Shift by every image before j (tokens inside a placeholder run never count).
                let mut q = j;
                for &(s, t, n) in &p.image_spans[b] {
                    if j >= s + n {
                        q = q + t - n;
                    }
                }
                if q == 0 {
                    continue; // nothing predicts the first token
                }
                rows.push((b * t_max + q - 1) as i64);
                targets.push(id as i64);
            }
        }
        let device = p.embeds.device();
        let n = rows.len();
        if n == 0 {
            return Ok((Tensor::zeros([1], &device), 0));
        }
        let hidden = self
            .llm
            .forward_hidden(p.embeds, &p.positions, Some(p.padding), None)?;
        let [b, t, d] = hidden.dims();
        let picked = hidden.reshape([b * t, d]).select(
            0,
            Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(rows, [n]), &device),
        );
        let logits = self
            .llm
            .head(picked.unsqueeze_dim::<3>(0))
            .squeeze_dim::<2>(0);
        // The loss in f32 whatever the model's dtype (a no-op in f32).
        let logp = burn::tensor::activation::log_softmax(logits.cast(DType::F32), 1);
        let targets =
            Tensor::<B, 2, burn::tensor::Int>::from_data(TensorData::new(targets, [n, 1]), &device);
        let nll = logp.gather(1, targets).neg().sum();
        Ok((nll, n))
    }

    /// Mean cross-entropy over the supervised tokens of the batch (see [`OgLlava::loss_sum`]).
    pub fn loss(&self, inputs: &[OgLlavaInput<B>], trainable: &[Vec<bool>]) -> R<Tensor<B, 1>> {
        let (sum, n) = self.loss_sum(inputs, trainable)?;
        Ok(sum / (n.max(1) as f64))
    }

    /// Generates after one prompt (its images encoded and spliced in); `on_token` sees each new
    /// token as it comes. Returns the new tokens (an EOS, if reached, included).
    pub fn generate(
        &self,
        input: &OgLlavaInput<B>,
        config: &og_llm::GenerationConfig,
        on_token: impl FnMut(u32),
    ) -> R<Vec<u32>> {
        let p = self.prepare(std::slice::from_ref(input))?;
        let positions = p.positions.into_iter().next().expect("one prompt");
        Ok(self
            .llm
            .generate_from_embeds(p.embeds, positions, config, on_token)?)
    }

    /// Generates after several prompts at once (their images encoded in one pass, the prompts
    /// decoded as one batch that shrinks as they finish); each prompt gets what
    /// [`OgLlava::generate`] gives it alone. `on_token(prompt, token)` sees each new token as
    /// it comes. Returns the new tokens of each prompt, in order.
    pub fn generate_batch(
        &self,
        inputs: &[OgLlavaInput<B>],
        config: &og_llm::GenerationConfig,
        mut on_token: impl FnMut(usize, u32),
    ) -> R<Vec<Vec<u32>>> {
        if !config.use_cache {
            return inputs
                .iter()
                .enumerate()
                .map(|(i, input)| self.generate(input, config, |token| on_token(i, token)))
                .collect();
        }
        let p = self.prepare(inputs)?;
        Ok(self.llm.generate_batch_from_embeds(
            p.embeds,
            &p.positions,
            &p.lengths,
            config,
            on_token,
        )?)
    }

    /// Log-likelihood of each candidate continuation (token ids) after one prompt with its
    /// images — multiple-choice scoring. The images are encoded once; the candidates run as one
    /// right-padded batch, continuing the prompt's positions.
    pub fn score(
        &self,
        prompt: &OgLlavaInput<B>,
        candidates: &[Vec<u32>],
    ) -> R<Vec<og_llm::Score>> {
        let p = self.prepare(std::slice::from_ref(prompt))?;
        Ok(self
            .llm
            .score_after_embeds(p.embeds, &p.positions[0], candidates)?)
    }

    /// Logits `[batch, T_max, vocab]` (rows past each sequence's length are padding).
    pub fn forward(&self, inputs: &[OgLlavaInput<B>]) -> R<(Tensor<B, 3>, Vec<usize>)> {
        let p = self.prepare(inputs)?;
        let logits = self
            .llm
            .forward(p.embeds, &p.positions, Some(p.padding), None)?;
        Ok((logits, p.lengths))
    }
}

/// The images to encode (indices into `all`) and, per image, the index of its pixels among
/// them: an image with the same pixels as the one before it reuses that one's.
fn consecutive_copies<B: Backend>(all: &[&ImageInput<B>]) -> (Vec<usize>, Vec<i64>) {
    let mut distinct = Vec::with_capacity(all.len());
    let mut source = Vec::with_capacity(all.len());
    for (k, image) in all.iter().enumerate() {
        let repeat = k > 0 && same_pixels(&all[k - 1].pixel_values, &image.pixel_values);
        if !repeat {
            distinct.push(k);
        }
        source.push(distinct.len() as i64 - 1);
    }
    (distinct, source)
}

/// Whether two pixel tensors hold the same values.
fn same_pixels<B: Backend>(a: &Tensor<B, 4>, b: &Tensor<B, 4>) -> bool {
    a.dims() == b.dims()
        && (a.clone() - b.clone())
            .abs()
            .max()
            .into_scalar()
            .elem::<f32>()
            == 0.0
}

/// LLaVA's `mm_projector_type` must be the 2-layer GELU MLP (the released OG-LLaVA code appends
/// its own tags after a comma).
fn check_projector_type(cfg_path: &Path, value: &serde_json::Value) -> R<()> {
    match value
        .get("mm_projector_type")
        .and_then(serde_json::Value::as_str)
    {
        Some(t) if t.split(',').next() != Some("mlp2x_gelu") => Err(ModelError::Config {
            path: cfg_path.to_path_buf(),
            message: format!("mm_projector_type {t:?} is not supported (mlp2x_gelu)"),
        }),
        _ => Ok(()),
    }
}

/// The tower of an original-LLaVA-style checkpoint: architecture from `vision`'s config, the
/// selection from LLaVA's `mm_*` keys, weights bundled in `dir` or else from `vision`.
fn original_tower(
    value: &serde_json::Value,
    dir: &Path,
    vision: &Path,
) -> R<(ClipVisionConfig, Weights)> {
    let (_, mut vision_value) = og_weights::read_config(vision)?;
    for key in ["mm_vision_select_layer", "mm_vision_select_feature"] {
        if let (Some(v), Some(obj)) = (value.get(key), vision_value.as_object_mut()) {
            obj.insert(key.to_string(), v.clone());
        }
    }
    let vcfg = ClipVisionConfig::from_hf_value(&vision_value)?;
    let bundled = Weights::open(dir).ok().filter(|w| {
        w.detect_prefix(
            og_vision::clip::VISION_PREFIXES,
            "embeddings.patch_embedding.weight",
        )
        .is_some()
    });
    let weights = match bundled {
        Some(w) => w,
        None => Weights::open(vision)?,
    };
    Ok((vcfg, weights))
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::Tensor;

    use super::{ImageInput, consecutive_copies};

    #[test]
    fn consecutive_copies_of_an_image_are_encoded_once() {
        let device = Default::default();
        let image = |v: f32| ImageInput::<NdArray> {
            pixel_values: Tensor::ones([1, 3, 4, 4], &device) * v,
            selection: None,
        };
        let images = [image(0.5), image(0.5), image(0.5), image(-1.0), image(0.5)];
        let all: Vec<&ImageInput<NdArray>> = images.iter().collect();
        let (distinct, source) = consecutive_copies(&all);
        // Only runs are merged: the last image equals the first but follows another one.
        assert_eq!(distinct, vec![0, 3, 4]);
        assert_eq!(source, vec![0, 0, 0, 1, 2]);
    }
}
