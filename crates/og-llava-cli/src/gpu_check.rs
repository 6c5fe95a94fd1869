//! `og-llava gpu-check`: everything a GPU machine must prove, in one run.
//!
//! The command runs one child process per precision (f32, then bf16 where the backend has it;
//! a device's float dtype is chosen once per process) and composes their results into
//! `DIR/report.json` and `DIR/report.md`. Each phase:
//!
//! 1. **Parity** against the CPU reference (NdArray, f32) on a small random model written
//!    once to `DIR/parity-base` (CLIP tower, Llama, connector, LoRA adapter) and loaded by both
//!    sides: the tower's features, the Llama's logits, and the composed model's logits on the
//!    LLaVA path (the full patch grid) and the OG path (mask groups). f32 passes at
//!    `max |device − reference| ≤ 1e-3`; bf16 at 5% of the reference's largest magnitude.
//! 2. **One SFT step** (LoRA on every projection, connector trained, global-norm clipping,
//!    AdamW with f32 master weights under bf16): the loss and the global gradient norm against
//!    the reference's f32 step, within a relative 1e-3 (f32) or 5e-2 (bf16).
//! 3. **Throughput** with random weights at the chosen shapes (`paper`: CLIP ViT-L/14@336 +
//!    Llama-3.2-3B, LoRA r = 128 on every projection, as many text tokens as visual tokens;
//!    `tiny`: the test-suite sizes): training tokens/s, model TFLOP/s and MFU (when the peak is
//!    known), prefill and decode tokens/s, and the peak memory (GPU memory polled from
//!    `nvidia-smi` on CUDA; the process's peak RSS everywhere).
//!
//! The f32 phase also runs `device-check`'s connector probe at paper width.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use og_llava::og_fusion::{Group, GroupSource, OgFusionConfig, Selection};
use og_llava::og_llm::{KvCache, LlamaConfig, LoraConfig};
use og_llava::og_vision::clip::ClipVisionConfig;
use og_llava::{
    BackendTask, ConnectorProbe, DeviceSpec, ImageSettings, ORIGINAL_IMAGE_TOKEN, OgLlava,
    OgLlavaInput, Precision,
};
use og_train::Stage;
use og_train::optim::{AdamW, OptimState, freeze_for, grads_by_name, trainables};
use serde::{Deserialize, Serialize};

use crate::CliError;

/// Model sizes of the throughput measurement.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shapes {
    /// The test suite's tiny CLIP and Llama.
    Tiny,
    /// CLIP ViT-L/14@336 + Llama-3.2-3B, LoRA r = 128 on every projection.
    Paper,
}

impl Shapes {
    fn vision(self) -> ClipVisionConfig {
        match self {
            Shapes::Tiny => ClipVisionConfig::tiny(),
            Shapes::Paper => ClipVisionConfig::vit_l_14_336(),
        }
    }

    fn llm(self) -> LlamaConfig {
        match self {
            Shapes::Tiny => LlamaConfig::tiny(),
            Shapes::Paper => LlamaConfig::llama_3_2_3b(),
        }
    }

    fn lora(self) -> LoraConfig {
        match self {
            Shapes::Tiny => LoraConfig {
                r: 8,
                alpha: 16.0,
                ..LoraConfig::paper()
            },
            Shapes::Paper => LoraConfig::paper(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shapes::Tiny => "tiny",
            Shapes::Paper => "paper",
        }
    }
}

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// The device to check: cuda[:N] | wgpu[:N] | flex | ndarray.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Throughput shapes (default: paper on a GPU, tiny on the CPU backends).
    #[arg(long, value_enum)]
    shapes: Option<Shapes>,
    /// Sequences per training step in the throughput measurement (default: 4 paper, 2 tiny).
    #[arg(long)]
    batch: Option<usize>,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Generated tokens in the decode measurement.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// The device's dense peak in TFLOP/s for MFU (default: known NVIDIA GPUs by name, per
    /// precision; none on the CPU).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Output directory: report.json, report.md, one JSON per phase.
    #[arg(long, default_value = "target/gpu-check")]
    out: PathBuf,
    /// Runs one phase in this process (what the command starts for each precision).
    #[arg(long, hide = true)]
    phase: Option<PhasePrecision>,
}

/// The precision of one phase.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhasePrecision {
    F32,
    Bf16,
}

impl PhasePrecision {
    fn precision(self) -> Precision {
        match self {
            PhasePrecision::F32 => Precision::F32,
            PhasePrecision::Bf16 => Precision::Bf16,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PhasePrecision::F32 => "f32",
            PhasePrecision::Bf16 => "bf16",
        }
    }

