//! `og-llava ask`: one question about one image, answered by streaming.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use og_fusion::{Phi, Selection, SelectionConfig};
use og_llava::{BackendTask, ExternalParts, Layout, ModelPart, OgLlava, OgLlavaInput};
use og_llm::{ChatTokenizer, GenerationConfig, Message, Role};
use og_vision::ImageProcessor;

use crate::{AlphaUnit, CliError, FrameKind, OrderKind, PhiKind};

/// Which checkpoint to load: every layout this command line reads.
#[derive(clap::Args)]
pub struct ModelSource {
    /// The model: a llava-hf directory, a checkpoint of ours, or an original LLaVA-1.5 /
    /// released OG-LLaVA one (with --vision / --base).
    #[arg(long)]
    pub model: PathBuf,
    /// The CLIP tower of an original LLaVA-1.5 or released OG-LLaVA checkpoint (what
    /// `mm_vision_tower` names).
    #[arg(long)]
    pub vision: Option<PathBuf>,
    /// The base Llama directory of a released OG-LLaVA checkpoint (LoRA adapter +
    /// non_lora_trainables.bin in --model).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The longest prompt accepted, in tokens (image tokens included); default: the model's
    /// `max_position_embeddings`. Beyond the trained length RoPE extrapolates.
    #[arg(long)]
    pub context: Option<usize>,
}

impl ModelSource {
    /// The model whatever its layout ([`OgLlava::open`]), adapters merged; a part the layout
    /// keeps elsewhere and the command line does not give is named by its flag.
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<OgLlava<B>, CliError> {
        let mut model = match OgLlava::open(&self.model, self.parts(), device) {
            Err(og_llava::ModelError::MissingParts { dir, layout, parts }) => {
                let flags: Vec<&str> = parts
                    .iter()
                    .map(|p| match p {
                        ModelPart::BaseLlm => "--base DIR (the base Llama)",
                        ModelPart::VisionTower => {
                            "--vision DIR (the CLIP tower its mm_vision_tower names)"
                        }
                    })
                    .collect();
                return Err(CliError::Usage(format!(
                    "{} is {layout}: give {}",
                    dir.display(),
                    flags.join(" and ")
                )));
            }
            other => other?,
        };
        model.llm = model.llm.merge_lora();
        if let Some(n) = self.context {
            model.llm.set_max_positions(n);
        }
        Ok(model)
    }

    /// The model in `precision` on `device`, its recorded image settings and segment-aware
    /// RoPE overridden by the OG-path flags given: what `ask` and `eval` run.
    pub fn load_for<B: Backend>(
        &self,
        path: &OgPathArgs,
        precision: og_llava::Precision,
        device: &B::Device,
    ) -> Result<OgLlava<B>, CliError> {
        precision.apply::<B>(std::slice::from_ref(device))?;
        let mut model = self.load::<B>(device)?;
        path.apply(&mut model);
        Ok(model)
    }

    /// The parts the command line gives from outside the model directory.
    fn parts(&self) -> ExternalParts<'_> {
        ExternalParts {
            vision: self.vision.as_deref(),
            base: self.base.as_deref(),
        }
    }

    /// The checkpoint's image processor (see [`processor_for`]), padding as the model's
    /// settings say.
    pub fn processor<B: Backend>(&self, model: &OgLlava<B>) -> Result<ImageProcessor, CliError> {
        processor_for(
            model,
            &self.model,
            self.vision.as_deref(),
            model_frame(model),
        )
    }
}

/// How images become visual tokens on the OG path. Every flag defaults to what the model
/// records (`og_llava.json` of a checkpoint of ours; the paper's Φ for released OG-LLaVA; our
/// defaults otherwise); a flag given overrides it, and the run says so.
#[derive(clap::Args)]
pub struct OgPathArgs {
    /// Φ: the paper's raster strips or our patch grid (default: the model's).
    #[arg(long, value_enum)]
    pub phi: Option<PhiKind>,
    /// Φ's threshold: Listing 1's count (raster) or pixels covered (patch).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// The order groups are concatenated in.
    #[arg(long, value_enum)]
    pub order: Option<OrderKind>,
    /// Image geometry: LLaVA-1.5's pad-to-square or CLIP's resize + crop.
    #[arg(long, value_enum)]
    pub frame: Option<FrameKind>,
    /// Segment-aware 1-D RoPE for the visual tokens.
    #[arg(long, conflicts_with = "no_segment_rope")]
    pub segment_rope: bool,
    /// Consecutive positions for the visual tokens, whatever the model records.
    #[arg(long)]
    pub no_segment_rope: bool,
}

