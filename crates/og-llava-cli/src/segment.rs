//! `og-llava segment`: masks for one image or a whole image folder, and the segmenter flags
//! `ask` and `eval` share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use og_llava::{BackendTask, DeviceSpec, dispatch};
use og_sam2::{AmgConfig, Sam2Model, Sam2Segmenter};
use og_segment::{CountsFormat, Felzenszwalb, FelzenszwalbConfig, MaskSet, Segmenter};

use crate::progress::Progress;
use crate::{CliError, DeviceArgs};

/// The segmenters this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SegmenterKind {
    /// Felzenszwalb–Huttenlocher graph segmentation (scikit-image's `felzenszwalb`): no
    /// weights; a partition of the image.
    Felzenszwalb,
    /// SAM 2's automatic mask generator (the masks the paper trains with): weights from
    /// --sam, a transformers `Sam2Model` folder or an original `sam2.1_hiera_*.pt`.
    Sam2,
}

/// A segmenter and its parameters, as flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SegmenterArgs {
    /// The segmenter (`segment`: felzenszwalb when not given; `ask`, `eval`, `tokens`: segment
    /// each image on the fly, instead of reading mask files).
    #[arg(long, value_enum)]
    pub segmenter: Option<SegmenterKind>,
    /// Felzenszwalb's observation scale k: higher gives fewer, larger segments.
    #[arg(long, default_value_t = 500.0)]
    pub scale: f64,
    /// Felzenszwalb's Gaussian pre-smoothing, in pixels (0: none).
    #[arg(long, default_value_t = 0.8)]
    pub sigma: f64,
    /// Felzenszwalb's smallest segment, in pixels (smaller ones join a neighbour).
    #[arg(long, default_value_t = 200)]
    pub min_size: usize,
    /// The largest image segmented, in pixels.
    #[arg(long, default_value_t = FelzenszwalbConfig::default().max_pixels)]
    pub max_pixels: usize,
    /// SAM 2 weights: a transformers `Sam2Model` folder, or an original `.pt` checkpoint (its
    /// model from a `config.json` beside it, else the released model its shapes match).
    #[arg(long)]
    pub sam: Option<PathBuf>,
    #[command(flatten)]
    pub amg: AmgArgs,
}

/// The automatic mask generator's settings (defaults: the released OG-LLaVA configuration).
#[derive(clap::Args, Debug, Clone)]
pub struct AmgArgs {
    /// SAM 2: points along each side of the prompt grid.
    #[arg(long, default_value_t = AmgConfig::default().points_per_side)]
    pub points_per_side: usize,
    /// SAM 2: point prompts decoded together (memory against speed; masks do not change).
    #[arg(long, default_value_t = AmgConfig::default().points_per_batch)]
    pub points_per_batch: usize,
    /// SAM 2: keep masks whose predicted IoU is above this.
    #[arg(long, default_value_t = AmgConfig::default().pred_iou_thresh)]
    pub pred_iou_thresh: f32,
    /// SAM 2: keep masks whose stability score is at least this.
    #[arg(long, default_value_t = AmgConfig::default().stability_score_thresh)]
    pub stability_score_thresh: f32,
    /// SAM 2: box NMS threshold between masks.
    #[arg(long, default_value_t = AmgConfig::default().box_nms_thresh)]
    pub box_nms_thresh: f32,
    /// SAM 2: crop layers (layer i segments (2^i)² overlapping crops too).
    #[arg(long, default_value_t = AmgConfig::default().crop_n_layers)]
    pub crop_n_layers: usize,
    /// SAM 2: remove holes and islands smaller than this many pixels from each mask (0: off).
    #[arg(long, default_value_t = AmgConfig::default().min_mask_region_area)]
    pub min_mask_region_area: usize,
}

impl AmgArgs {
    fn config(&self, max_pixels: usize) -> AmgConfig {
        AmgConfig {
            points_per_side: self.points_per_side,
            points_per_batch: self.points_per_batch,
            pred_iou_thresh: self.pred_iou_thresh,
            stability_score_thresh: self.stability_score_thresh,
            box_nms_thresh: self.box_nms_thresh,
            crop_n_layers: self.crop_n_layers,
            min_mask_region_area: self.min_mask_region_area,
            max_pixels,
            ..AmgConfig::default()
        }
    }
}

/// Loads SAM 2 on the chosen backend.
struct LoadSam2<'a> {
    weights: &'a Path,
    config: AmgConfig,
    /// Show a progress line over each image's point batches.
    progress: bool,
}

impl BackendTask for LoadSam2<'_> {
    type Output = Result<Box<dyn Segmenter + Send>, CliError>;

    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Self::Output {
        let model = Sam2Model::<B>::open(self.weights, &device)?;
        let progress = self.progress.then(|| {
            let mut line = Progress::new("sam2", "point batches");
            Box::new(move |done, total| line.show(done, total))
                as Box<dyn FnMut(usize, usize) + Send>
        });
        Ok(Box::new(Sam2Segmenter {
            model,
            config: self.config,
            progress,
        }))
    }
}

impl SegmenterArgs {
    /// The Felzenszwalb parameters of these flags, checked.
    pub fn felzenszwalb(&self) -> Result<FelzenszwalbConfig, CliError> {
        let config = FelzenszwalbConfig {
            scale: self.scale,
            sigma: self.sigma,
            min_size: self.min_size,
            max_pixels: self.max_pixels,
        };
        config
            .validate()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(config)
    }

