//! The training loop: stages, accumulation, clipping, schedule, progress, metrics, atomic
//! checkpoints and exact resume.
//!
//! Output directory layout:
//! - `config.json` — the resolved configuration (a resumed run must match it);
//! - `metrics.jsonl` — one line per optimiser step (loss, learning rates, gradient norm,
//!   tokens/s, elapsed); `loss.svg` — the loss curve, rewritten at every checkpoint;
//! - `checkpoints/step-NNNNNNNN/` — resumable state: `trainable.safetensors` (every trainable
//!   tensor by name), `optimizer.safetensors` (AdamW moments by name), `state.json` (step,
//!   epoch, position in the epoch's order, skipped rows). Written under a temporary name and
//!   renamed, so a kill at any point leaves either the whole checkpoint or none;
//! - `final/` — the trained model in our checkpoint format (`OgLlava::load_checkpoint`).
//!
//! Determinism: the data order depends only on (seed, epoch), each example only on its row,
//! and the backend's RNG (LoRA dropout) is re-seeded from (seed, step) before every step —
//! so a run resumed from a checkpoint ends with the same weights, bit for bit on the CPU, as
//! one that never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use og_llava::{ImageInput, OgLlava, OgLlavaInput};
use serde::{Deserialize, Serialize};

use crate::autodiff;
use crate::checkpoint::write_checkpoint;
use crate::config::{Stage, TrainConfig};
use crate::data::{BadRows, Example, Loader, Preparer, epoch_order};
use crate::error::{Result, TrainError};
use crate::metrics::{Metrics, MetricsLog, write_loss_svg};
use crate::optim::{
    AdamW, Group, OptimState, StepReport, accumulate, grads_by_name, lr_at, trainables,
};
use crate::parallel::{Collective, Contribution};
use crate::setup;

/// How a run is driven (beyond its configuration).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest complete checkpoint in the output directory.
    pub resume: bool,
    /// Return after this many optimiser steps in total, as if the process were killed right
    /// then (used to test resume; checkpoints due up to that step are written).
    pub stop_after: Option<usize>,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// Draw LoRA dropout masks on the host from a stream per micro-batch, seeded by (seed,
    /// step, micro-batch), instead of from the backend's process-wide RNG (seeded per step).
    /// Replicas then draw the same masks whatever the thread scheduling and the number of
    /// replicas, so data-parallel runs with dropout are bit-reproducible. Cheap on the CPU
    /// backends; on a GPU every mask would cross the bus, so leave it off there.
    pub host_dropout: bool,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub examples: usize,
    pub supervised_tokens: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub bad_rows: BadRows,
    pub seconds: f64,
    pub output_dir: PathBuf,
}

/// Resumable position, saved in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TrainState {
    pub(crate) step: usize,
    pub(crate) epoch: usize,
    /// Next position in the epoch's order.
    pub(crate) position: usize,
    pub(crate) examples: usize,
    pub(crate) supervised_tokens: usize,
    pub(crate) first_loss: Option<f64>,
    pub(crate) last_loss: Option<f64>,
    pub(crate) bad_rows: BadRows,
    /// Replicas the run trains on.
    #[serde(default = "one")]
    pub(crate) world: usize,
    /// Rows a step consumes (`batch_size · grad_accumulation · world`): a run resumes on any
    /// replica count that keeps it. Absent in checkpoints written before it was recorded,
    /// which resume only on `world` replicas.
    #[serde(default)]
    pub(crate) step_rows: Option<usize>,
}

fn one() -> usize {
    1
}

/// Rows a step consumes on `world` replicas: `batch_size · grad_accumulation · world`.
fn step_rows(cfg: &TrainConfig, world: usize) -> usize {
    cfg.batch_size * cfg.grad_accumulation * world
}

/// A run's shape, which a resumed checkpoint must fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunSizes {
    /// Replicas in the whole run.
    pub(crate) world: usize,
    /// Rows a step consumes.
    pub(crate) step_rows: usize,
    pub(crate) total_steps: usize,
    /// Usable rows of the data.
    pub(crate) rows: usize,
}

/// What one optimiser step produced.
struct StepOutcome {
    loss: f64,
    grad_norm: f64,
    clip_coef: f64,
    tokens: usize,
    /// Examples the step trained on.
    examples: usize,
    times: StepTimes,
}

impl StepOutcome {
    fn non_finite(loss: f64, tokens: usize, examples: usize, times: StepTimes) -> Self {
        Self {
            loss,
            grad_norm: f64::NAN,
            clip_coef: 1.0,
            tokens,
            examples,
            times,
        }
    }
}

/// Seconds spent in each part of a step.
#[derive(Debug, Clone, Copy, Default)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

/// Counts the positions `loss_sum` supervises (its rule: a flagged non-image token that is not
/// the first of its sequence).
fn supervised(ex: &Example, image_token: u32) -> usize {
    ex.tokens
        .ids
        .iter()
        .zip(&ex.tokens.trainable)
        .skip(1)
        .filter(|(id, t)| **t && **id != image_token)
        .count()
}

