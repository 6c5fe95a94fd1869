//! `og-llava serve`: an OpenAI-compatible chat-completions server. The model runs on one
//! thread with continuous batching ([`engine`]); HTTP runs on a tokio runtime beside it
//! ([`http`]); images are decoded, preprocessed and segmented on blocking worker threads
//! ([`request`]) so the model only sees ready tensors. See docs/serve.md.

mod api;
mod engine;
mod http;
mod metrics;
mod request;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_llm::ChatTokenizer;

use crate::ask::{ModelSource, OgPathArgs};
use crate::segment::{SegmenterArgs, SegmenterKind};
use crate::{CliError, DeviceArgs};

/// The environment variable holding the API key clients must present.
const API_KEY_ENV: &str = "OG_LLAVA_API_KEY";

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    source: ModelSource,
    #[command(flatten)]
    path: OgPathArgs,
    /// The address to listen on; anything but loopback needs OG_LLAVA_API_KEY set (clients
    /// then send `Authorization: Bearer <key>`).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port (0: any free one; the server prints the one it took).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    device: DeviceArgs,
    /// The dtype the model computes in: f32, bf16 (cuda, flex) or auto.
    #[arg(long, default_value = "f32")]
    precision: og_llava::Precision,
    /// The most sequences decoding together (1: one request at a time).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// The most requests waiting to join the batch; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// The segmenter an image part gets when it gives neither `masks` nor `segmenter` (none
    /// given: such parts take the plain LLaVA path); --sam loads SAM 2 for parts that ask for
    /// `"segmenter": "sam2"`.
    #[command(flatten)]
    segmenter: SegmenterArgs,
    /// Read `file://` image URLs from this machine (only for trusted clients).
    #[arg(long)]
    allow_local_files: bool,
    /// Refuse images with more pixels than this (checked before decoding).
    #[arg(long, default_value_t = 40_000_000)]
    max_image_pixels: u64,
    /// The model name clients send (default: the model directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
}

struct Serve<'a> {
    args: &'a ServeArgs,
    tokenizer: ChatTokenizer,
    eos: Vec<u32>,
    api_key: Option<String>,
}

impl BackendTask for Serve<'_> {
    type Output = Result<(), CliError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let model = a.source.load_for::<B>(&a.path, a.precision, &device)?;
        let served = Arc::new(request::Served {
            name: a.served_model_name.clone().unwrap_or_else(|| model_name(a)),
            processor: a.source.processor(&model)?,
            selection: model.image.selection.clone(),
            image_token_id: model.image_token_id,
            context: model.llm.max_positions(),
            tokenizer: self.tokenizer,
            limits: request::Limits {
                max_image_pixels: a.max_image_pixels,
                allow_local_files: a.allow_local_files,
            },
            segmenters: segmenters(a)?,
        });
        let metrics = Arc::new(metrics::Metrics::default());
        let (jobs, queue) = std::sync::mpsc::sync_channel(a.max_queue);
        let listener = std::net::TcpListener::bind(SocketAddr::new(a.host, a.port))
            .map_err(|e| CliError::Usage(format!("cannot listen on {}:{}: {e}", a.host, a.port)))?;
        let address = listener
            .local_addr()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let state = Arc::new(http::AppState {
            served: served.clone(),
            jobs,
            max_queue: a.max_queue,
            metrics: metrics.clone(),
            api_key: self.api_key,
        });
        let http = std::thread::Builder::new()
            .name("og-llava-http".into())
            .spawn(move || run_http(listener, state))
            .map_err(|e| CliError::Usage(format!("cannot start the HTTP thread: {e}")))?;
        println!(
            "serving {} (context {} tokens, batches of up to {}) on http://{address}",
            served.name, served.context, a.max_batch
        );
        engine::Engine {
            model: &model,
            device,
            tokenizer: &served.tokenizer,
            eos: self.eos,
            max_batch: a.max_batch,
            jobs: queue,
            metrics,
        }
        .run();
        http.join()
            .map_err(|_| CliError::Usage("the HTTP thread panicked".into()))?
    }
}

/// Runs the HTTP side until Ctrl-C or SIGTERM, then lets requests in flight finish.
fn run_http(listener: std::net::TcpListener, state: Arc<http::AppState>) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Usage(format!("the HTTP server failed: {e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io)?;
    runtime.block_on(async move {
        listener.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async {
                shutdown_signal().await;
                eprintln!("shutting down: finishing the requests in flight");
            })
            .await
            .map_err(io)
    })
}

/// Ctrl-C, or SIGTERM (how service managers and containers stop a process).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The name clients address the model by: the directory's last two path components, as a
/// Hugging Face repository id reads (`og-llava-sft/final` for a run's final checkpoint).
fn model_name(a: &ServeArgs) -> String {
    let path = a
        .source
        .model
        .canonicalize()
        .unwrap_or_else(|_| a.source.model.clone());
    let names: Vec<String> = path
        .components()
        .rev()
        .take(2)
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [] => "og-llava".into(),
        [name] => name.clone(),
        [name, parent, ..] => format!("{parent}/{name}"),
    }
}

/// The segmenters of the flags: Felzenszwalb always, SAM 2 when weights are given.
fn segmenters(a: &ServeArgs) -> Result<request::Segmenters, CliError> {
    let seg = &a.segmenter;
    let sam2 = match (&seg.sam, seg.segmenter) {
        (Some(_), _) => {
            let sam = SegmenterArgs {
                segmenter: Some(SegmenterKind::Sam2),
                ..seg.clone()
            };
            let device = a.device.spec()?;
            Some(Arc::new(std::sync::Mutex::new(sam.build(device, false)?)))
        }
        (None, Some(SegmenterKind::Sam2)) => {
            return Err(CliError::Usage(
                "--segmenter sam2 needs --sam: a transformers Sam2Model folder or an original \
                 sam2.1_hiera_*.pt checkpoint"
                    .into(),
            ));
        }
        (None, _) => None,
    };
    Ok(request::Segmenters {
        default: seg.segmenter,
        felzenszwalb: seg.felzenszwalb()?,
        sam2,
    })
}

pub fn run(args: &ServeArgs) -> Result<(), CliError> {
    crate::ask::require_llava_model(&args.source.model)?;
    if args.max_batch == 0 || args.max_queue == 0 {
        return Err(CliError::Usage(
            "--max-batch and --max-queue must be at least 1".into(),
        ));
    }
    let api_key = std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty());
    if !args.host.is_loopback() && api_key.is_none() {
        return Err(CliError::Usage(format!(
            "listening on {} (beyond loopback) needs {API_KEY_ENV} set: clients then send \
             `Authorization: Bearer <key>`",
            args.host
        )));
    }
    let dir = crate::ask::tokenizer_dir(&args.source.model)?;
    let tokenizer = ChatTokenizer::from_dir(&dir)?;
    let eos = crate::llm::eos_ids(&dir, &tokenizer)?;
    og_llava::dispatch(
        args.device.spec()?,
        Serve {
            args,
            tokenizer,
            eos,
            api_key,
        },
    )?
}
