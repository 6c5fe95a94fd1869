//! `og-llava`: the command line of OG-LLaVA in Rust.

mod ask;
mod eval;
mod gpu_check;
mod launch;
mod llm;
mod nano;
mod overlay;
mod progress;
mod segment;
mod serve;
mod train;
mod world;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use og_fusion::{MaskOrder, Phi, Selection, SelectionConfig, Threshold};
use og_llava::{ConnectorProbe, DeviceSpec};
use og_segment::MaskSet;
use og_vision::FrameConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`: the option after
/// `mi_option_eager_commit_delay`, 14, in both v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages mapped. Every CPU tensor op allocates its output; by default mimalloc
/// returns idle memory to the OS after 10 ms, so the next step's buffers of the same sizes
/// are faulted in and zeroed by the kernel again (a tenth of a nano training step). The
/// process then holds its peak footprint until it exits, which the peak RSS already is.
fn keep_freed_pages() {
    // SAFETY: sets a plain integer option; valid at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "og-llava",
    version,
    about = "OG-LLaVA: object-guided visual tokens, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show which encoder rows (grid cells) each mask selects, and the token count T.
    Tokens(TokensArgs),
    /// Dump intermediate tensors of a checkpoint, to compare a conversion with transformers.
    #[command(subcommand)]
    Inspect(Inspect),
    /// Ask OG-LLaVA about an image (with masks: the OG path; without: plain LLaVA), streaming.
    Ask(ask::AskArgs),
    /// Segment an image, or every image of a folder, into masks (COCO RLE JSON) for the OG
    /// path; resumable.
    Segment(segment::SegmentArgs),
    /// Evaluate a model on a benchmark of the paper's Table 1 (or all: --suite paper) from the
    /// benchmark's downloaded files; resumable; writes items.jsonl and results.json.
    Eval(eval::EvalArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions, plain and
    /// streamed; images with masks or a segmenter take the OG path), batching requests.
    Serve(serve::ServeArgs),
    /// Generate text with any HF Llama checkpoint directory, streaming it.
    Generate(GenerateArgs),
    /// Train one stage (alignment or SFT) from a run configuration; resumable.
    Train(train::TrainArgs),
    /// Run the hub of multi-node training runs (it sums every replica's gradients, one run
    /// after another) until interrupted; nodes join with `og-llava train --nodes N
    /// --node-rank R --orchestrator HOST:PORT`.
    Orchestrator(OrchestratorArgs),
    /// Write a nano world: scenes with masks, conversations and evaluation sets.
    World(world::WorldArgs),
    /// The whole nano-world experiment: tokenizer, tiny CLIP, tiny Llama, LLaVA vs OG-LLaVA
    /// (two stages each), evaluation with and without masks.
    Nano(nano::NanoArgs),
    /// Run the connector at paper size on a backend: proves the backend works, times it.
    DeviceCheck {
        #[command(flatten)]
        device: DeviceArgs,
        /// LLM width D (3072: Llama-3.2-3B, 4096: Llama-3.1-8B)
        #[arg(long, default_value_t = 3072)]
        text_hidden: usize,
        #[arg(long, default_value_t = 3)]
        iterations: usize,
    },
    /// Everything a GPU machine must prove in one run: parity with the CPU reference (vision
    /// tower, Llama, both paths of the composed model) and one SFT step, in f32 and bf16, then
    /// training, prefill and decode throughput at paper shapes; writes report.json and
    /// report.md (`cargo xtask gpu-check` builds the CUDA binary and runs it).
    GpuCheck(gpu_check::GpuCheckArgs),
}

#[derive(Subcommand)]
enum Inspect {
    /// Preprocess an image and run the vision tower of any HF checkpoint directory (CLIPModel,
    /// CLIPVisionModel, Llava, original LLaVA with a bundled tower); write `pixel_values`
    /// [1,3,S,S] and `features` [1,V,F] (layer −2, CLS dropped unless flags say otherwise).
    Vision(InspectVisionArgs),
    /// Run any HF Llama checkpoint directory on token ids; write `logits` [1,T,vocab].
    Llm(InspectLlmArgs),
    /// Run a llava-hf checkpoint on an image and a prompt; write `logits` [1,T,vocab], one row
    /// per final sequence position (as transformers returns them).
    Llava(ask::InspectLlavaArgs),
}