    /// `max |device − reference|` allowed for outputs whose reference peaks at `ref_max`.
    fn tolerance(self, ref_max: f64) -> f64 {
        match self {
            PhasePrecision::F32 => 1e-3,
            PhasePrecision::Bf16 => 0.05 * ref_max,
        }
    }

    /// Relative difference allowed for the SFT step's loss and gradient norm.
    fn step_tolerance(self) -> f64 {
        match self {
            PhasePrecision::F32 => 1e-3,
            PhasePrecision::Bf16 => 5e-2,
        }
    }
}

/// One output compared with the reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub name: String,
    pub max_abs_diff: f64,
    pub reference_max_abs: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// The SFT step on the device against the reference's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepCheck {
    pub loss: f64,
    pub loss_reference: f64,
    pub grad_norm: f64,
    pub grad_norm_reference: f64,
    pub relative_tolerance: f64,
    pub pass: bool,
}

/// Speed at the throughput shapes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub shapes: Shapes,
    pub batch: usize,
    /// Visual plus text tokens per step.
    pub tokens_per_step: usize,
    /// Median seconds of one training step (forward, backward, clipping, AdamW).
    pub step_s: f64,
    pub train_tokens_per_s: f64,
    /// Model FLOPs per step / step time (see [`model_flops`]).
    pub model_tflops: f64,
    pub peak_tflops: Option<f64>,
    pub mfu: Option<f64>,
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// The connector probe of `device-check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub shape: [usize; 3],
    pub mean: f32,
    pub median_ms: f64,
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub precision: PhasePrecision,
    pub backend: String,
    pub device_check: Option<Probe>,
    pub parity: Vec<Comparison>,
    pub sft_step: StepCheck,
    pub throughput: Throughput,
    /// The phase process's peak resident memory.
    pub peak_rss_mb: Option<f64>,
}

impl Phase {
    fn pass(&self) -> bool {
        self.parity.iter().all(|c| c.pass) && self.sft_step.pass
    }
}

/// A phase's outcome as the report holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseOutcome {
    Ran {
        #[serde(flatten)]
        phase: Box<Phase>,
        /// Largest device memory in use while the phase ran (CUDA: `nvidia-smi`, the whole
        /// device).
        peak_gpu_memory_mb: Option<f64>,
        seconds: f64,
    },
    /// The backend has no such precision.
    Skipped {
        reason: String,
    },
    Failed {
        error: String,
    },
}

/// `DIR/report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub device: String,
    pub gpu: Option<String>,
    pub shapes: Shapes,
    pub phases: std::collections::BTreeMap<String, PhaseOutcome>,
    pub pass: bool,
    pub seconds: f64,
}

pub fn run(args: &GpuCheckArgs) -> Result<(), CliError> {
    let spec: DeviceSpec = args.device.parse()?;
    let shapes = args.shapes.unwrap_or(match spec {
        DeviceSpec::Cuda(_) | DeviceSpec::Wgpu(_) => Shapes::Paper,
        DeviceSpec::NdArray | DeviceSpec::Flex => Shapes::Tiny,
    });
    if args.steps == 0 || args.batch == Some(0) || args.decode_tokens == 0 {
        return Err(CliError::Usage(
            "--steps, --batch and --decode-tokens must be at least 1".into(),
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| output_err(&args.out, e))?;
    match args.phase {
        Some(p) => run_phase(args, spec, shapes, p),
        None => run_all(args, spec, shapes),
    }
}

fn output_err(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).expect("json");
    og_segment::write_atomic(path, text.as_bytes()).map_err(|e| output_err(path, e))
}

fn phase_path(out: &Path, p: PhasePrecision) -> PathBuf {
    out.join(format!("phase-{}.json", p.name()))
}

/// The parent: one child process per precision, then the report.
fn run_all(args: &GpuCheckArgs, spec: DeviceSpec, shapes: Shapes) -> Result<(), CliError> {
    let started = Instant::now();
    let gpu_index = match spec {
        DeviceSpec::Cuda(i) => Some(i),
        _ => None,
    };
    let gpu = gpu_index.and_then(gpu_name);
    let exe = std::env::current_exe().map_err(|e| CliError::Usage(e.to_string()))?;
    // The first phase writes the parity model afresh (a stale one could be of other sizes).
    let base = args.out.join("parity-base");
    if base.exists() {
        std::fs::remove_dir_all(&base).map_err(|e| output_err(&base, e))?;
    }
    let mut phases = std::collections::BTreeMap::new();
    for p in [PhasePrecision::F32, PhasePrecision::Bf16] {
        eprintln!("gpu-check: {} phase on {}", p.name(), args.device);
        let child = Child {
            args,
            exe: &exe,
            shapes,
            gpu_index,
            peak: peak_tflops(args.peak_tflops, gpu.as_deref(), p),
        };
        phases.insert(p.name().to_string(), child.run(p));
    }
    let pass = phases.values().all(|o| match o {
        PhaseOutcome::Ran { phase, .. } => phase.pass(),
        PhaseOutcome::Skipped { .. } => true,
        PhaseOutcome::Failed { .. } => false,
    }) && phases
        .values()
        .any(|o| matches!(o, PhaseOutcome::Ran { .. }));
    let report = Report {
        device: args.device.clone(),
        gpu,
        shapes,
        phases,
        pass,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&args.out.join("report.json"), &report)?;
    let md = markdown(&report);
    let md_path = args.out.join("report.md");
    og_segment::write_atomic(&md_path, md.as_bytes()).map_err(|e| output_err(&md_path, e))?;
    println!("{md}");
    if pass {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "gpu-check failed (see {})",
            args.out.join("report.json").display()
        )))
    }
}

