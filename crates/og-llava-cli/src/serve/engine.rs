//! The model's thread: continuous batching. Requests waiting in the queue join the decoding
//! batch between steps (their images encoded and their prompts prefilled together), every
//! step chooses one more token for each sequence in one forward pass, and a sequence leaves
//! the batch when it finishes or its client goes away. Each sequence generates what it would
//! alone ([`DecodeBatch`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use og_llava::{ImageInput, OgLlava, OgLlavaInput};
use og_llm::{ChatTokenizer, DecodeBatch};
use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, FinishReason, Usage};
use super::metrics::Metrics;
use super::request::Prompt;

/// What the engine tells a request's handler, in order: `Accepted` or `Failed` first, then
/// `Text` pieces and one `Done` (or a late `Failed`).
#[derive(Debug)]
pub enum Event {
    Accepted,
    Text(String),
    Done { finish: FinishReason, usage: Usage },
    Failed(ApiError),
}

/// A request in the queue.
pub struct Job {
    pub prompt: Prompt,
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// A sequence decoding: what it has made and how it ends.
struct Live {
    events: UnboundedSender<Event>,
    text: TextStream,
    /// Tokens generated (an end-of-turn token included).
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    prompt_tokens: usize,
    received: Instant,
}

pub struct Engine<'a, B: Backend> {
    pub model: &'a OgLlava<B>,
    pub device: B::Device,
    pub tokenizer: &'a ChatTokenizer,
    pub eos: Vec<u32>,
    pub max_batch: usize,
    pub jobs: Receiver<Job>,
    pub metrics: Arc<Metrics>,
}