#[derive(clap::Args)]
struct InspectLlmArgs {
    /// A `save_pretrained` directory (LlamaForCausalLM, or a Llava's language model).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// A PEFT LoRA adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A `save_pretrained` directory with config.json, weights and tokenizer files.
    #[arg(long)]
    model: PathBuf,
    /// The user's message (rendered with the model's chat template).
    prompt: String,
    /// Send the prompt as raw text instead of a chat turn.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A PEFT LoRA adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// The dtype the model computes in: f32, bf16 (cuda, flex) or auto (bf16 on GPUs with
    /// bf16 matmul units).
    #[arg(long, default_value = "f32")]
    precision: og_llava::Precision,
}

#[derive(clap::Args)]
struct InspectVisionArgs {
    /// A `save_pretrained` directory with config.json and safetensors weights.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    image: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Hidden state to use (negative counts from the end); default: the config's (−2).
    #[arg(long, allow_hyphen_values = true)]
    select_layer: Option<i64>,
    /// Keep the CLS token in `features`.
    #[arg(long)]
    cls: bool,
    /// Pad to square with the mean colour first (LLaVA-1.5's expand2square).
    #[arg(long)]
    pad: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PhiKind {
    /// The paper's Listing 1 (raster strips of the flattened original mask).
    Raster,
    /// Patch-aligned: masks mapped through the image frame, pooled per patch.
    Patch,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlphaUnit {
    /// Encoder-input pixels covered (patch Φ).
    Pixels,
    /// Fraction of the patch covered (patch Φ).
    Fraction,
}

#[derive(Clone, Copy, ValueEnum)]
enum FrameKind {
    /// LLaVA-1.5: pad to square with the mean colour, resize, crop.
    Llava,
    /// CLIPImageProcessor: resize shortest side, centre crop.
    Clip,
}

#[derive(Clone, Copy, ValueEnum)]
enum OrderKind {
    /// Largest mask first.
    Area,
    /// Highest segmenter score first.
    Score,
    /// As the mask file lists them.
    Given,
}

impl From<OrderKind> for MaskOrder {
    fn from(order: OrderKind) -> Self {
        match order {
            OrderKind::Area => MaskOrder::AreaDesc,
            OrderKind::Score => MaskOrder::Score,
            OrderKind::Given => MaskOrder::Given,
        }
    }
}

#[derive(clap::Args)]
struct TokensArgs {
    /// The image the masks belong to.
    #[arg(long)]
    image: PathBuf,
    /// COCO RLE JSON (SAM's output) or a folder of mask_<k>.npy files.
    #[arg(
        long,
        required_unless_present = "segmenter",
        conflicts_with = "segmenter"
    )]
    masks: Option<PathBuf>,
    /// Segment the image instead of reading --masks.
    #[command(flatten)]
    segmenter: segment::SegmenterArgs,
    #[arg(long, value_enum, default_value_t = PhiKind::Patch)]
    phi: PhiKind,
    /// Threshold α: Listing 1's count for raster; pixels or a fraction for patch.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    #[arg(long, value_enum, default_value_t = AlphaUnit::Pixels)]
    alpha_unit: AlphaUnit,
    /// Patches per side: V = grid² (24 for ViT-L/14@336).
    #[arg(long, default_value_t = 24)]
    grid: usize,
    /// Encoder patch size in pixels.
    #[arg(long, default_value_t = 14)]
    patch_size: usize,
    #[arg(long, value_enum, default_value_t = FrameKind::Llava)]
    frame: FrameKind,
    #[arg(long, value_enum, default_value_t = OrderKind::Area)]
    order: OrderKind,
    /// Add a group of the patches no mask keeps.
    #[arg(long)]
    complement: bool,
    /// Cap on T (whole masks in order; see og_fusion::TOKEN_CAP_POLICY).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Where TOKENS.json goes.
    #[arg(long)]
    out: PathBuf,
    /// Draw the kept cells over the encoder's view of the image (PNG).
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// In the overlay, draw raster-strip (left) and patch-aligned (right) side by side.
    #[arg(long)]
    compare: bool,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Vision(#[from] og_vision::VisionError),
    #[error(transparent)]
    Segment(#[from] og_segment::SegmentError),
    #[error(transparent)]
    Sam2(#[from] og_sam2::Sam2Error),
    #[error(transparent)]
    Fusion(#[from] og_fusion::FusionError),
    #[error(transparent)]
    Backend(#[from] og_llava::BackendError),
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error(transparent)]
    Checkpoint(#[from] og_weights::WeightError),
    #[error(transparent)]
    Llm(#[from] og_llm::LlmError),
    #[error(transparent)]
    Model(#[from] og_llava::ModelError),
    #[error(transparent)]
    Train(#[from] og_train::TrainError),
    #[error(transparent)]
    Eval(#[from] og_eval::EvalError),
    #[error("{0}")]
    Usage(String),
}

/// Where the hub listens and how long it waits. Every replica must present the token in
/// `OG_HUB_TOKEN` when the hub has one (required beyond loopback).
#[derive(clap::Args, Debug)]
pub struct OrchestratorArgs {
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// The address to listen on; anything but loopback needs `OG_HUB_TOKEN` set.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Seconds the first replica of a run waits for the others before the hub names the
    /// missing ranks and gives up on the run.
    #[arg(long, default_value_t = 600)]
    gather_timeout: u64,
    /// Seconds a round waits for each replica's gradients before naming the silent rank.
    #[arg(long, default_value_t = 3600)]
    round_timeout: u64,
}

/// Diagnostics on stderr: our `tracing` events and burn's `log` records, filtered by
/// `RUST_LOG` (e.g. `RUST_LOG=info`, `RUST_LOG=og_train=debug,burn=info`); warnings and errors
/// only by default. A malformed `RUST_LOG` is said and the default kept.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} ignored: {e}");
            EnvFilter::new("warn")
        }),
        _ => EnvFilter::new("warn"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    keep_freed_pages();
    init_logging();
    let cli = Cli::parse();
    let result = og_kernels::in_thread_pool(move || match cli.command {
        Command::Tokens(args) => tokens(&args),
        Command::Inspect(Inspect::Vision(args)) => inspect_vision(&args),
        Command::Inspect(Inspect::Llm(args)) => llm::inspect(&args),
        Command::Inspect(Inspect::Llava(args)) => ask::inspect(&args),
        Command::Generate(args) => llm::generate(&args),
        Command::Train(args) => train::run(&args),
        Command::Orchestrator(args) => train::orchestrator(&args),
        Command::World(args) => world::run(&args),
        Command::Nano(args) => nano::run_nano(&args),
        Command::Ask(args) => ask::ask(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Segment(args) => segment::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::DeviceCheck {
            device,
            text_hidden,
            iterations,
        } => device_check(&device, text_hidden, iterations),
        Command::GpuCheck(args) => gpu_check::run(&args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_masks(path: &Path) -> Result<MaskSet, CliError> {
    if path.is_dir() {
        Ok(og_segment::npy::read_npy_folder(path)?)
    } else {
        Ok(MaskSet::read_coco_json(path)?)
    }
}

/// Masks for `image` (of `width`×`height`), rejected when made for another size.
pub(crate) fn read_masks_for(
    path: &Path,
    image: &Path,
    width: u32,
    height: u32,
) -> Result<MaskSet, CliError> {
    let masks = read_masks(path)?;
    masks
        .expect_size(width as usize, height as usize)
        .map_err(|e| {
            CliError::Usage(format!(
                "{} does not fit {}: {e}",
                path.display(),
                image.display()
            ))
        })?;
    Ok(masks)
}

/// Writes `logits` to a safetensors file and says so.
pub(crate) fn save_logits<B: burn::tensor::backend::Backend>(
    out: &Path,
    logits: burn::tensor::Tensor<B, 3>,
) -> Result<(), CliError> {
    let dims = logits.dims();
    og_weights::save_safetensors(
        out,
        &[og_weights::SaveTensor::from_tensor("logits", logits)],
    )?;
    eprintln!("logits {dims:?} written to {}", out.display());
    Ok(())
}

/// The device a command runs on: `--device ndarray | flex | wgpu[:N] | cuda[:N]`.
///
/// Without it, every command (training included) runs on the measured-fastest CPU backend,
/// [`og_llava::backend::DEFAULT_DEVICE`] (Flex), or the first backend compiled in
/// (docs/backends.md).
#[derive(clap::Args, Clone, Default)]
pub(crate) struct DeviceArgs {
    /// ndarray | flex | wgpu[:N] | cuda[:N] (default: flex).
    #[arg(long)]
    pub device: Option<String>,
}

impl DeviceArgs {
    pub(crate) fn spec(&self) -> Result<DeviceSpec, CliError> {
        Ok(match &self.device {
            Some(s) => s.parse::<DeviceSpec>()?,
            None => DeviceSpec::default(),
        })
    }
}

/// A `save_pretrained` directory must hold `config.json`.
pub(crate) fn require_model_dir(model: &Path) -> Result<(), CliError> {
    if !model.join("config.json").is_file() {
        return Err(CliError::Usage(format!(
            "{} has no config.json: expected a save_pretrained directory",
            model.display()
        )));
    }
    Ok(())
}

pub(crate) fn phi_of(kind: PhiKind, alpha: f64, unit: AlphaUnit) -> Phi {
    match kind {
        PhiKind::Raster => Phi::RasterStrip1d { alpha },
        PhiKind::Patch => Phi::PatchGrid2d {
            threshold: match unit {
                AlphaUnit::Pixels => Threshold::Pixels(alpha),
                AlphaUnit::Fraction => Threshold::Fraction(alpha),
            },
        },
    }
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    og_segment::write_atomic(path, bytes).map_err(|e| CliError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The `tokens` overlay as PNG bytes: the framed image with each mask's outline and kept
/// cells, one panel per Φ with `--compare`.
fn overlay_png(
    args: &TokensArgs,
    path: &Path,
    image: &image::RgbImage,
    frame: &og_vision::Frame,
    masks: &MaskSet,
    config: &SelectionConfig,
    selection: &Selection,
) -> Result<Vec<u8>, CliError> {
    let base = frame.apply_image(image)?;
    let mut panels = Vec::new();
    if args.compare {
        for kind in [PhiKind::Raster, PhiKind::Patch] {
            let cfg = SelectionConfig {
                phi: phi_of(kind, args.alpha, args.alpha_unit),
                ..config.clone()
            };
            let sel = Selection::from_masks(masks, frame, &cfg)?;
            panels.push(overlay::panel(&base, frame, masks, &sel));
        }
    } else {
        panels.push(overlay::panel(&base, frame, masks, selection));
    }
    let img = overlay::side_by_side(&panels);
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| CliError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(bytes)
}

fn tokens(args: &TokensArgs) -> Result<(), CliError> {
    let max = og_vision::clip::MAX_IMAGE_SIZE;
    if args.grid == 0 || args.patch_size == 0 || args.grid.saturating_mul(args.patch_size) > max {
        return Err(CliError::Usage(format!(
            "--grid {} × --patch-size {}: the encoder input side must be 1 to {max} pixels",
            args.grid, args.patch_size
        )));
    }
    let image = og_vision::load_rgb(&args.image)?;
    let masks = match &args.masks {
        Some(path) => read_masks_for(path, &args.image, image.width(), image.height())?,
        None => args
            .segmenter
            .segment(&image, og_llava::DeviceSpec::default())?,
    };
    let (w, h) = (image.width() as usize, image.height() as usize);
    let size = args.grid * args.patch_size;
    let frame_cfg = FrameConfig {
        pad_to_square: matches!(args.frame, FrameKind::Llava),
        ..FrameConfig::square(size, args.patch_size)
    };
    let frame = frame_cfg.frame(w, h)?;
    let phi = phi_of(args.phi, args.alpha, args.alpha_unit);
    let config = SelectionConfig {
        phi,
        order: args.order.into(),
        complement: args.complement,
        max_tokens: args.max_tokens,
        ..SelectionConfig::default()
    };
    let selection = Selection::from_masks(&masks, &frame, &config)?;
    let report = selection.report(&phi);
    let json = serde_json::to_string(&report).expect("report serialises");

    // Render the overlay before writing anything, so a failure leaves no partial output.
    let png = match &args.overlay {
        Some(path) => Some(overlay_png(
            args, path, &image, &frame, &masks, &config, &selection,
        )?),
        None => None,
    };
    write_output(&args.out, json.as_bytes())?;
    if let (Some(path), Some(bytes)) = (&args.overlay, png) {
        // Both outputs or neither: a failed overlay takes the token file back.
        write_output(path, &bytes).inspect_err(|_| {
            let _ = std::fs::remove_file(&args.out);
        })?;
    }
    eprintln!(
        "{} masks, phi={} alpha={}: T = {} tokens over {} groups{}",
        masks.len(),
        phi.name(),
        args.alpha,
        report.total_tokens,
        selection.groups.len(),
        if report.fallback_full_grid {
            " (no mask kept a patch: full grid)"
        } else {
            ""
        }
    );
    Ok(())
}

fn device_check(
    device: &DeviceArgs,
    text_hidden: usize,
    iterations: usize,
) -> Result<(), CliError> {
    // The paper's widths are 3072 and 4096; 65 536 bounds the probe's buffers (~2.5 GB).
    if !(1..=65_536).contains(&text_hidden) || iterations == 0 {
        return Err(CliError::Usage(format!(
            "--text-hidden must be in 1..=65536 (got {text_hidden}) and --iterations at least 1"
        )));
    }
    let spec = device.spec()?;
    eprintln!(
        "compiled backends: {}; running on {spec}",
        og_llava::compiled_backends().join(", ")
    );
    let report = og_llava::dispatch(
        spec,
        ConnectorProbe {
            grid: 24,
            vision_hidden_size: 1024,
            text_hidden_size: text_hidden,
            iterations,
        },
    )?;
    if !report.mean.is_finite() {
        return Err(CliError::Usage(format!(
            "{} produced a non-finite output",
            report.backend
        )));
    }
    println!(
        "{}: OGVT {:?}, mean {:.7}, median {:.1} ms per connector forward",
        report.backend, report.shape, report.mean, report.median_ms
    );
    Ok(())
}

struct InspectVision<'a> {
    args: &'a InspectVisionArgs,
    image: og_vision::RgbImage,
    config: og_vision::clip::ClipVisionConfig,
    processor: og_vision::ImageProcessor,
}

impl og_llava::BackendTask for InspectVision<'_> {
    type Output = Result<(), CliError>;

    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Self::Output {
        use og_vision::clip::ClipVisionTransformer;
        let weights = og_weights::Weights::open(&self.args.model)?;
        let tower: ClipVisionTransformer<B> =
            self.config.init::<B>(&device)?.load_weights(&weights)?;
        let (pixel_values, _) = self.processor.pixel_values::<B>(&self.image, &device)?;
        let features = tower.features(pixel_values.clone())?;
        let dims = features.dims();
        og_weights::save_safetensors(
            &self.args.out,
            &[
                og_weights::SaveTensor::from_tensor("pixel_values", pixel_values),
                og_weights::SaveTensor::from_tensor("features", features),
            ],
        )?;
        eprintln!(
            "features {dims:?} (hidden state {} of {}) written to {}",
            self.config.selected_hidden_state()?,
            self.config.num_hidden_layers,
            self.args.out.display()
        );
        Ok(())
    }
}

fn inspect_vision(args: &InspectVisionArgs) -> Result<(), CliError> {
    use og_vision::clip::{ClipVisionConfig, SelectFeature};
    require_model_dir(&args.model)?;
    let mut config = ClipVisionConfig::from_hf_dir(&args.model)?;
    if let Some(l) = args.select_layer {
        config.select_layer = l;
    }
    if args.cls {
        config.select_feature = SelectFeature::ClsPatch;
    }
    config.validate()?;
    let processor = og_vision::ImageProcessor::from_hf_dir(
        &args.model,
        config.image_size,
        config.patch_size,
        args.pad,
    )?;
    let image = og_vision::load_rgb(&args.image)?;
    og_llava::dispatch(
        args.device.spec()?,
        InspectVision {
            args,
            image,
            config,
            processor,
        },
    )?
}