/// How the parent starts a phase's process.
struct Child<'a> {
    args: &'a GpuCheckArgs,
    exe: &'a Path,
    shapes: Shapes,
    gpu_index: Option<usize>,
    peak: Option<f64>,
}

impl Child<'_> {
    /// Runs phase `p` in a process of its own (polling the GPU's memory meanwhile) and reads
    /// what it wrote.
    fn run(&self, p: PhasePrecision) -> PhaseOutcome {
        let args = self.args;
        let path = phase_path(&args.out, p);
        let _ = std::fs::remove_file(&path);
        let t = Instant::now();
        let mut cmd = Command::new(self.exe);
        cmd.args(["gpu-check", "--device", &args.device])
            .args(["--shapes", self.shapes.name()])
            .args(["--steps", &args.steps.to_string()])
            .args(["--decode-tokens", &args.decode_tokens.to_string()])
            .arg("--out")
            .arg(&args.out)
            .args(["--phase", p.name()]);
        if let Some(b) = args.batch {
            cmd.args(["--batch", &b.to_string()]);
        }
        if let Some(peak) = self.peak {
            cmd.args(["--peak-tflops", &peak.to_string()]);
        }
        let (status, gpu_peak) = with_gpu_memory_poll(self.gpu_index, || cmd.status());
        let seconds = t.elapsed().as_secs_f64();
        match (status, std::fs::read_to_string(&path)) {
            (Ok(s), Ok(text)) if s.success() => match serde_json::from_str::<PhaseFile>(&text) {
                Ok(PhaseFile::Skipped { reason }) => PhaseOutcome::Skipped { reason },
                Ok(PhaseFile::Ran(phase)) => PhaseOutcome::Ran {
                    phase,
                    peak_gpu_memory_mb: gpu_peak,
                    seconds,
                },
                Err(e) => PhaseOutcome::Failed {
                    error: format!("{}: {e}", path.display()),
                },
            },
            (Ok(s), _) => PhaseOutcome::Failed {
                error: format!(
                    "the {} phase exited with {s} (its error is above)",
                    p.name()
                ),
            },
            (Err(e), _) => PhaseOutcome::Failed {
                error: format!("could not start {}: {e}", self.exe.display()),
            },
        }
    }
}

/// What a phase process writes.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PhaseFile {
    Ran(Box<Phase>),
    Skipped { reason: String },
}

/// The device's name from `nvidia-smi`, if it answers.
fn gpu_name(index: usize) -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .args(["-i", &index.to_string()])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// The dense peak for MFU: the flag, else the datasheet figure of a known NVIDIA GPU (bf16
/// tensor cores; plain f32 for the f32 phase).
fn peak_tflops(flag: Option<f64>, gpu: Option<&str>, p: PhasePrecision) -> Option<f64> {
    if flag.is_some() {
        return flag;
    }
    let gpu = gpu?.to_ascii_uppercase();
    // (name fragment, bf16 dense, f32) in TFLOP/s, SXM parts.
    const KNOWN: [(&str, f64, f64); 4] = [
        ("H200", 989.4, 66.9),
        ("H100", 989.4, 66.9),
        ("A100", 312.0, 19.5),
        ("L40S", 362.1, 91.6),
    ];
    KNOWN
        .iter()
        .find(|(n, ..)| gpu.contains(n))
        .map(|k| match p {
            PhasePrecision::Bf16 => k.1,
            PhasePrecision::F32 => k.2,
        })
}