impl<B: Backend> Engine<'_, B> {
    /// Serves until the queue's senders are gone and the last sequence is done.
    pub fn run(self) {
        let mut batch = DecodeBatch::<B, u64>::new(&self.model.llm);
        let mut live: HashMap<u64, Live> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            let Some(jobs) = self.take_jobs(self.max_batch - batch.len(), batch.is_empty()) else {
                return;
            };
            if !jobs.is_empty() {
                let admitted = self.admit(&mut batch, jobs, &mut next_id);
                self.deliver(&mut batch, &mut live, admitted);
            }
            if !batch.is_empty() {
                batch = self.step(batch, &mut live);
            }
            self.metrics.set_active(batch.len());
        }
    }

    /// One decoding step for every sequence; on failure every sequence fails and the batch
    /// starts afresh.
    fn step(
        &self,
        mut batch: DecodeBatch<B, u64>,
        live: &mut HashMap<u64, Live>,
    ) -> DecodeBatch<B, u64> {
        match batch.step(&self.model.llm) {
            Ok(tokens) => {
                self.metrics.generated(tokens.len());
                let new = Vec::new();
                self.deliver(&mut batch, live, Admitted { tokens, new });
                batch
            }
            Err(e) => {
                let error = ApiError::server(format!("decoding failed: {e}"));
                for (_, l) in live.drain() {
                    let _ = l.events.send(Event::Failed(error.clone()));
                }
                DecodeBatch::new(&self.model.llm)
            }
        }
    }

    /// Up to `room` jobs from the queue (waiting for one when `wait`); `None` once the queue
    /// is closed and nothing is left to do. Jobs whose clients left while queued are dropped.
    fn take_jobs(&self, room: usize, wait: bool) -> Option<Vec<Job>> {
        let mut jobs = Vec::new();
        if wait {
            match self.jobs.recv() {
                Ok(job) => jobs.push(job),
                Err(_) => return None,
            }
        }
        while jobs.len() < room {
            match self.jobs.try_recv() {
                Ok(job) => jobs.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.metrics.dequeued(jobs.len());
        jobs.retain(|j| {
            let gone = j.events.is_closed();
            if gone {
                self.metrics.cancelled();
            }
            !gone
        });
        Some(jobs)
    }

    /// Encodes the jobs' images and prefills their prompts together; jobs whose prompt does
    /// not fit the context are refused. Returns the first tokens of those admitted.
    fn admit(
        &self,
        batch: &mut DecodeBatch<B, u64>,
        jobs: Vec<Job>,
        next_id: &mut u64,
    ) -> Admitted {
        let inputs: Vec<OgLlavaInput<B>> = jobs.iter().map(|j| self.input(&j.prompt)).collect();
        let prepared = match self.model.prepare(&inputs) {
            Ok(p) => p,
            Err(e) if jobs.len() == 1 => {
                let _ = jobs[0].events.send(Event::Failed(ApiError::invalid(
                    e.to_string(),
                    Some("messages"),
                    "invalid_value",
                )));
                return Admitted::default();
            }
            // One job's fault must not fail the others: admit them one by one.
            Err(_) => {
                let mut all = Admitted::default();
                for job in jobs {
                    let one = self.admit(batch, vec![job], next_id);
                    all.tokens.extend(one.tokens);
                    all.new.extend(one.new);
                }
                return all;
            }
        };
        let mut rows = Vec::new();
        let mut accepted = Vec::new();
        for (row, job) in jobs.into_iter().enumerate() {
            let len = prepared.lengths[row];
            match self.budget(len, job.prompt.max_tokens) {
                Ok(max_tokens) => {
                    rows.push(row);
                    accepted.push((job, len, max_tokens));
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e));
                }
            }
        }
        if rows.is_empty() {
            return Admitted::default();
        }
        let (embeds, positions, lengths) = accepted_rows(prepared, &rows, &self.device);
        let keys: Vec<(u64, og_llm::Sampling)> = accepted
            .iter()
            .map(|(job, _, _)| {
                *next_id += 1;
                (*next_id, job.prompt.sampling)
            })
            .collect();
        let tokens = match batch.admit(&self.model.llm, embeds, &positions, &lengths, &keys) {
            Ok(tokens) => tokens,
            Err(e) => {
                for (job, _, _) in accepted {
                    let _ = job.events.send(Event::Failed(ApiError::server(format!(
                        "prefill failed: {e}"
                    ))));
                }
                return Admitted::default();
            }
        };
        self.metrics.generated(tokens.len());
        let new = keys
            .into_iter()
            .zip(accepted)
            .map(|((id, _), (job, prompt_tokens, max_tokens))| {
                let _ = job.events.send(Event::Accepted);
                let live = Live {
                    events: job.events,
                    text: TextStream::new(job.prompt.stop),
                    generated: 0,
                    max_tokens,
                    ignore_eos: job.prompt.ignore_eos,
                    prompt_tokens,
                    received: job.received,
                };
                (id, live)
            })
            .collect();
        Admitted { tokens, new }
    }

    /// The job's prompt with its images on the device.
    fn input(&self, prompt: &Prompt) -> OgLlavaInput<B> {
        OgLlavaInput {
            token_ids: prompt.token_ids.clone(),
            images: prompt
                .images
                .iter()
                .map(|image| ImageInput {
                    pixel_values: Tensor::from_data(image.pixel_values.clone(), &self.device),
                    selection: image.selection.clone(),
                })
                .collect(),
        }
    }

    /// The completion tokens a prompt of `len` tokens may have: `max_tokens` when it fits the
    /// context, the rest of the context when not asked.
    fn budget(&self, len: usize, max_tokens: Option<usize>) -> Result<usize, ApiError> {
        let context = self.model.llm.max_positions();
        let left = context.saturating_sub(len);
        match max_tokens {
            _ if left == 0 => Err(ApiError::invalid(
                format!(
                    "the prompt is {len} tokens (image tokens included); this model's context \
                     is {context} tokens"
                ),
                Some("messages"),
                "context_length_exceeded",
            )),
            Some(n) if n > left => Err(ApiError::invalid(
                format!(
                    "this model's context is {context} tokens; the prompt is {len} (image \
                     tokens included) and max_tokens asks for {n} more"
                ),
                Some("max_tokens"),
                "context_length_exceeded",
            )),
            Some(n) => Ok(n),
            None => Ok(left),
        }
    }

    /// Hands each sequence its token; lets go of those that finished or whose client left.
    fn deliver(
        &self,
        batch: &mut DecodeBatch<B, u64>,
        live: &mut HashMap<u64, Live>,
        admitted: Admitted,
    ) {
        live.extend(admitted.new);
        let mut done = Vec::new();
        for (id, token) in admitted.tokens {
            let Some(l) = live.get_mut(&id) else {
                done.push(id);
                continue;
            };
            if l.generated == 0 {
                self.metrics.first_token(l.received.elapsed());
            }
            l.generated += 1;
            let end = if !l.ignore_eos && self.eos.contains(&token) {
                Some(FinishReason::Stop)
            } else {
                l.text.push(token, self.tokenizer)
            };
            let end = end.or((l.generated >= l.max_tokens).then_some(FinishReason::Length));
            let mut sent = true;
            if let Some(piece) = l.text.take(end.is_some()) {
                sent = l.events.send(Event::Text(piece)).is_ok();
            }
            if let Some(finish) = end {
                let usage = Usage::new(l.prompt_tokens, l.generated);
                sent &= l.events.send(Event::Done { finish, usage }).is_ok();
            }
            // A finished request's handler may close its channel as soon as it has `Done`.
            let gone = !sent || (end.is_none() && l.events.is_closed());
            if gone {
                self.metrics.cancelled();
            }
            if gone || end.is_some() {
                done.push(id);
            }
        }
        for id in &done {
            live.remove(id);
        }
        if let Err(e) = batch.remove(|id, _| done.contains(id)) {
            tracing::error!("dropping finished sequences: {e}");
        }
    }
}