impl OgPathArgs {
    /// The model's settings with the flags given applied; each override is said on stderr.
    pub fn apply<B: Backend>(&self, model: &mut OgLlava<B>) {
        let recorded = (model.image.clone(), model.segment_rope);
        let selection = &mut model.image.selection;
        selection.phi = phi_override(selection.phi, self.phi, self.alpha);
        if let Some(order) = self.order {
            selection.order = order.into();
        }
        if let Some(frame) = self.frame {
            model.image.pad_to_square = matches!(frame, FrameKind::Llava);
        }
        if self.segment_rope || self.no_segment_rope {
            model.segment_rope = self.segment_rope;
        }
        let said = |what: &str, now: String, was: String| {
            if now != was {
                eprintln!("{what}: {now} (the model records {was}; the flag overrides it)");
            }
        };
        let (image, rope) = recorded;
        let s = &model.image.selection;
        said(
            "Φ",
            format!("{:?}", s.phi),
            format!("{:?}", image.selection.phi),
        );
        said(
            "mask order",
            format!("{:?}", s.order),
            format!("{:?}", image.selection.order),
        );
        let frame = |pad: bool| {
            if pad {
                "pad to square"
            } else {
                "resize + crop"
            }
        };
        said(
            "frame",
            frame(model.image.pad_to_square).into(),
            frame(image.pad_to_square).into(),
        );
        said(
            "segment-aware RoPE",
            model.segment_rope.to_string(),
            rope.to_string(),
        );
    }
}

/// `recorded` with `--phi`/`--alpha` applied. `--alpha` is in pixels (patch) or Listing 1's
/// count (raster); `--phi` alone keeps the recorded threshold when the kind stays and takes
/// 0.5 when it changes.
fn phi_override(recorded: Phi, kind: Option<PhiKind>, alpha: Option<f64>) -> Phi {
    let recorded_kind = match recorded {
        Phi::RasterStrip1d { .. } => PhiKind::Raster,
        Phi::PatchGrid2d { .. } => PhiKind::Patch,
    };
    let kind = kind.unwrap_or(recorded_kind);
    match alpha {
        Some(alpha) => crate::phi_of(kind, alpha, AlphaUnit::Pixels),
        None if kind == recorded_kind => recorded,
        None => crate::phi_of(kind, 0.5, AlphaUnit::Pixels),
    }
}

#[derive(clap::Args)]
pub struct AskArgs {
    #[command(flatten)]
    source: ModelSource,
    #[arg(long)]
    image: PathBuf,
    /// COCO RLE JSON or a folder of mask_<k>.npy for the image: the OG path.
    #[arg(long, conflicts_with_all = ["no_masks", "segmenter"])]
    masks: Option<PathBuf>,
    /// The plain LLaVA path (the default when no masks are given).
    #[arg(long, conflicts_with = "segmenter")]
    no_masks: bool,
    #[command(flatten)]
    segmenter: crate::segment::SegmenterArgs,
    #[command(flatten)]
    path: OgPathArgs,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Print preprocess, ViT, Φ+connector, prefill and per-token decode times.
    #[arg(long)]
    timings: bool,
    #[command(flatten)]
    device: crate::DeviceArgs,
    /// The dtype the model computes in: f32, bf16 (cuda, flex) or auto (bf16 on GPUs with
    /// bf16 matmul units).
    #[arg(long, default_value = "f32")]
    precision: og_llava::Precision,
    /// The question.
    question: String,
}