/// Trains according to `cfg` on `device`.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
    opts: &RunOptions,
) -> Result<RunSummary> {
    train_parallel::<B>(
        cfg,
        std::slice::from_ref(device),
        &Collective::default(),
        opts,
    )
}

/// Every trainable parameter of `stage`: name and element count.
pub(crate) fn param_sizes<B: Backend>(
    model: &mut OgLlava<B>,
    stage: Stage,
) -> Vec<(String, usize)> {
    trainables(model, stage)
        .iter()
        .map(|t| (t.name.clone(), t.param.numel()))
        .collect()
}

/// Trains according to `cfg` data-parallel on `devices` (one replica each; see
/// [`crate::parallel`]), joined with other nodes when `collective` names them. A step takes
/// `batch_size · grad_accumulation` examples per replica. With one device and no other node
/// this is [`train`] and makes no collective call.
pub fn train_parallel<B: AutodiffBackend>(
    cfg: &TrainConfig,
    devices: &[B::Device],
    collective: &Collective,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let Some(device) = devices.first() else {
        return Err(TrainError::Invalid("no device to train on".into()));
    };
    cfg.precision
        .apply::<B>(devices)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let world = collective.world(devices.len());
    let writer = collective.writes_files();
    let started = Instant::now();
    let out = &cfg.output_dir;
    let (_lock, resume_from) = setup::prepare_output(cfg, opts, writer)?;
    let mut model = setup::build_model::<B>(cfg, device)?;
    let mut bad = BadRows::default();
    let preparer = setup::build_preparer(cfg, &model, &mut bad, device)?;
    let n_rows = preparer.rows.len();
    let per_step = step_rows(cfg, world);
    let total_steps = cfg
        .max_steps
        .unwrap_or(cfg.epochs * n_rows.div_ceil(per_step));

    let sizes = RunSizes {
        world,
        step_rows: per_step,
        total_steps,
        rows: n_rows,
    };
    let (mut state, optim, last_good) =
        start_state(cfg, opts, &resume_from, &mut model, sizes, bad, device)?;
    let resumed = resume_from.is_some();
    let mut book = Bookkeeping::open(cfg, opts, writer, resumed, &state, last_good, started)?;

    let mut replicas = replicate(model, optim, devices);
    let session = if world > 1 {
        Some(crate::parallel::Session::<B::InnerBackend>::start(
            devices, collective,
        )?)
    } else {
        None
    };
    let plan = StepPlan {
        cfg,
        total_steps,
        collective,
        local_devices: devices.len(),
        world,
        params: param_sizes(&mut replicas[0].model, cfg.stage),
        host_dropout: opts.host_dropout,
        opt: AdamW {
            beta1: cfg.adam_betas.0,
            beta2: cfg.adam_betas.1,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        },
    };

    // Without max_steps the run ends after `epochs` passes even if rows that turn out bad
    // only when decoded made the step estimate too high.
    while state.step < total_steps && (cfg.max_steps.is_some() || state.epoch < cfg.epochs) {
        let session = session.as_ref();
        match run_epoch(
            &plan,
            &mut replicas,
            session,
            &preparer,
            &mut state,
            &mut book,
        )? {
            EpochEnd::Exhausted => {}
            EpochEnd::Done => break,
            EpochEnd::Stopped => return Ok(summary(&state, total_steps, started, out)),
        }
    }
    drop(session);
    if writer {
        finish(&mut replicas[0].model, cfg, &state, opts.progress)?;
    }
    Ok(summary(&state, total_steps, started, out))
}

/// How an epoch's loop ended.
enum EpochEnd {
    /// Its rows are used up: the next epoch starts.
    Exhausted,
    /// The run's last step was taken.
    Done,
    /// [`RunOptions::stop_after`] was reached.
    Stopped,
}

/// Steps through the rest of `state`'s epoch (from its data position) until the epoch's rows
/// are used up or the run ends.
fn run_epoch<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replicas: &mut [Replica<B>],
    session: Option<&crate::parallel::Session<B::InnerBackend>>,
    preparer: &Arc<Preparer>,
    state: &mut TrainState,
    book: &mut Bookkeeping,
) -> Result<EpochEnd> {
    if let (Some(session), true) = (session, plan.collective.nodes.is_some()) {
        return run_epoch_sharded(plan, replicas, session, preparer, state, book);
    }
    let cfg = plan.cfg;
    let per_step = step_rows(cfg, plan.world);
    // An epoch read from its start that yields no step would repeat forever (max_steps) or
    // end the run untrained.
    let (whole_epoch, steps_before) = (state.position == 0, state.step);
    let order = plan.epoch_order(preparer, state.epoch);
    let mut loader = Loader::new(preparer.clone(), order, state.position, cfg.data.workers);
    loop {
        let waited = Instant::now();
        let step_examples = gather_step(&mut loader, per_step, cfg, state)?;
        if step_examples.is_empty() {
            if whole_epoch && state.step == steps_before {
                return Err(no_step_in_epoch(cfg, state));
            }
            state.epoch += 1;
            state.position = 0;
            return Ok(EpochEnd::Exhausted);
        }
        let position = loader.position();
        let data_s = waited.elapsed().as_secs_f64();
        let report = match session {
            None => run_step(plan, &mut replicas[0], step_examples, state.step)?,
            Some(session) => run_step_parallel(plan, replicas, session, step_examples, state.step)?,
        };
        if let Some(end) = after_step(plan, replicas, state, book, report, position, data_s)? {
            return Ok(end);
        }
    }
}