/// Runs `f` while a thread polls the device's memory in use (every quarter second); returns
/// `f`'s result and the largest reading in MiB.
fn with_gpu_memory_poll<T>(index: Option<usize>, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let Some(index) = index else {
        return (f(), None);
    };
    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let seen = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(mb) = gpu_memory_used(index) {
                    peak.fetch_max(mb, Ordering::Relaxed);
                    seen.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        r
    });
    let mb = seen
        .load(Ordering::Relaxed)
        .then(|| peak.load(Ordering::Relaxed) as f64);
    (result, mb)
}

fn gpu_memory_used(index: usize) -> Option<u64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .args(["-i", &index.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A child: one precision, written to `DIR/phase-PRECISION.json`.
fn run_phase(
    args: &GpuCheckArgs,
    spec: DeviceSpec,
    shapes: Shapes,
    precision: PhasePrecision,
) -> Result<(), CliError> {
    let base = args.out.join("parity-base");
    if !base.join("og_llava_parity.json").is_file() {
        og_llava::dispatch(DeviceSpec::NdArray, WriteBase { dir: &base })??;
    }
    eprintln!("gpu-check: reference (ndarray, f32)");
    let reference = og_llava::dispatch(
        DeviceSpec::NdArray,
        Measure {
            base: &base,
            precision: PhasePrecision::F32,
        },
    )??;
    let path = phase_path(&args.out, precision);
    let task = DevicePhase {
        base: &base,
        precision,
        shapes,
        batch: args.batch.unwrap_or(match shapes {
            Shapes::Tiny => 2,
            Shapes::Paper => 4,
        }),
        steps: args.steps,
        decode_tokens: args.decode_tokens,
        peak_tflops: args.peak_tflops,
    };
    let file = match og_llava::dispatch(spec, task)?? {
        DeviceOutcome::Skipped(reason) => PhaseFile::Skipped { reason },
        DeviceOutcome::Ran(m) => {
            let m = *m;
            let phase = Phase {
                precision,
                backend: m.backend.clone(),
                device_check: m.probe.clone(),
                parity: compare_outputs(&m.outputs, &reference, precision),
                sft_step: compare_step(&m.outputs, &reference, precision),
                throughput: m.throughput,
                peak_rss_mb: peak_rss_mb(),
            };
            PhaseFile::Ran(Box::new(phase))
        }
    };
    write_json(&path, &file)
}

/// The process's peak resident set (`VmHWM`), Linux only.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The parity model's sizes: small, but every part present (2 layers each, grouped-query
/// attention, a 4×4 patch grid).
fn parity_configs() -> (ClipVisionConfig, LlamaConfig) {
    let vision = ClipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        image_size: 56,
        patch_size: 14,
        ..ClipVisionConfig::default()
    };
    let llm = LlamaConfig {
        vocab_size: 128,
        hidden_size: 64,
        intermediate_size: 128,
        head_dim: 16,
        ..LlamaConfig::tiny()
    };
    (vision, llm)
}

fn parity_lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::paper()
    }
}

/// Writes the parity model (seeded random weights, f32) for both sides to load.
struct WriteBase<'a> {
    dir: &'a Path,
}

impl BackendTask for WriteBase<'_> {
    type Output = Result<(), CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let (vcfg, lcfg) = parity_configs();
        let dir = self.dir;
        B::seed(&device, 0x0c4e_c7ed);
        vcfg.init::<B>(&device)?
            .save_pretrained(dir.join("vision"), &vcfg)?;
        lcfg.init::<B>(&device)?
            .save_pretrained(dir.join("llm"), &lcfg)?;
        let mut model =
            OgLlava::<B>::from_parts(dir.join("vision"), dir.join("llm"), None, -2, &device)?;
        model.llm = model.llm.with_lora(&parity_lora())?;
        model.initialise();
        model
            .connector
            .save_safetensors(dir.join("connector.safetensors"))?;
        model
            .llm
            .save_peft_adapter(dir.join("adapter"), &parity_lora(), "gpu-check")?;
        write_json(&dir.join("og_llava_parity.json"), &serde_json::json!({}))
    }
}

/// The parity outputs of one side, on the host.
#[derive(Debug, Clone)]
struct Outputs {
    vision: Vec<f32>,
    llm: Vec<f32>,
    llava_path: Vec<f32>,
    og_path: Vec<f32>,
    loss: f64,
    grad_norm: f64,
}