/// Where an image's masks come from.
enum MaskSource<'a> {
    /// The plain path.
    None,
    File(&'a Path),
    Segmenter(&'a crate::segment::SegmenterArgs, og_llava::DeviceSpec),
}

/// The image's groups (the OG path), or `None` (the plain path).
fn select(
    masks: MaskSource<'_>,
    image_path: &std::path::Path,
    image: &og_vision::RgbImage,
    frame: &og_vision::Frame,
    config: &SelectionConfig,
) -> Result<Option<Selection>, CliError> {
    let masks = match masks {
        MaskSource::None => return Ok(None),
        MaskSource::File(path) => {
            crate::read_masks_for(path, image_path, image.width(), image.height())?
        }
        MaskSource::Segmenter(seg, device) => {
            let masks = seg.segment(image, device)?;
            eprintln!("{} masks from {:?}", masks.len(), seg.kind());
            masks
        }
    };
    Ok(Some(Selection::from_masks(&masks, frame, config)?))
}

/// The geometry the model's settings ask for.
fn model_frame<B: Backend>(model: &OgLlava<B>) -> FrameKind {
    if model.image.pad_to_square {
        FrameKind::Llava
    } else {
        FrameKind::Clip
    }
}

/// The mask selection of the command line's Φ flags (α in pixels).
fn selection_config(phi: PhiKind, alpha: f64) -> SelectionConfig {
    SelectionConfig {
        phi: crate::phi_of(phi, alpha, crate::AlphaUnit::Pixels),
        ..SelectionConfig::default()
    }
}

/// Decodes the image and makes the model's `pixel_values` and frame (the processor of the
/// checkpoint directory, LLaVA padding or CLIP crop).
fn preprocess<B: Backend>(
    model: &OgLlava<B>,
    source: &ModelSource,
    image_path: &std::path::Path,
    frame: FrameKind,
    device: &B::Device,
) -> Result<
    (
        og_vision::RgbImage,
        burn::tensor::Tensor<B, 4>,
        og_vision::Frame,
    ),
    CliError,
> {
    let image = og_vision::load_rgb(image_path)?;
    let processor = processor_for(model, &source.model, source.vision.as_deref(), frame)?;
    let (pixel_values, frame) = processor.pixel_values::<B>(&image, device)?;
    Ok((image, pixel_values, frame))
}

/// The image processor of a model directory: the `preprocessor_config.json` its layout points
/// to ([`Layout::processor_dir`]), with LLaVA padding or CLIP's crop.
fn processor_for<B: Backend>(
    model: &OgLlava<B>,
    dir: &std::path::Path,
    vision: Option<&std::path::Path>,
    frame: FrameKind,
) -> Result<ImageProcessor, CliError> {
    let size = model.vision.image_size();
    Ok(ImageProcessor::from_hf_dir(
        Layout::detect(dir)?.processor_dir(dir, vision),
        size,
        size / model.vision.grid(),
        matches!(frame, FrameKind::Llava),
    )?)
}

/// Where a model directory's tokenizer lives (its base's, for a checkpoint of ours).
pub(crate) fn tokenizer_dir(dir: &std::path::Path) -> Result<std::path::PathBuf, CliError> {
    Ok(Layout::detect(dir)?.tokenizer_dir(dir))
}

/// A multimodal model directory, in a layout [`Layout::detect`] knows.
pub(crate) fn require_llava_model(model: &std::path::Path) -> Result<(), CliError> {
    Layout::detect(model)?;
    Ok(())
}

/// The model directory and the image must exist.
pub(crate) fn require_inputs(
    model: &std::path::Path,
    image: &std::path::Path,
) -> Result<(), CliError> {
    require_llava_model(model)?;
    if !image.is_file() {
        return Err(CliError::Usage(format!(
            "image {} not found",
            image.display()
        )));
    }
    Ok(())
}

struct Ask<'a> {
    args: &'a AskArgs,
    tokenizer: ChatTokenizer,
}

impl BackendTask for Ask<'_> {
    type Output = Result<(), CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let model = a.source.load_for::<B>(&a.path, a.precision, &device)?;
        let t0 = Instant::now();
        let (image, pixel_values, frame) =
            preprocess(&model, &a.source, &a.image, model_frame(&model), &device)?;
        let preprocess_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let masks = match (&a.masks, a.segmenter.segmenter) {
            (_, Some(_)) => MaskSource::Segmenter(&a.segmenter, a.device.spec()?),
            (Some(path), None) if !a.no_masks => MaskSource::File(path),
            _ => MaskSource::None,
        };
        let selection = select(masks, &a.image, &image, &frame, &model.image.selection)?;
        let phi_s = t1.elapsed().as_secs_f64();
        let tok = &self.tokenizer;
        if a.question.contains(og_llm::IMAGE_PLACEHOLDER) {
            return Err(CliError::Usage(format!(
                "the question holds the literal {}, which stands for the image in prompts; ask \
                 without it (the image goes before the question)",
                og_llm::IMAGE_PLACEHOLDER
            )));
        }
        let content = format!("{}\n{}", og_llm::IMAGE_PLACEHOLDER, a.question);
        let ids = tok.encode_chat_ids(
            &[Message::new(Role::User, content)],
            true,
            model.image_token_id,
        )?;
        let prepared = model.prepare(&[OgLlavaInput {
            token_ids: ids,
            images: vec![og_llava::ImageInput {
                pixel_values,
                selection,
            }],
        }])?;
        let eos = crate::llm::eos_ids(&tokenizer_dir(&a.source.model)?, tok)?;
        let generation = GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            eos_token_ids: eos,
            ..GenerationConfig::default()
        };
        let mut stamps: Vec<f64> = Vec::new();
        let mut streamer = crate::llm::Streamer::new(tok);
        let t2 = Instant::now();
        model.llm.generate_from_embeds(
            prepared.embeds,
            prepared.positions[0].clone(),
            &generation,
            |t| {
                stamps.push(t2.elapsed().as_secs_f64());
                streamer.push(t);
            },
        )?;
        println!();
        if a.timings {
            let prefill = stamps.first().copied().unwrap_or(0.0);
            let decode = if stamps.len() > 1 {
                (stamps[stamps.len() - 1] - prefill) / (stamps.len() - 1) as f64
            } else {
                0.0
            };
            eprintln!(
                "timings: preprocess {:.1} ms, ViT {:.1} ms, Φ {:.1} ms + connector {:.1} ms, prefill {:.1} ms ({} tokens), decode {:.1} ms/token ({} tokens)",
                preprocess_s * 1e3,
                prepared.vision_s * 1e3,
                phi_s * 1e3,
                prepared.connector_s * 1e3,
                prefill * 1e3,
                prepared.lengths[0],
                decode * 1e3,
                stamps.len()
            );
        }
        Ok(())
    }
}