/// [`run_epoch`] across nodes: each node reads and decodes only the rows of its own
/// micro-batches. Step `i` of the rest of the epoch is the `step_rows` positions of the order
/// from `start + i·step_rows` on; its micro-batch `m` (`batch_size` positions) goes to
/// run-wide rank `m mod world`, as within one node. A row found bad while decoding leaves its
/// micro-batch rather than being replaced (no other node would know), and the step's
/// supervised tokens — the loss's denominator — are summed with the gradients.
fn run_epoch_sharded<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replicas: &mut [Replica<B>],
    session: &crate::parallel::Session<B::InnerBackend>,
    preparer: &Arc<Preparer>,
    state: &mut TrainState,
    book: &mut Bookkeeping,
) -> Result<EpochEnd> {
    let cfg = plan.cfg;
    let per_step = step_rows(cfg, plan.world);
    let (whole_epoch, steps_before) = (state.position == 0, state.step);
    let order = plan.epoch_order(preparer, state.epoch);
    let start = state.position.min(order.len());
    let slots = node_share(order.len(), start, per_step, cfg.batch_size, |m| {
        plan.collective
            .local_of(m % plan.world, plan.local_devices)
            .is_some()
    });
    tracing::info!(
        epoch = state.epoch,
        "this node reads {} of the epoch's {} rows from position {start}",
        slots.len(),
        order.len()
    );
    let rows = slots.iter().map(|s| order[s.position]).collect();
    let mut loader = Loader::new(preparer.clone(), rows, 0, cfg.data.workers);
    let mut slots = slots.into_iter().peekable();
    for i in 0..(order.len() - start).div_ceil(per_step) {
        let waited = Instant::now();
        let mut batches: BTreeMap<usize, Vec<Example>> = BTreeMap::new();
        while let Some(slot) = slots.next_if(|s| s.step == i) {
            match loader.next() {
                Some(Ok(ex)) => batches.entry(slot.micro).or_default().push(ex),
                Some(Err((id, reason))) => bad_row(cfg, state, &id, &reason)?,
                None => break,
            }
        }
        let position = (start + (i + 1) * per_step).min(order.len());
        let data_s = waited.elapsed().as_secs_f64();
        let report = run_node_share(plan, replicas, session, batches, state.step)?;
        if let Some(end) = after_step(plan, replicas, state, book, report, position, data_s)? {
            return Ok(end);
        }
    }
    if whole_epoch && state.step == steps_before {
        return Err(no_step_in_epoch(cfg, state));
    }
    state.epoch += 1;
    state.position = 0;
    Ok(EpochEnd::Exhausted)
}

/// A position of the epoch's order that this node reads: its step (counted from where the
/// reading starts) and micro-batch within the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    position: usize,
    step: usize,
    micro: usize,
}

/// The positions `start..len` of an epoch's order that belong to this node's micro-batches
/// (`mine(m)` for micro-batch `m` of a step), in order.
fn node_share(
    len: usize,
    start: usize,
    per_step: usize,
    batch_size: usize,
    mine: impl Fn(usize) -> bool,
) -> Vec<Slot> {
    (start..len)
        .map(|position| {
            let offset = position - start;
            Slot {
                position,
                step: offset / per_step,
                micro: offset % per_step / batch_size,
            }
        })
        .filter(|s| mine(s.micro))
        .collect()
}

/// Books a step's outcome (`None`: nothing supervised, the data position still moves on);
/// returns how the epoch ends if this step ends it.
fn after_step<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replicas: &mut [Replica<B>],
    state: &mut TrainState,
    book: &mut Bookkeeping,
    report: Option<StepOutcome>,
    position: usize,
    data_s: f64,
) -> Result<Option<EpochEnd>> {
    let Some(outcome) = report else {
        state.position = position;
        return Ok(None);
    };
    if !outcome.loss.is_finite() {
        return Err(TrainError::NonFinite {
            step: state.step + 1,
            loss: outcome.loss,
            last_good: book.last_good.clone(),
        });
    }
    state.advance(&outcome, position);
    book.after_step(plan, state, &outcome, data_s, &mut replicas[0])?;
    if book.stop_after.is_some_and(|s| state.step >= s) {
        return Ok(Some(EpochEnd::Stopped));
    }
    Ok((state.step >= plan.total_steps).then_some(EpochEnd::Done))
}