/// The parity outputs on one device (the reference runs it in f32 on NdArray).
struct Measure<'a> {
    base: &'a Path,
    precision: PhasePrecision,
}

impl BackendTask for Measure<'_> {
    type Output = Result<Outputs, CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        self.precision
            .precision()
            .apply::<Autodiff<B>>(std::slice::from_ref(&device))?;
        measure::<Autodiff<B>>(self.base, &device)
    }
}

fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .expect("f32 after the cast")
}

fn measure<B: AutodiffBackend>(base: &Path, device: &B::Device) -> Result<Outputs, CliError> {
    let mut model =
        OgLlava::<B>::from_parts(base.join("vision"), base.join("llm"), None, -2, device)?;
    model.connector = model
        .connector
        .load_safetensors(base.join("connector.safetensors"))?;
    model.llm = model.llm.load_peft_adapter(base.join("adapter"))?;
    let mut model = freeze_for(model, Stage::Sft);
    let (vcfg, _) = parity_configs();
    let s = vcfg.image_size;
    let pixels = Tensor::<B, 4>::from_data(
        TensorData::new(og_llava::host_values(&mut 7, 3 * s * s, 4.0), [1, 3, s, s]),
        device,
    );
    let grid = vcfg.grid();
    // Two overlapping groups: the left three columns and the right two.
    let group = |k: usize, keep: &dyn Fn(usize) -> bool| Group {
        source: GroupSource::Mask(k),
        indices: (0..grid * grid)
            .filter(|i| keep(i % grid))
            .map(|i| i as u32)
            .collect(),
    };
    let selection = Selection {
        grid: (grid, grid),
        groups: vec![group(0, &|c| c < 3), group(1, &|c| c >= 2)],
        per_mask: Vec::new(),
    };
    let text: Vec<u32> = (0..12).map(|i| 3 + (i * 37) % 120).collect();
    let with_image: Vec<u32> = [1, ORIGINAL_IMAGE_TOKEN]
        .into_iter()
        .chain(text.iter().copied())
        .collect();
    let llava = OgLlavaInput::with_image(with_image.clone(), pixels.clone(), None);
    let og = OgLlavaInput::with_image(with_image, pixels.clone(), Some(selection));

    let vision = to_host(model.vision.features(pixels)?);
    let positions = vec![(0..text.len() as i64).collect::<Vec<_>>()];
    let llm = to_host(model.llm.forward(
        model.llm.embed(std::slice::from_ref(&text))?,
        &positions,
        None,
        None,
    )?);
    let llava_path = to_host(model.forward(std::slice::from_ref(&llava))?.0);
    let og_path = to_host(model.forward(std::slice::from_ref(&og))?.0);

    // The SFT step: the second half of each prompt's text is the answer.
    let inputs = [llava, og];
    let flags: Vec<Vec<bool>> = inputs
        .iter()
        .map(|inp| {
            let n = inp.token_ids.len();
            (0..n).map(|j| j >= n / 2).collect()
        })
        .collect();
    let (loss, grad_norm) = sft_step(&mut model, &inputs, &flags, &mut OptimState::default())?;
    Ok(Outputs {
        vision,
        llm,
        llava_path,
        og_path,
        loss,
        grad_norm,
    })
}

/// One SFT step; returns the loss and the global gradient norm before clipping.
fn sft_step<B: AutodiffBackend>(
    model: &mut OgLlava<B>,
    inputs: &[OgLlavaInput<B>],
    flags: &[Vec<bool>],
    state: &mut OptimState<B::InnerBackend>,
) -> Result<(f64, f64), CliError> {
    let (sum, n) = model.loss_sum(inputs, flags)?;
    let loss = sum / n.max(1) as f64;
    let value = to_host(loss.clone())[0] as f64;
    let grads = loss.backward();
    let grads = grads_by_name::<B>(&trainables(model, Stage::Sft), &grads);
    let report = AdamW::default().step::<B>(
        trainables(model, Stage::Sft),
        grads,
        state,
        |_| 1e-4,
        Some(1.0),
    );
    Ok((value, report.grad_norm))
}

fn compare_outputs(dev: &Outputs, reference: &Outputs, p: PhasePrecision) -> Vec<Comparison> {
    [
        ("vision features", &dev.vision, &reference.vision),
        ("llm logits", &dev.llm, &reference.llm),
        ("llava path logits", &dev.llava_path, &reference.llava_path),
        ("og path logits", &dev.og_path, &reference.og_path),
    ]
    .into_iter()
    .map(|(name, a, b)| {
        let ref_max = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        let diff = if a.len() == b.len() {
            a.iter()
                .zip(b.iter())
                .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
        } else {
            f64::INFINITY
        };
        let tolerance = p.tolerance(ref_max);
        Comparison {
            name: name.into(),
            max_abs_diff: diff,
            reference_max_abs: ref_max,
            tolerance,
            pass: diff <= tolerance,
        }
    })
    .collect()
}