pub fn ask(args: &AskArgs) -> Result<(), CliError> {
    require_inputs(&args.source.model, &args.image)?;
    let tokenizer = ChatTokenizer::from_dir(tokenizer_dir(&args.source.model)?)?;
    og_llava::dispatch(args.device.spec()?, Ask { args, tokenizer })?
}

#[derive(clap::Args)]
pub struct InspectLlavaArgs {
    #[command(flatten)]
    source: ModelSource,
    #[arg(long)]
    image: PathBuf,
    /// Raw prompt text holding `<image>` (tokenised without adding special tokens).
    #[arg(
        long,
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    prompt: Option<String>,
    /// Comma-separated token ids; the checkpoint's image token stands for the image, once or
    /// repeated as transformers writes it (-200 for original LLaVA and released OG-LLaVA
    /// checkpoints).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    token_ids: Option<Vec<i64>>,
    /// COCO RLE JSON or mask_<k>.npy folder: the OG path (default: no masks).
    #[arg(long)]
    masks: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = PhiKind::Patch)]
    phi: PhiKind,
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Image geometry (default: CLIP's resize + crop, as transformers' Llava processor).
    #[arg(long, value_enum, default_value_t = FrameKind::Clip)]
    frame: FrameKind,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: crate::DeviceArgs,
}

struct Inspect<'a> {
    args: &'a InspectLlavaArgs,
    tokenizer: Option<ChatTokenizer>,
}

impl BackendTask for Inspect<'_> {
    type Output = Result<(), CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let model = a.source.load::<B>(&device)?;
        let (image, pixel_values, frame) =
            preprocess(&model, &a.source, &a.image, a.frame, &device)?;
        let masks = a
            .masks
            .as_deref()
            .map_or(MaskSource::None, MaskSource::File);
        let config = selection_config(a.phi, a.alpha);
        let selection = select(masks, &a.image, &image, &frame, &config)?;
        let ids = match (&a.token_ids, &a.prompt, &self.tokenizer) {
            (Some(ids), _, _) => ids
                .iter()
                .map(|&t| match t {
                    -200 => Ok(og_llava::ORIGINAL_IMAGE_TOKEN),
                    t if (0..u32::MAX as i64).contains(&t) => Ok(t as u32),
                    t => Err(CliError::Usage(format!(
                        "--token-ids: {t} is not a token id (-200 marks the image of original \
                         LLaVA checkpoints)"
                    ))),
                })
                .collect::<Result<Vec<u32>, CliError>>()?,
            (None, Some(prompt), Some(tok)) => {
                let mut ids = Vec::new();
                for (i, piece) in prompt.split(og_llm::IMAGE_PLACEHOLDER).enumerate() {
                    if i > 0 {
                        ids.push(model.image_token_id);
                    }
                    ids.extend(tok.encode(piece, false)?);
                }
                ids
            }
            _ => return Err(CliError::Usage("give --prompt or --token-ids".into())),
        };
        let (logits, lengths) = model.forward(&[OgLlavaInput {
            token_ids: ids,
            images: vec![og_llava::ImageInput {
                pixel_values,
                selection,
            }],
        }])?;
        let [_, _, v] = logits.dims();
        let logits = logits.slice([0..1, 0..lengths[0], 0..v]);
        crate::save_logits(&a.out, logits)
    }
}

pub fn inspect(args: &InspectLlavaArgs) -> Result<(), CliError> {
    require_inputs(&args.source.model, &args.image)?;
    let tokenizer = match &args.prompt {
        Some(p) if !p.contains(og_llm::IMAGE_PLACEHOLDER) => {
            return Err(CliError::Usage(format!(
                "the prompt has no {} placeholder",
                og_llm::IMAGE_PLACEHOLDER
            )));
        }
        Some(_) => Some(ChatTokenizer::from_dir(tokenizer_dir(&args.source.model)?)?),
        None => None,
    };
    og_llava::dispatch(args.device.spec()?, Inspect { args, tokenizer })?
}