/// Where a run starts: a fresh state, or the checkpoint `resume_from` names (its state,
/// optimiser moments and path, the model's weights loaded from it), which must fit `sizes`.
fn start_state<B: AutodiffBackend>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    resume_from: &Option<PathBuf>,
    model: &mut OgLlava<B>,
    sizes: RunSizes,
    bad: BadRows,
    device: &B::Device,
) -> Result<(TrainState, OptimState<B::InnerBackend>, Option<PathBuf>)> {
    match resume_from {
        Some(dir) => {
            let (state, optim) = setup::resume_state(dir, cfg, model, sizes, device)?;
            if opts.progress {
                eprintln!("resuming from {} (step {})", dir.display(), state.step);
            }
            Ok((state, optim, Some(dir.clone())))
        }
        None => Ok((
            TrainState::new(bad, sizes.world, sizes.step_rows),
            OptimState::default(),
            None,
        )),
    }
}

/// What a run does after each step on the process that writes files: the metrics record
/// (`metrics.jsonl`, TensorBoard), the progress line, checkpoints.
struct Bookkeeping {
    metrics: Option<MetricsLog>,
    /// Supervised tokens since the last progress line.
    window: Window,
    /// The newest checkpoint written (or resumed from).
    last_good: Option<PathBuf>,
    started: Instant,
    /// The step this process started at (the ETA counts only its own steps).
    run_start_step: usize,
    writer: bool,
    progress: bool,
    /// [`RunOptions::stop_after`].
    stop_after: Option<usize>,
}

impl Bookkeeping {
    /// Opens the metrics files when this process writes files (appending after `state`'s
    /// step when the run was `resumed`).
    fn open(
        cfg: &TrainConfig,
        opts: &RunOptions,
        writer: bool,
        resumed: bool,
        state: &TrainState,
        last_good: Option<PathBuf>,
        started: Instant,
    ) -> Result<Self> {
        let metrics = if writer {
            let resumed_at = resumed.then_some(state.step);
            Some(MetricsLog::open(&cfg.output_dir, resumed_at)?)
        } else {
            None
        };
        Ok(Self {
            metrics,
            window: Window::new(),
            last_good,
            started,
            run_start_step: state.step,
            writer,
            progress: opts.progress,
            stop_after: opts.stop_after,
        })
    }

    fn after_step<B: AutodiffBackend>(
        &mut self,
        plan: &StepPlan<'_>,
        state: &TrainState,
        outcome: &StepOutcome,
        data_s: f64,
        replica: &mut Replica<B>,
    ) -> Result<()> {
        let cfg = plan.cfg;
        self.window.tokens += outcome.tokens;
        let m = step_metrics(plan, state, outcome, &self.window, self.started, data_s);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.record(&m)?;
        }
        let last = state.step == plan.total_steps;
        if self.progress && self.writer && (state.step.is_multiple_of(cfg.log_every) || last) {
            let done = state.step - self.run_start_step;
            eprintln!("{}", progress_line(&m, plan.total_steps, done));
            self.window = Window::new();
        }
        if self.writer && (state.step.is_multiple_of(cfg.checkpoint_every) || last) {
            let dir = write_checkpoint(&mut replica.model, cfg, &replica.optim, state)?;
            self.last_good = Some(dir);
        }
        Ok(())
    }
}

/// One replica per device: the model and optimiser state on the first, forks on the others
/// (same weights and moments).
fn replicate<B: AutodiffBackend>(
    model: OgLlava<B>,
    optim: OptimState<B::InnerBackend>,
    devices: &[B::Device],
) -> Vec<Replica<B>> {
    let mut replicas = vec![Replica {
        model,
        optim,
        device: devices[0].clone(),
    }];
    for d in &devices[1..] {
        replicas.push(Replica {
            model: replicas[0].model.fork(d),
            optim: replicas[0].optim.to_device(d),
            device: d.clone(),
        });
    }
    replicas
}

/// Writes the trained model to `final/` and the loss curve, and says so.
fn finish<B: AutodiffBackend>(
    model: &mut OgLlava<B>,
    cfg: &TrainConfig,
    state: &TrainState,
    progress: bool,
) -> Result<()> {
    let out = &cfg.output_dir;
    model.save_checkpoint(out.join("final"), &cfg.base, cfg.lora.as_ref())?;
    write_loss_svg(out)?;
    if progress {
        eprintln!(
            "done: {} steps, {} examples, {} rows skipped; model in {}",
            state.step,
            state.examples,
            state.bad_rows.total(),
            out.join("final").display()
        );
    }
    Ok(())
}

impl TrainState {
    fn new(bad_rows: BadRows, world: usize, step_rows: usize) -> Self {
        Self {
            step: 0,
            epoch: 0,
            position: 0,
            examples: 0,
            supervised_tokens: 0,
            first_loss: None,
            last_loss: None,
            bad_rows,
            world,
            step_rows: Some(step_rows),
        }
    }

    /// One optimiser step taken, the epoch's order read up to `position`.
    fn advance(&mut self, outcome: &StepOutcome, position: usize) {
        self.step += 1;
        self.position = position;
        self.examples += outcome.examples;
        self.supervised_tokens += outcome.tokens;
        self.first_loss.get_or_insert(outcome.loss);
        self.last_loss = Some(outcome.loss);
    }
}

/// Supervised tokens since the last progress line, for its tokens/s.
struct Window {
    tokens: usize,
    start: Instant,
}

impl Window {
    fn new() -> Self {
        Self {
            tokens: 0,
            start: Instant::now(),
        }
    }
}