fn compare_step(dev: &Outputs, reference: &Outputs, p: PhasePrecision) -> StepCheck {
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    let tol = p.step_tolerance();
    StepCheck {
        loss: dev.loss,
        loss_reference: reference.loss,
        grad_norm: dev.grad_norm,
        grad_norm_reference: reference.grad_norm,
        relative_tolerance: tol,
        pass: rel(dev.loss, reference.loss) <= tol
            && rel(dev.grad_norm, reference.grad_norm) <= tol,
    }
}

/// The device's part of a phase.
struct DevicePhase<'a> {
    base: &'a Path,
    precision: PhasePrecision,
    shapes: Shapes,
    batch: usize,
    steps: usize,
    decode_tokens: usize,
    peak_tflops: Option<f64>,
}

enum DeviceOutcome {
    Ran(Box<DeviceMeasured>),
    Skipped(String),
}

struct DeviceMeasured {
    backend: String,
    probe: Option<Probe>,
    outputs: Outputs,
    throughput: Throughput,
}

impl BackendTask for DevicePhase<'_> {
    type Output = Result<DeviceOutcome, CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let precision = self.precision.precision();
        if let Err(e) = precision.resolve::<B>(&device) {
            return Ok(DeviceOutcome::Skipped(e.to_string()));
        }
        precision.apply::<Autodiff<B>>(std::slice::from_ref(&device))?;
        let backend = B::name(&device);
        eprintln!("gpu-check: parity and one SFT step on {backend}");
        let outputs = measure::<Autodiff<B>>(self.base, &device)?;
        // The probe builds its tensors from f32 host data: f32 phase only.
        let probe = (self.precision == PhasePrecision::F32).then(|| {
            let r = ConnectorProbe {
                grid: 24,
                vision_hidden_size: 1024,
                text_hidden_size: self.shapes.llm().hidden_size,
                iterations: 3,
            }
            .run::<B>(device.clone());
            Probe {
                shape: r.shape,
                mean: r.mean,
                median_ms: r.median_ms,
            }
        });
        eprintln!(
            "gpu-check: throughput at {} shapes, batch {}",
            self.shapes.name(),
            self.batch
        );
        let throughput = throughput::<Autodiff<B>>(&self, &device)?;
        Ok(DeviceOutcome::Ran(Box::new(DeviceMeasured {
            backend,
            probe,
            outputs,
            throughput,
        })))
    }
}

/// Model FLOPs of one training step: the frozen tower's forward (2 per parameter per patch
/// token, class token included), and the decoder's forward plus its input-gradient backward
/// through frozen weights (4 per parameter per token, embeddings excluded). Attention scores,
/// LoRA's own products and the head (run on supervised tokens only) are left out, so the MFU
/// is a slight underestimate.
fn model_flops(vision_params: usize, decoder_params: usize, patches: usize, tokens: usize) -> f64 {
    2.0 * vision_params as f64 * (patches + 1) as f64 + 4.0 * decoder_params as f64 * tokens as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput<B: AutodiffBackend>(
    task: &DevicePhase<'_>,
    device: &B::Device,
) -> Result<Throughput, CliError> {
    let (vcfg, lcfg) = (task.shapes.vision(), task.shapes.llm());
    let vision = vcfg.init::<B>(device)?;
    let llm = lcfg.init::<B>(device)?.with_lora(&task.shapes.lora())?;
    let connector = OgFusionConfig::new(vcfg.hidden_size, lcfg.hidden_size).init::<B>(device);
    let vision_params = vision.num_params();
    let decoder_params = llm.num_params() - lcfg.vocab_size * lcfg.hidden_size;
    let mut model = freeze_for(
        OgLlava {
            vision,
            connector,
            llm,
            image_token_id: ORIGINAL_IMAGE_TOKEN,
            segment_rope: false,
            image: ImageSettings::default(),
        },
        Stage::Sft,
    );
    let (v, s) = (vcfg.num_patches(), vcfg.image_size);
    // As many text tokens as visual tokens (the image token is replaced by V of them).
    let text = v;
    let vocab = lcfg.vocab_size as u32;
    let inputs: Vec<OgLlavaInput<B>> = (0..task.batch)
        .map(|b| {
            let ids: Vec<u32> = std::iter::once(ORIGINAL_IMAGE_TOKEN)
                .chain((0..text as u32).map(|i| (7 + i * 31 + b as u32 * 101) % vocab))
                .collect();
            let pixels = Tensor::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), device);
            OgLlavaInput::with_image(ids, pixels, None)
        })
        .collect();
    let flags: Vec<Vec<bool>> = inputs
        .iter()
        .map(|inp| (0..inp.token_ids.len()).map(|j| j > text / 2).collect())
        .collect();
    let mut state = OptimState::default();
    sft_step(&mut model, &inputs, &flags, &mut state)?;
    let mut times = Vec::with_capacity(task.steps);
    for _ in 0..task.steps {
        let t = Instant::now();
        sft_step(&mut model, &inputs, &flags, &mut state)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let step_s = median(times);
    let tokens = task.batch * (v + text);
    let flops = task.batch as f64 * model_flops(vision_params, decoder_params, v, v + text);
    let model_tflops = flops / step_s / 1e12;
    let (prefill_s, decode_tps) =
        generation_speed(&model.llm.valid(), v + text, task.decode_tokens)?;
    Ok(Throughput {
        shapes: task.shapes,
        batch: task.batch,
        tokens_per_step: tokens,
        step_s,
        train_tokens_per_s: tokens as f64 / step_s,
        model_tflops,
        peak_tflops: task.peak_tflops,
        mfu: task.peak_tflops.map(|p| model_tflops / p),
        prefill_tokens: v + text,
        prefill_tokens_per_s: (v + text) as f64 / prefill_s,
        decode_tokens_per_s: decode_tps,
    })
}

