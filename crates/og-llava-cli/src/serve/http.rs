//! The HTTP side: routes, the request's way to the engine's queue, plain and streamed
//! (server-sent events) answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::api::{ApiError, Envelope, Usage, parse_request};
use super::engine::{Event, Job};
use super::metrics::Metrics;
use super::request::{self, Served};

/// The largest request body (images travel base64-encoded inside it).
pub const MAX_BODY_BYTES: usize = 64 << 20;

pub struct AppState {
    pub served: Arc<Served>,
    pub jobs: SyncSender<Job>,
    pub max_queue: usize,
    pub metrics: Arc<Metrics>,
    /// Clients must send `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.body())).into_response()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The served model as OpenAI describes a model.
fn model_object(state: &AppState) -> serde_json::Value {
    serde_json::json!({
        "id": state.served.name,
        "object": "model",
        "created": now(),
        "owned_by": "og-llava",
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({ "object": "list", "data": [model_object(&state)] }))
        .into_response()
}

/// `GET /v1/models/{id}` (ids may hold slashes: `og-llava-sft/final`).
async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if id != state.served.name {
        return ApiError::unknown_model(&id, &state.served.name).into_response();
    }
    axum::Json(model_object(&state)).into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "model": state.served.name,
        "queue_depth": state.metrics.queued(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = match answer(&state, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    state.metrics.request(response.status().as_u16());
    response
}

async fn answer(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(state, headers)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(
            format!("the request body is over {MAX_BODY_BYTES} bytes"),
            "request_too_large",
        ),
        _ => ApiError::invalid(e.body_text(), None, "invalid_request_body"),
    })?;
    let received = Instant::now();
    let request = parse_request(&body)?;
    let (stream, include_usage) = (
        request.stream,
        request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    );
    let served = state.served.clone();
    let prompt = tokio::task::spawn_blocking(move || request::build(request, &served))
        .await
        .map_err(|e| ApiError::server(format!("preparing the request failed: {e}")))??;
    let (events, mut rx) = unbounded_channel();
    state.metrics.enqueued();
    let sent = state.jobs.try_send(Job {
        prompt,
        events,
        received,
    });
    if let Err(e) = sent {
        state.metrics.dequeued(1);
        return Err(match e {
            TrySendError::Full(_) => ApiError::queue_full(state.max_queue),
            TrySendError::Disconnected(_) => ApiError::unavailable("the server is shutting down"),
        });
    }
    match rx.recv().await {
        Some(Event::Accepted) => {}
        Some(Event::Failed(e)) => return Err(e),
        _ => return Err(ApiError::server("the engine dropped the request")),
    }
    let envelope = Envelope {
        id: format!("chatcmpl-{:x}", received_id()),
        created: now(),
        model: state.served.name.clone(),
    };
    if stream {
        return Ok(Sse::new(chunks(envelope, rx, include_usage)).into_response());
    }
    let mut content = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(piece) => content.push_str(&piece),
            Event::Done { finish, usage } => {
                return Ok(axum::Json(envelope.completion(&content, finish, usage)).into_response());
            }
            Event::Failed(e) => return Err(e),
            Event::Accepted => {}
        }
    }
    Err(ApiError::server("the engine dropped the request"))
}

/// `Authorization: Bearer <key>` when the server has a key.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return Ok(());
    }
    Err(ApiError {
        status: 401,
        message: "missing or wrong API key (Authorization: Bearer <key>)".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    })
}

/// A process-unique completion number.
fn received_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (now() << 20) ^ n
}

/// The stream's state between chunks.
enum Phase {
    /// The role chunk comes first.
    Start,
    Body,
    /// The usage chunk (when asked for), then `[DONE]`.
    Usage(Usage),
    Done,
    End,
}

/// Server-sent events of one completion: a role chunk, content chunks, a chunk with the
/// finish reason, the usage chunk when asked for, `[DONE]`. An engine failure mid-stream is
/// sent as an OpenAI error object (the status line has gone).
fn chunks(
    envelope: Envelope,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |v: serde_json::Value| SseEvent::default().data(v.to_string());
    futures::stream::unfold(
        (Phase::Start, rx, envelope),
        move |(phase, mut rx, envelope)| async move {
            let (event, next) = match phase {
                Phase::Start => (
                    data(envelope.chunk(
                        serde_json::json!({ "role": "assistant", "content": "" }),
                        None,
                    )),
                    Phase::Body,
                ),
                Phase::Body => match rx.recv().await {
                    Some(Event::Text(piece)) => (
                        data(envelope.chunk(serde_json::json!({ "content": piece }), None)),
                        Phase::Body,
                    ),
                    Some(Event::Done { finish, usage }) => (
                        data(envelope.chunk(serde_json::json!({}), Some(finish))),
                        if include_usage {
                            Phase::Usage(usage)
                        } else {
                            Phase::Done
                        },
                    ),
                    Some(Event::Failed(e)) => (data(e.body()), Phase::Done),
                    Some(Event::Accepted) | None => (
                        data(ApiError::server("the engine dropped the request").body()),
                        Phase::Done,
                    ),
                },
                Phase::Usage(usage) => (data(envelope.usage_chunk(usage)), Phase::Done),
                Phase::Done => (SseEvent::default().data("[DONE]"), Phase::End),
                Phase::End => return None,
            };
            Some((Ok(event), (next, rx, envelope)))
        },
    )
}