/// The examples of one optimiser step (fewer at the end of the epoch, none after it). A bad
/// row stops the run under `fail_on_bad_rows`; otherwise it is counted, once (first epoch).
fn gather_step(
    loader: &mut Loader,
    per_step: usize,
    cfg: &TrainConfig,
    state: &mut TrainState,
) -> Result<Vec<Example>> {
    let mut examples = Vec::with_capacity(per_step);
    while examples.len() < per_step {
        match loader.next() {
            None => break,
            Some(Ok(ex)) => examples.push(ex),
            Some(Err((id, reason))) => bad_row(cfg, state, &id, &reason)?,
        }
    }
    Ok(examples)
}

/// A row found bad while decoding: an error under `fail_on_bad_rows`, otherwise counted, once
/// (first epoch).
fn bad_row(
    cfg: &TrainConfig,
    state: &mut TrainState,
    id: &str,
    reason: &crate::data::BadRow,
) -> Result<()> {
    if cfg.data.fail_on_bad_rows {
        return Err(TrainError::Data {
            path: cfg.data.json.clone(),
            message: format!("row {id}: {reason}"),
        });
    }
    if state.epoch == 0 {
        state.bad_rows.add(id, reason);
    }
    Ok(())
}

fn no_step_in_epoch(cfg: &TrainConfig, state: &TrainState) -> TrainError {
    TrainError::Data {
        path: cfg.data.json.clone(),
        message: format!(
            "epoch {} gave no training step: every row was bad or had nothing to supervise \
             (bad rows: {})",
            state.epoch + 1,
            state.bad_rows.summary()
        ),
    }
}

/// The metrics line of the step `state` just took.
fn step_metrics(
    plan: &StepPlan<'_>,
    state: &TrainState,
    outcome: &StepOutcome,
    window: &Window,
    started: Instant,
    data_s: f64,
) -> Metrics {
    let (cfg, step) = (plan.cfg, state.step);
    Metrics {
        step,
        epoch: state.epoch,
        loss: outcome.loss,
        lr_connector: lr_at(
            cfg.lr_connector,
            step - 1,
            plan.total_steps,
            cfg.warmup_ratio,
        ),
        lr_lora: lr_at(cfg.lr_lora, step - 1, plan.total_steps, cfg.warmup_ratio),
        grad_norm: outcome.grad_norm,
        clip_coef: outcome.clip_coef,
        tokens: outcome.tokens,
        tokens_per_s: window.tokens as f64 / window.start.elapsed().as_secs_f64().max(1e-9),
        elapsed_s: started.elapsed().as_secs_f64(),
        data_s,
        forward_s: outcome.times.forward,
        backward_s: outcome.times.backward,
        optimizer_s: outcome.times.optimizer,
    }
}

/// The progress line of step `m.step`; `done` steps taken by this process so far set the ETA.
fn progress_line(m: &Metrics, total_steps: usize, done: usize) -> String {
    let eta = m.elapsed_s / done.max(1) as f64 * (total_steps - m.step) as f64;
    format!(
        "step {}/{} [{:>3.0}%] loss {:.4} lr {:.2e}/{:.2e} |g| {:.3} {:.0} tok/s ETA {}",
        m.step,
        total_steps,
        100.0 * m.step as f64 / total_steps as f64,
        m.loss,
        m.lr_connector,
        m.lr_lora,
        m.grad_norm,
        m.tokens_per_s,
        fmt_duration(eta)
    )
}

fn summary(state: &TrainState, total_steps: usize, started: Instant, out: &Path) -> RunSummary {
    RunSummary {
        steps: state.step,
        total_steps,
        examples: state.examples,
        supervised_tokens: state.supervised_tokens,
        first_loss: state.first_loss,
        last_loss: state.last_loss,
        bad_rows: state.bad_rows.clone(),
        seconds: started.elapsed().as_secs_f64(),
        output_dir: out.to_path_buf(),
    }
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A model replica on one device with its own AdamW state.
struct Replica<B: AutodiffBackend> {
    model: OgLlava<B>,
    optim: OptimState<B::InnerBackend>,
    device: B::Device,
}

/// What one replica's thread reports: its own outcome, or that another replica failed.
enum ReplicaResult {
    Own(Result<Option<StepOutcome>>),
    PeerFailed(usize),
}

/// What every step of a run shares.
struct StepPlan<'a> {
    cfg: &'a TrainConfig,
    total_steps: usize,
    collective: &'a Collective,
    local_devices: usize,
    world: usize,
    /// Every trainable (name, element count) in a fixed order: the layout of the all-reduce.
    params: Vec<(String, usize)>,
    /// LoRA dropout masks from a host stream per micro-batch ([`RunOptions::host_dropout`]).
    host_dropout: bool,
    opt: AdamW,
}

/// What every replica of a step shares: the step's supervised tokens and, with
/// `host_dropout`, the seed of its micro-batches' dropout streams.
struct StepStart {
    /// What each micro-batch's token sums are divided by: the step's supervised tokens, or 1
    /// when they are only known after the all-reduce (`after_reduce`).
    total: usize,
    host_dropout: Option<u64>,
    /// The loss and gradients are divided by the step's tokens summed in the all-reduce (nodes
    /// that read only their own share of the step).
    after_reduce: bool,
}