/// Prefill seconds for a `prompt`-token prompt (median of three after a warm-up) and greedy
/// decode tokens/s with the KV cache, batch 1.
fn generation_speed<B: Backend>(
    llm: &og_llava::og_llm::LlamaForCausalLM<B>,
    prompt: usize,
    new: usize,
) -> Result<(f64, f64), CliError> {
    let vocab = llm.vocab_size() as u32;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| (3 + i * 7) % vocab).collect();
    let step = |cache: &mut KvCache<B>, tokens: &[u32], start: usize| -> Result<u32, CliError> {
        let pos = vec![(start as i64..(start + tokens.len()) as i64).collect()];
        let logits = llm.forward(llm.embed(&[tokens.to_vec()])?, &pos, None, Some(cache))?;
        let [_, t, v] = logits.dims();
        let next = logits.slice([0..1, t - 1..t, 0..v]).argmax(2);
        Ok(next
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("ids")[0] as u32)
    };
    step(&mut KvCache::new(llm.num_layers()), &ids, 0)?;
    let mut prefills = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        step(&mut KvCache::new(llm.num_layers()), &ids, 0)?;
        prefills.push(t.elapsed().as_secs_f64());
    }
    let mut cache = KvCache::new(llm.num_layers());
    let mut next = step(&mut cache, &ids, 0)?;
    let t = Instant::now();
    for i in 0..new {
        next = step(&mut cache, &[next % vocab], prompt + i)?;
    }
    Ok((median(prefills), new as f64 / t.elapsed().as_secs_f64()))
}

/// The report as a markdown summary.
fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# gpu-check: {}{} — {}\n\nShapes: {}; {:.0} s in all.\n",
        r.device,
        r.gpu
            .as_deref()
            .map(|g| format!(" ({g})"))
            .unwrap_or_default(),
        if r.pass { "PASS" } else { "FAIL" },
        r.shapes.name(),
        r.seconds
    );
    let in_order = [PhasePrecision::F32, PhasePrecision::Bf16]
        .into_iter()
        .filter_map(|p| r.phases.get(p.name()).map(|o| (p.name(), o)));
    for (name, outcome) in in_order {
        s += &format!("\n## {name}\n\n");
        match outcome {
            PhaseOutcome::Skipped { reason } => s += &format!("Skipped: {reason}\n"),
            PhaseOutcome::Failed { error } => s += &format!("**Failed**: {error}\n"),
            PhaseOutcome::Ran {
                phase,
                peak_gpu_memory_mb,
                seconds,
            } => s += &phase_markdown(phase, *peak_gpu_memory_mb, *seconds),
        }
    }
    s
}