/// The prepared batch's rows at `rows` (ascending), narrowed to their longest prompt; the
/// batch itself when every row is kept.
fn accepted_rows<B: Backend>(
    prepared: og_llava::Prepared<B>,
    rows: &[usize],
    device: &B::Device,
) -> (Tensor<B, 3>, Vec<Vec<i64>>, Vec<usize>) {
    if rows.len() == prepared.lengths.len() {
        return (prepared.embeds, prepared.positions, prepared.lengths);
    }
    let lengths: Vec<usize> = rows.iter().map(|&r| prepared.lengths[r]).collect();
    let t = lengths.iter().copied().max().unwrap_or(1);
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
        device,
    );
    let [_, _, d] = prepared.embeds.dims();
    let embeds = prepared
        .embeds
        .select(0, index)
        .slice([0..rows.len(), 0..t, 0..d]);
    let positions = rows
        .iter()
        .map(|&r| prepared.positions[r][..t].to_vec())
        .collect();
    (embeds, positions, lengths)
}

/// Sequences just admitted and tokens to hand out.
#[derive(Default)]
struct Admitted {
    tokens: Vec<(u64, u32)>,
    new: Vec<(u64, Live)>,
}

/// A completion's text as it grows: decoded from all its tokens so far, released in pieces
/// that never end inside a character or a possible stop string, cut at the first stop string.
pub struct TextStream {
    tokens: Vec<u32>,
    text: String,
    /// Bytes of `text` released.
    sent: usize,
    stop: Vec<String>,
    /// Where a stop string begins, once one appeared (the text ends there).
    cut: Option<usize>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            tokens: Vec::new(),
            text: String::new(),
            sent: 0,
            stop,
            cut: None,
        }
    }

    /// Adds a token; `Some(Stop)` when a stop string appeared.
    pub fn push(&mut self, token: u32, tokenizer: &ChatTokenizer) -> Option<FinishReason> {
        self.tokens.push(token);
        if let Ok(text) = tokenizer.decode(&self.tokens, true) {
            self.text = text;
        }
        self.cut = self
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        self.cut.map(|_| FinishReason::Stop)
    }

    /// The text not yet released that is safe to release (all of it when `last`).
    pub fn take(&mut self, last: bool) -> Option<String> {
        let end = match self.cut {
            Some(cut) => cut,
            None if last => self.text.len(),
            None => self.safe_end(),
        };
        if end <= self.sent || !self.text.is_char_boundary(self.sent) {
            return None;
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        Some(piece)
    }

    /// The end of what can be released now: before a trailing replacement character (a
    /// character whose bytes are still arriving) and before a suffix that may begin a stop
    /// string.
    fn safe_end(&self) -> usize {
        let text = self.text.trim_end_matches('\u{FFFD}');
        let mut end = text.len();
        for stop in &self.stop {
            for k in (1..stop.len()).rev() {
                if stop.is_char_boundary(k) && text.ends_with(&stop[..k]) {
                    end = end.min(text.len() - k);
                    break;
                }
            }
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream over literal text, as a tokenizer would decode it.
    fn feed(stream: &mut TextStream, text: &str) -> (Vec<String>, Option<FinishReason>) {
        let mut pieces = Vec::new();
        let mut end = None;
        for ch in text.chars() {
            stream.text.push(ch);
            stream.cut = stream
                .stop
                .iter()
                .filter_map(|s| stream.text.find(s.as_str()))
                .min();
            end = stream.cut.map(|_| FinishReason::Stop);
            pieces.extend(stream.take(end.is_some()));
            if end.is_some() {
                break;
            }
        }
        (pieces, end)
    }

    #[test]
    fn stop_strings_cut_the_text_and_are_never_released() {
        let mut s = TextStream::new(vec!["END".into(), "\n\n".into()]);
        let (pieces, end) = feed(&mut s, "a cat EN dog END more");
        assert_eq!(end, Some(FinishReason::Stop));
        assert_eq!(pieces.concat(), "a cat EN dog ");
        assert!(pieces.iter().all(|p| !p.contains("END")));
        let mut s = TextStream::new(vec![]);
        let (pieces, end) = feed(&mut s, "no stop");
        assert_eq!((pieces.concat().as_str(), end), ("no stop", None));
    }

    #[test]
    fn unfinished_characters_wait() {
        let mut s = TextStream::new(vec![]);
        s.text = "ab\u{FFFD}".into();
        assert_eq!(s.take(false).as_deref(), Some("ab"));
        s.text = "abé".into();
        assert_eq!(s.take(false).as_deref(), Some("é"));
    }
}