impl StepPlan<'_> {
    /// Counts the step's supervised tokens (`None` when there are none) and seeds the
    /// backend's RNG for the step.
    fn begin<B: AutodiffBackend>(
        &self,
        examples: &[Example],
        image_token: u32,
        step: usize,
        device: &B::Device,
    ) -> Option<StepStart> {
        let total: usize = examples.iter().map(|e| supervised(e, image_token)).sum();
        if total == 0 {
            return None;
        }
        Some(StepStart {
            total,
            after_reduce: false,
            ..self.seed::<B>(step, device)
        })
    }

    /// Seeds the backend's RNG for `step`; the step's token count is summed with the gradients.
    fn seed<B: AutodiffBackend>(&self, step: usize, device: &B::Device) -> StepStart {
        // The backend's RNG is process-wide: seeded once per step, replicas' draws from it
        // interleave in scheduling order (bit-reproducible only with LoRA dropout 0 or
        // `host_dropout`, which gives every micro-batch its own stream).
        {
            let _seeded = backend_rng();
            B::seed(device, step_seed(self.cfg, step));
        }
        StepStart {
            total: 1,
            host_dropout: self.host_dropout.then(|| step_seed(self.cfg, step)),
            after_reduce: true,
        }
    }

    /// The order of the rows in `epoch`.
    fn epoch_order(&self, preparer: &Preparer, epoch: usize) -> Vec<usize> {
        let cfg = self.cfg;
        epoch_order(
            &preparer.rows,
            cfg.seed,
            epoch,
            cfg.batch_size,
            cfg.data.group_by_length,
        )
    }

    /// Each group's learning rate at `step`.
    fn lr(&self, step: usize) -> impl Fn(Group) -> f64 + '_ {
        move |g: Group| {
            let base = match g {
                Group::Connector => self.cfg.lr_connector,
                Group::Lora => self.cfg.lr_lora,
            };
            lr_at(base, step, self.total_steps, self.cfg.warmup_ratio)
        }
    }
}