    /// The segmenter, its parameters checked (SAM 2 loaded on `device`; `progress`: a progress
    /// line over each image's point batches).
    pub fn build(
        &self,
        device: DeviceSpec,
        progress: bool,
    ) -> Result<Box<dyn Segmenter + Send>, CliError> {
        match self.kind() {
            SegmenterKind::Felzenszwalb => Ok(Box::new(Felzenszwalb {
                config: self.felzenszwalb()?,
            })),
            SegmenterKind::Sam2 => {
                let weights = self.sam.as_deref().ok_or_else(|| {
                    CliError::Usage(
                        "--segmenter sam2 needs --sam: a transformers Sam2Model folder or an \
                         original sam2.1_hiera_*.pt checkpoint"
                            .into(),
                    )
                })?;
                let config = self.amg.config(self.max_pixels);
                dispatch(
                    device,
                    LoadSam2 {
                        weights,
                        config,
                        progress,
                    },
                )?
            }
        }
    }

    /// What an evaluation records about SAM 2: its weights and generator settings.
    pub fn describe_sam2(&self) -> serde_json::Value {
        serde_json::json!({ "sam2": { "weights": self.sam, "generator": self.amg.config(self.max_pixels) } })
    }

    /// The segmenter these flags choose.
    pub fn kind(&self) -> SegmenterKind {
        self.segmenter.unwrap_or(SegmenterKind::Felzenszwalb)
    }

    /// Segments one decoded image.
    pub fn segment(
        &self,
        image: &og_vision::RgbImage,
        device: DeviceSpec,
    ) -> Result<MaskSet, CliError> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        Ok(self.build(device, true)?.segment(image.as_raw(), w, h)?)
    }
}

#[derive(clap::Args)]
pub struct SegmentArgs {
    /// One image; --out is then the mask file (COCO RLE JSON).
    #[arg(long, conflicts_with = "images", required_unless_present = "images")]
    image: Option<PathBuf>,
    /// A folder of images (searched recursively); --out is then a folder that mirrors it, one
    /// `<name>.json` per image (the layout `train`'s data.masks and `eval --masks` read).
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    segmenter: SegmenterArgs,
    /// Where SAM 2 runs.
    #[command(flatten)]
    device: DeviceArgs,
    /// Images segmented at once (default: every core for Felzenszwalb, one for SAM 2, whose
    /// tensor operations use every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Segment again images whose mask file exists (default: they are skipped, so an
    /// interrupted run resumes).
    #[arg(long)]
    overwrite: bool,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

pub fn run(a: &SegmentArgs) -> Result<(), CliError> {
    let device = a.device.spec()?;
    match (&a.image, &a.images) {
        (Some(image), _) => {
            let mut segmenter = a.segmenter.build(device, true)?;
            let t = std::time::Instant::now();
            let n = segment_file(image, &a.out, segmenter.as_mut())?;
            eprintln!(
                "{n} masks for {} in {:.2} s -> {}",
                image.display(),
                t.elapsed().as_secs_f64(),
                a.out.display()
            );
            Ok(())
        }
        (None, Some(dir)) => segment_folder(dir, a, device),
        (None, None) => Err(CliError::Usage("give --image or --images".into())),
    }
}

/// Segments `image` into the mask file `out` (written whole or not at all); returns the count.
fn segment_file(
    image: &Path,
    out: &Path,
    seg: &mut (dyn Segmenter + Send),
) -> Result<usize, CliError> {
    let rgb = og_vision::load_rgb(image)?;
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let masks = seg
        .segment(rgb.as_raw(), w, h)
        .map_err(|e| CliError::Usage(format!("{}: {e}", image.display())))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| CliError::Output {
            path: parent.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    masks.write_coco_json(out, CountsFormat::Compressed)?;
    Ok(masks.len())
}

/// Every image file under `dir`, relative to it, sorted.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| CliError::Output {
            path: d.clone(),
            message: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                found.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

fn segment_folder(dir: &Path, a: &SegmentArgs, device: DeviceSpec) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    let all = image_files(dir)?;
    if all.is_empty() {
        return Err(CliError::Usage(format!(
            "no images under {}",
            dir.display()
        )));
    }
    let out_of = |rel: &Path| a.out.join(rel).with_extension("json");
    let todo: Vec<PathBuf> = all
        .iter()
        .filter(|rel| a.overwrite || !out_of(rel).is_file())
        .cloned()
        .collect();
    let skipped = all.len() - todo.len();
    if skipped > 0 {
        eprintln!(
            "{skipped} of {} images already have masks (kept)",
            all.len()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = a
        .jobs
        .unwrap_or(match a.segmenter.kind() {
            SegmenterKind::Felzenszwalb => cores,
            SegmenterKind::Sam2 => 1,
        })
        .clamp(1, todo.len().max(1));
    // One segmenter per job (a SAM 2 model each), built before any image is touched.
    let segmenters = (0..jobs)
        .map(|_| a.segmenter.build(device, false).map(Mutex::new))
        .collect::<Result<Vec<_>, _>>()?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(skipped);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let masks = AtomicUsize::new(0);
    let progress = Arc::new(Mutex::new(Progress::new("segment", "images")));
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for segmenter in &segmenters {
            s.spawn(|| {
                let mut segmenter = segmenter.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(rel) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match segment_file(&dir.join(rel), &out_of(rel), segmenter.as_mut()) {
                        Ok(n) => {
                            masks.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(e.to_string()),
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .show(d, all.len());
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let ok = todo.len() - failures.len();
    eprintln!(
        "{ok} images segmented ({} masks) in {:.1} s with {jobs} jobs -> {}",
        masks.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        eprintln!("failed: {f}");
    }
    Err(CliError::Usage(format!(
        "{} of {} images could not be segmented (listed above); the others' masks are written",
        failures.len(),
        todo.len()
    )))
}