fn phase_markdown(p: &Phase, gpu_mb: Option<f64>, seconds: f64) -> String {
    let mut s = format!("Backend {}, {seconds:.0} s.\n\n", p.backend);
    s += "| check | max abs diff | tolerance | result |\n|---|---|---|---|\n";
    for c in &p.parity {
        s += &format!(
            "| {} | {:.3e} | {:.3e} | {} |\n",
            c.name,
            c.max_abs_diff,
            c.tolerance,
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    let st = &p.sft_step;
    s += &format!(
        "| SFT step loss {:.6} (ref {:.6}), grad norm {:.6} (ref {:.6}) | | rel {:.0e} | {} |\n\n",
        st.loss,
        st.loss_reference,
        st.grad_norm,
        st.grad_norm_reference,
        st.relative_tolerance,
        if st.pass { "pass" } else { "FAIL" }
    );
    let t = &p.throughput;
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "–".into());
    s += "| throughput | value |\n|---|---|\n";
    s += &format!(
        "| training step (batch {}, {} tokens) | {:.3} s |\n",
        t.batch, t.tokens_per_step, t.step_s
    );
    s += &format!("| training tokens/s | {:.0} |\n", t.train_tokens_per_s);
    s += &format!("| model TFLOP/s | {:.4} |\n", t.model_tflops);
    s += &format!(
        "| MFU | {} |\n",
        opt(t.mfu, &|m| format!(
            "{:.1}% of {:.0}",
            m * 100.0,
            t.peak_tflops.unwrap_or(0.0)
        ))
    );
    s += &format!(
        "| prefill ({} tokens) tokens/s | {:.0} |\n",
        t.prefill_tokens, t.prefill_tokens_per_s
    );
    s += &format!("| decode tokens/s | {:.1} |\n", t.decode_tokens_per_s);
    s += &format!(
        "| peak GPU memory | {} |\n",
        opt(gpu_mb, &|m| format!("{m:.0} MiB"))
    );
    s += &format!(
        "| peak process RSS | {} |\n",
        opt(p.peak_rss_mb, &|m| format!("{m:.0} MiB"))
    );
    if let Some(probe) = &p.device_check {
        s += &format!(
            "| device-check connector {:?} | {:.1} ms |\n",
            probe.shape, probe.median_ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(shift: f32) -> Outputs {
        Outputs {
            vision: vec![1.0, -2.0 + shift],
            llm: vec![0.5],
            llava_path: vec![3.0],
            og_path: vec![3.0, 1.0],
            loss: 2.0,
            grad_norm: 1.0 + shift as f64,
        }
    }

    #[test]
    fn differences_beyond_the_tolerance_fail() {
        let reference = outputs(0.0);
        let close = compare_outputs(&outputs(5e-4), &reference, PhasePrecision::F32);
        assert!(close.iter().all(|c| c.pass));
        let far = compare_outputs(&outputs(2e-3), &reference, PhasePrecision::F32);
        assert!(!far[0].pass && far[1].pass);
        assert!((far[0].max_abs_diff - 2e-3).abs() < 1e-6);
        // bf16: 5% of the reference's largest magnitude (2.0 → 0.1).
        assert!(compare_outputs(&outputs(0.09), &reference, PhasePrecision::Bf16)[0].pass);
        assert!(!compare_outputs(&outputs(0.11), &reference, PhasePrecision::Bf16)[0].pass);
        // Outputs of another shape never pass.
        let mut short = outputs(0.0);
        short.og_path.pop();
        assert!(!compare_outputs(&short, &reference, PhasePrecision::Bf16)[3].pass);
        assert!(!compare_step(&outputs(0.01), &reference, PhasePrecision::F32).pass);
        assert!(compare_step(&outputs(0.01), &reference, PhasePrecision::Bf16).pass);
    }

    #[test]
    fn peaks_come_from_the_flag_or_a_known_gpu() {
        let f32 = PhasePrecision::F32;
        assert_eq!(
            peak_tflops(Some(10.0), Some("NVIDIA H100"), f32),
            Some(10.0)
        );
        assert_eq!(
            peak_tflops(None, Some("NVIDIA H100 80GB HBM3"), PhasePrecision::Bf16),
            Some(989.4)
        );
        assert_eq!(
            peak_tflops(None, Some("NVIDIA A100-SXM4-80GB"), f32),
            Some(19.5)
        );
        assert_eq!(peak_tflops(None, Some("Some GPU"), f32), None);
        assert_eq!(peak_tflops(None, None, f32), None);
    }

    #[test]
    fn model_flops_count_the_frozen_tower_forward_and_the_decoder_both_ways() {
        // 2·10·(4+1) + 4·100·8
        assert_eq!(model_flops(10, 100, 4, 8), 100.0 + 3200.0);
    }
}