/// Holds the backend's process-wide RNG while a run seeds it and, at the start of a run,
/// draws its fresh parameters: another run in the same process (a test, a sweep) cannot
/// reseed it in between.
pub(crate) fn backend_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The seed of a step's random draws: (seed, step) only.
fn step_seed(cfg: &TrainConfig, step: usize) -> u64 {
    cfg.seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The seed of micro-batch `m`'s host dropout stream in the step seeded `step_seed`.
fn micro_batch_seed(step_seed: u64, m: usize) -> u64 {
    let mut rng =
        crate::data::SplitMix64(step_seed ^ (m as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    rng.next_u64()
}

/// Forward and backward over `micro_batches` (each with its index in the step); returns the
/// loss and the gradients by name, both token sums divided by `total` (the whole step's
/// supervised tokens, on every replica). With `host_dropout` (the step's seed), micro-batch
/// `m` draws its LoRA dropout masks from its own stream.
fn forward_backward<B: AutodiffBackend>(
    model: &mut OgLlava<B>,
    stage: Stage,
    micro_batches: Vec<(usize, Vec<Example>)>,
    total: usize,
    host_dropout: Option<u64>,
    device: &B::Device,
) -> Result<(f64, Grads<B>, StepTimes)> {
    let mut grads = BTreeMap::new();
    let mut loss_sum = 0.0f64;
    let mut times = StepTimes::default();
    for (m, batch) in micro_batches {
        // The examples move into the model's inputs: no copy of their pixels or tokens.
        let (inputs, flags): (Vec<OgLlavaInput<B>>, Vec<Vec<bool>>) = batch
            .into_iter()
            .map(|e| {
                let input = OgLlavaInput {
                    token_ids: e.tokens.ids,
                    images: e
                        .images
                        .into_iter()
                        .map(|(d, selection): (TensorData, _)| ImageInput {
                            pixel_values: Tensor::from_data(d, device),
                            selection,
                        })
                        .collect(),
                };
                (input, e.tokens.trainable)
            })
            .unzip();
        let t0 = Instant::now();
        let building = autodiff::building();
        let (sum, n) = match host_dropout {
            Some(seed) => og_llava::og_llm::with_dropout_stream(micro_batch_seed(seed, m), || {
                model.loss_sum(&inputs, &flags)
            })?,
            None => model.loss_sum(&inputs, &flags)?,
        };
        if n == 0 {
            continue;
        }
        let scaled = sum / total as f64;
        drop(building);
        let value: f64 = scaled.clone().into_scalar().elem();
        loss_sum += value;
        let t1 = Instant::now();
        times.forward += (t1 - t0).as_secs_f64();
        let g = autodiff::backward(scaled);
        let params = trainables(model, stage);
        accumulate(&mut grads, grads_by_name::<B>(&params, &g));
        times.backward += t1.elapsed().as_secs_f64();
    }
    Ok((loss_sum, grads, times))
}

type Grads<B> = BTreeMap<String, Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;

/// Clip + AdamW on `replica` with the step's gradients.
fn optimizer_step<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replica: &mut Replica<B>,
    grads: Grads<B>,
    step: usize,
) -> StepReport {
    let _building = autodiff::building();
    let params = trainables(&mut replica.model, plan.cfg.stage);
    plan.opt.step::<B>(
        params,
        grads,
        &mut replica.optim,
        plan.lr(step),
        plan.cfg.max_grad_norm,
    )
}

/// The step's micro-batches of `batch_size`, in order, with their indices.
fn micro_batches(examples: Vec<Example>, batch_size: usize) -> Vec<(usize, Vec<Example>)> {
    let mut out: Vec<Vec<Example>> = Vec::new();
    for e in examples {
        match out.last_mut() {
            Some(b) if b.len() < batch_size => b.push(e),
            _ => out.push(vec![e]),
        }
    }
    out.into_iter().enumerate().collect()
}

/// One optimiser step on one device over `examples` (micro-batches of `batch_size`); the loss
/// is the mean over every supervised token of the step; `None` when nothing in the step is
/// supervised.
fn run_step<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replica: &mut Replica<B>,
    examples: Vec<Example>,
    step: usize,
) -> Result<Option<StepOutcome>> {
    let image = replica.model.image_token_id;
    let Some(StepStart {
        total,
        host_dropout,
        ..
    }) = plan.begin::<B>(&examples, image, step, &replica.device)
    else {
        return Ok(None);
    };
    let count = examples.len();
    let batches = micro_batches(examples, plan.cfg.batch_size);
    let (loss, grads, mut times) = forward_backward(
        &mut replica.model,
        plan.cfg.stage,
        batches,
        total,
        host_dropout,
        &replica.device,
    )?;
    if !loss.is_finite() {
        return Ok(Some(StepOutcome::non_finite(loss, total, count, times)));
    }
    let t2 = Instant::now();
    let report = optimizer_step(plan, replica, grads, step);
    times.optimizer = t2.elapsed().as_secs_f64();
    Ok(Some(StepOutcome {
        loss,
        grad_norm: report.grad_norm,
        clip_coef: report.clip_coef,
        tokens: total,
        examples: count,
        times,
    }))
}

/// One optimiser step over `examples` on every replica: micro-batch `m` of the step goes to
/// the replica of run-wide rank `m mod world`; each replica runs forward and backward on its
/// own thread, the replicas sum loss and gradients with one all-reduce, then each takes the
/// same AdamW step. The outcome (timings included) is replica 0's.
fn run_step_parallel<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replicas: &mut [Replica<B>],
    session: &crate::parallel::Session<B::InnerBackend>,
    examples: Vec<Example>,
    step: usize,
) -> Result<Option<StepOutcome>> {
    let image = replicas[0].model.image_token_id;
    let Some(start) = plan.begin::<B>(&examples, image, step, &replicas[0].device) else {
        return Ok(None);
    };
    let batches = micro_batches(examples, plan.cfg.batch_size);
    run_shares(plan, replicas, session, batches, &start, step)
}

/// One optimiser step over this node's micro-batches of the step (by index), the other nodes
/// holding the rest: the loss's denominator comes from the all-reduce.
fn run_node_share<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replicas: &mut [Replica<B>],
    session: &crate::parallel::Session<B::InnerBackend>,
    batches: BTreeMap<usize, Vec<Example>>,
    step: usize,
) -> Result<Option<StepOutcome>> {
    let start = plan.seed::<B>(step, &replicas[0].device);
    run_shares(
        plan,
        replicas,
        session,
        batches.into_iter().collect(),
        &start,
        step,
    )
}

/// Micro-batch `m` to the replica of run-wide rank `m mod world` (this node's only), one
/// thread per replica, then the outcome.
fn run_shares<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    replicas: &mut [Replica<B>],
    session: &crate::parallel::Session<B::InnerBackend>,
    batches: Vec<(usize, Vec<Example>)>,
    start: &StepStart,
    step: usize,
) -> Result<Option<StepOutcome>> {
    let mut shares: Vec<Vec<(usize, Vec<Example>)>> =
        (0..replicas.len()).map(|_| Vec::new()).collect();
    for (m, batch) in batches {
        if let Some(local) = plan.collective.local_of(m % plan.world, plan.local_devices) {
            shares[local].push((m, batch));
        }
    }
    let results: Vec<ReplicaResult> = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .iter_mut()
            .zip(shares)
            .enumerate()
            .map(|(local, (replica, share))| {
                s.spawn(move || replica_step(plan, session, local, replica, share, start, step))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replica threads catch their panics"))
            .collect()
    });
    first_outcome(results)
}

/// One replica's part of a parallel step, on its own thread: forward and backward on its
/// `share`, the all-reduce, the AdamW step.
fn replica_step<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    session: &crate::parallel::Session<B::InnerBackend>,
    local: usize,
    replica: &mut Replica<B>,
    share: Vec<(usize, Vec<Example>)>,
    start: &StepStart,
    step: usize,
) -> ReplicaResult {
    let (contribution, own_err, mut times) = contribute(plan, local, replica, share, start);
    let t2 = Instant::now();
    let reduced = match crate::parallel::all_reduce::<B>(
        session,
        local,
        &plan.params,
        contribution,
        &replica.device,
    ) {
        Ok(r) => r,
        Err(e) => return ReplicaResult::Own(Err(e)),
    };
    if let Some(e) = own_err {
        return ReplicaResult::Own(Err(e));
    }
    if reduced.failed > 0 {
        return ReplicaResult::PeerFailed(reduced.failed);
    }
    let (loss, grads, tokens) = match (start.after_reduce, reduced.tokens) {
        (false, _) => (reduced.loss, reduced.grads, start.total),
        // Nothing supervised anywhere in the step: every replica skips it.
        (true, 0) => return ReplicaResult::Own(Ok(None)),
        (true, n) => (
            reduced.loss / n as f64,
            reduced
                .grads
                .into_iter()
                .map(|(name, g)| (name, g.div_scalar(n as f64)))
                .collect(),
            n,
        ),
    };
    if !loss.is_finite() {
        return ReplicaResult::Own(Ok(Some(StepOutcome::non_finite(
            loss,
            tokens,
            reduced.examples,
            times,
        ))));
    }
    let report = optimizer_step(plan, replica, grads, step);
    times.optimizer = t2.elapsed().as_secs_f64();
    ReplicaResult::Own(Ok(Some(StepOutcome {
        loss,
        grad_norm: report.grad_norm,
        clip_coef: report.clip_coef,
        tokens,
        examples: reduced.examples,
        times,
    })))
}

/// A replica's forward and backward as its all-reduce contribution. A replica that fails (or
/// panics) still contributes, flagged, so the others do not wait for it forever; its error
/// comes back beside the contribution.
fn contribute<B: AutodiffBackend>(
    plan: &StepPlan<'_>,
    local: usize,
    replica: &mut Replica<B>,
    share: Vec<(usize, Vec<Example>)>,
    start: &StepStart,
) -> (Contribution<B>, Option<TrainError>, StepTimes) {
    let image = replica.model.image_token_id;
    let examples = share.iter().map(|(_, b)| b.len()).sum();
    let tokens = share
        .iter()
        .flat_map(|(_, b)| b)
        .map(|e| supervised(e, image))
        .sum();
    let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        forward_backward(
            &mut replica.model,
            plan.cfg.stage,
            share,
            start.total,
            start.host_dropout,
            &replica.device,
        )
    }))
    .unwrap_or_else(|p| {
        Err(TrainError::Collective(format!(
            "replica {local} panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or(p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )))
    });
    match own {
        Ok((loss, grads, times)) => (
            Contribution::<B> {
                loss,
                failed: false,
                grads,
                tokens,
                examples,
            },
            None,
            times,
        ),
        Err(e) => (
            Contribution::<B> {
                loss: 0.0,
                failed: true,
                grads: BTreeMap::new(),
                tokens,
                examples,
            },
            Some(e),
            StepTimes::default(),
        ),
    }
}

/// The step's outcome from every replica's result: a failing replica's own error first (the
/// others only know that one failed), else replica 0's outcome.
fn first_outcome(results: Vec<ReplicaResult>) -> Result<Option<StepOutcome>> {
    let mut first = None;
    let mut peer_failed = 0;
    for r in results {
        match r {
            ReplicaResult::Own(Err(e)) => return Err(e),
            ReplicaResult::Own(Ok(o)) => {
                first.get_or_insert(o);
            }
            ReplicaResult::PeerFailed(n) => peer_failed = n,
        }
    }
    match first {
        Some(o) if peer_failed == 0 => Ok(o),
        _ => Err(TrainError::Collective(format!(
            "{peer_failed} replica(s) on other nodes failed in this step"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::node_share;

    #[test]
    fn nodes_read_disjoint_shares_whose_union_is_every_step() {
        // Positions 1..12 (a resumed run), steps of 6 rows in micro-batches of 2: micro-batch m
        // of a step goes to rank m mod world, ranks numbered node by node.
        for (world, ranks_per_node) in [(3, 1), (6, 2), (3, 3)] {
            let nodes = world / ranks_per_node;
            let shares: Vec<_> = (0..nodes)
                .map(|node| node_share(12, 1, 6, 2, |m| m % world / ranks_per_node == node))
                .collect();
            let mut all: Vec<usize> = shares.iter().flatten().map(|s| s.position).collect();
            all.sort_unstable();
            assert_eq!(all, (1..12).collect::<Vec<_>>(), "world {world}");
            for s in shares.iter().flatten() {
                assert_eq!(s.step, (s.position - 1) / 6);
                assert_eq!(s.micro, (s.position - 1) % 6 / 2);
            }
        }
        // Three nodes of one replica: node 1 reads the second micro-batch of every step.
        let node1: Vec<usize> = node_share(12, 1, 6, 2, |m| m % 3 == 1)
            .iter()
            .map(|s| s.position)
            .collect();
        assert_eq!(node1, vec![3, 4, 9, 10]);
    }
}
