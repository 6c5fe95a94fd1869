//! Generation (greedy, temperature + top-p) with or without the KV cache, and log-likelihood
//! scoring of candidate continuations (how evaluation ranks captions and options).

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::error::{LlmError, Result};
use crate::model::{KvCache, LlamaForCausalLM};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties: the lowest id).
    Greedy,
    /// Sample from the smallest set of most likely tokens whose probability reaches `top_p`,
    /// after dividing the logits by `temperature`; deterministic for a `seed`.
    TopP {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop after emitting any of these (it is included in the output).
    pub eos_token_ids: Vec<u32>,
    /// Reuse keys/values of earlier tokens (false recomputes the whole sequence every step).
    pub use_cache: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            sampling: Sampling::Greedy,
            eos_token_ids: Vec::new(),
            use_cache: true,
        }
    }
}

/// Log-likelihood of one candidate continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Σ log p(token | prefix) over the candidate's tokens.
    pub sum: f64,
    /// `sum` divided by the number of tokens.
    pub mean: f64,
    pub tokens: usize,
}

fn pick(logits: &[f32], sampling: Sampling, rng: &mut rand::rngs::StdRng) -> Result<u32> {
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(LlmError::Input(
            "the model produced non-finite logits".into(),
        ));
    }
    match sampling {
        Sampling::Greedy => {
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            Ok(best as u32)
        }
        Sampling::TopP {
            temperature, top_p, ..
        } => {
            if !(temperature > 0.0 && top_p > 0.0 && top_p <= 1.0) {
                return Err(LlmError::Input(format!(
                    "temperature {temperature} must be > 0 and top_p {top_p} in (0, 1]"
                )));
            }
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (i, (((v - max) / temperature) as f64).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0.0;
            let mut n = 0;
            for p in &probs {
                kept += p.1 / total;
                n += 1;
                if kept >= top_p as f64 {
                    break;
                }
            }
            let mass: f64 = probs[..n].iter().map(|p| p.1).sum();
            let mut r = rng.random::<f64>() * mass;
            for p in &probs[..n] {
                r -= p.1;
                if r <= 0.0 {
                    return Ok(p.0 as u32);
                }
            }
            Ok(probs[n - 1].0 as u32)
        }
    }
}

/// The generator a sequence samples with: seeded by [`Sampling::TopP`]'s seed (greedy
/// decoding draws nothing).
fn seeded_rng(sampling: Sampling) -> rand::rngs::StdRng {
    let seed = match sampling {
        Sampling::TopP { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A right-padded batch: `batch` ≥ 1 rows of `t` position ids and real lengths in `1..=t`.
fn check_batch(batch: usize, t: usize, positions: &[Vec<i64>], lengths: &[usize]) -> Result<()> {
    if batch == 0 || t == 0 {
        return Err(LlmError::Input(format!(
            "generation needs at least one non-empty prompt (got [{batch}, {t}])"
        )));
    }
    if positions.len() != batch || positions.iter().any(|p| p.len() != t) {
        return Err(LlmError::Input(format!(
            "position ids must be {batch} rows of {t} (one per token)"
        )));
    }
    if lengths.len() != batch || lengths.iter().any(|&n| n == 0 || n > t) {
        return Err(LlmError::Input(format!(
            "prompt lengths {lengths:?}: expected {batch} lengths in 1..={t}"
        )));
    }
    Ok(())
}

/// One sequence of a [`DecodeBatch`].
#[derive(Debug)]
struct Row<K> {
    key: K,
    sampling: Sampling,
    rng: rand::rngs::StdRng,
    /// Position of the next token fed in.
    next_pos: i64,
    /// The token chosen last (fed in at the next step).
    last: u32,
}

/// Sequences decoding together that join and leave between steps (continuous batching):
/// [`DecodeBatch::admit`] prefills new prompts and appends their keys/values to the running
/// cache, [`DecodeBatch::step`] chooses one more token for every sequence in one forward pass,
/// [`DecodeBatch::remove`] lets finished ones go. Each sequence continues exactly as it would
/// alone — padding keys are never attended and positions travel with the cached keys — and
/// samples with its own generator seeded as [`Sampling::TopP`] says. `K` names a sequence for
/// the caller (a prompt index, a request id).
#[derive(Debug)]
pub struct DecodeBatch<B: Backend, K> {
    cache: KvCache<B>,
    rows: Vec<Row<K>>,
}

impl<B: Backend, K: Clone> DecodeBatch<B, K> {
    pub fn new(model: &LlamaForCausalLM<B>) -> Self {
        Self {
            cache: KvCache::new(model.num_layers()),
            rows: Vec::new(),
        }
    }

    /// Number of sequences decoding.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Prefills new prompts — right-padded embeddings `[n, T, hidden]` with position ids
    /// (`n` rows of `T`) and real lengths — and takes them into the batch, one per
    /// `(key, sampling)`. Returns each one's first token.
    pub fn admit(
        &mut self,
        model: &LlamaForCausalLM<B>,
        embeds: Tensor<B, 3>,
        positions: &[Vec<i64>],
        lengths: &[usize],
        sequences: &[(K, Sampling)],
    ) -> Result<Vec<(K, u32)>> {
        let [b, t, _] = embeds.dims();
        check_batch(b, t, positions, lengths)?;
        model.check_prompt_length(t)?;
        if sequences.len() != b {
            return Err(LlmError::Input(format!(
                "{} sequences named for {b} prompts",
                sequences.len()
            )));
        }
        let pad: Vec<bool> = lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |i| i >= n))
            .collect();
        let padding =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(pad, [b, t]), &embeds.device());
        let mut cache = KvCache::new(model.num_layers());
        let hidden = model.forward_hidden(embeds, positions, Some(padding), Some(&mut cache))?;
        let last: Vec<usize> = lengths.iter().map(|&n| n - 1).collect();
        let logits = model.logits_at(hidden, &last);
        let mut rows = Vec::with_capacity(b);
        for (((key, sampling), logits), (p, &n)) in sequences
            .iter()
            .zip(&logits)
            .zip(positions.iter().zip(lengths))
        {
            let mut rng = seeded_rng(*sampling);
            let token = pick(logits, *sampling, &mut rng)?;
            rows.push(Row {
                key: key.clone(),
                sampling: *sampling,
                rng,
                next_pos: p[..n].iter().copied().max().unwrap_or(-1) + 1,
                last: token,
            });
        }
        self.cache.append(cache)?;
        let first = rows.iter().map(|r| (r.key.clone(), r.last)).collect();
        self.rows.extend(rows);
        Ok(first)
    }

    /// Feeds every sequence its last token and chooses the next, in one forward pass.
    /// Returns `(key, token)` per sequence, in batch order.
    pub fn step(&mut self, model: &LlamaForCausalLM<B>) -> Result<Vec<(K, u32)>> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<Vec<u32>> = self.rows.iter().map(|r| vec![r.last]).collect();
        let positions: Vec<Vec<i64>> = self.rows.iter().map(|r| vec![r.next_pos]).collect();
        let hidden = model.forward_hidden(
            model.embed(&tokens)?,
            &positions,
            None,
            Some(&mut self.cache),
        )?;
        let logits = model.logits_at(hidden, &vec![0; self.rows.len()]);
        for (row, logits) in self.rows.iter_mut().zip(&logits) {
            row.last = pick(logits, row.sampling, &mut row.rng)?;
            row.next_pos += 1;
        }
        Ok(self.rows.iter().map(|r| (r.key.clone(), r.last)).collect())
    }

    /// Lets go of the sequences for which `finished(key, last_token)` holds; the cache drops
    /// their rows and the key columns no remaining sequence attends.
    pub fn remove(&mut self, mut finished: impl FnMut(&K, u32) -> bool) -> Result<()> {
        let done: Vec<bool> = self.rows.iter().map(|r| finished(&r.key, r.last)).collect();
        if !done.contains(&true) {
            return Ok(());
        }
        let keep: Vec<usize> = (0..done.len()).filter(|&i| !done[i]).collect();
        if keep.is_empty() {
            self.cache = KvCache::new(self.cache.num_layers());
        } else {
            self.cache.retain(&keep)?;
        }
        let mut done = done.into_iter();
        self.rows.retain(|_| !done.next().unwrap_or(false));
        Ok(())
    }
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// Generates after a prompt of token ids; `on_token` sees each new token as it comes.
    /// Returns the new tokens (an EOS, if reached, included).
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(LlmError::Input("empty prompt".into()));
        }
        let embeds = self.embed(&[prompt.to_vec()])?;
        let positions: Vec<i64> = (0..prompt.len() as i64).collect();
        self.generate_from_embeds(embeds, positions, config, on_token)
    }

    /// Generates after a prompt given as embeddings `[1, T, hidden]` with its position ids
    /// (e.g. text with visual tokens spliced in, positions segment-aware). New tokens continue
    /// from the largest prompt position.
    pub fn generate_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Vec<i64>,
        config: &GenerationConfig,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        let [b, t, _] = embeds.dims();
        if b != 1 || t == 0 || positions.len() != t {
            return Err(LlmError::Input(format!(
                "generation takes one non-empty sequence with one position per token (got [{b}, {t}], {} positions)",
                positions.len()
            )));
        }
        if !config.use_cache {
            return self.generate_uncached(embeds, positions, config, on_token);
        }
        let mut out =
            self.generate_batch_from_embeds(embeds, &[positions], &[t], config, |_, token| {
                on_token(token)
            })?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Generates after `batch` prompts at once, each continuing as it would alone: prompts
    /// given as right-padded embeddings `[batch, T, hidden]` with position ids (`batch` rows
    /// of `T`; values at padding are ignored) and real lengths. Padding is never attended;
    /// each sequence continues from its largest prompt position, samples with its own
    /// generator seeded as [`Sampling::TopP`] says, and leaves the batch (its cache rows
    /// dropped) when it stops. `on_token(row, token)` sees each new token as it comes.
    /// Returns the new tokens of each prompt, in order.
    pub fn generate_batch_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: &[Vec<i64>],
        lengths: &[usize],
        config: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Vec<u32>>> {
        let [b, t, _] = embeds.dims();
        check_batch(b, t, positions, lengths)?;
        let mut outputs = vec![Vec::new(); b];
        if config.max_new_tokens == 0 {
            return Ok(outputs);
        }
        let mut batch = DecodeBatch::new(self);
        let keys: Vec<(usize, Sampling)> = (0..b).map(|row| (row, config.sampling)).collect();
        let mut tokens = batch.admit(self, embeds, positions, lengths, &keys)?;
        loop {
            for &(row, token) in &tokens {
                outputs[row].push(token);
                on_token(row, token);
            }
            batch.remove(|&row, last| {
                outputs[row].len() >= config.max_new_tokens || config.eos_token_ids.contains(&last)
            })?;
            if batch.is_empty() {
                return Ok(outputs);
            }
            tokens = batch.step(self)?;
        }
    }

    /// Generation without the cache: the whole sequence again at every step.
    fn generate_uncached(
        &self,
        embeds: Tensor<B, 3>,
        positions: Vec<i64>,
        config: &GenerationConfig,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        self.check_prompt_length(embeds.dims()[1])?;
        let mut rng = seeded_rng(config.sampling);
        let mut next_pos = positions.iter().copied().max().unwrap_or(-1) + 1;
        let mut out = Vec::new();
        let (mut all_embeds, mut all_pos) = (embeds, positions);
        while out.len() < config.max_new_tokens {
            let hidden = self.forward_hidden(all_embeds.clone(), &[all_pos.clone()], None, None)?;
            let last = all_pos.len() - 1;
            let token = pick(
                &self.logits_at(hidden, &[last])[0],
                config.sampling,
                &mut rng,
            )?;
            out.push(token);
            on_token(token);
            if config.eos_token_ids.contains(&token) {
                break;
            }
            all_embeds = Tensor::cat(vec![all_embeds, self.embed(&[vec![token]])?], 1);
            all_pos.push(next_pos);
            next_pos += 1;
        }
        Ok(out)
    }

    /// Row `r`'s logits at token `at[r]`, on the host, from the final hidden states
    /// `[batch, T, hidden]`: the head runs on those tokens only (generation needs no other
    /// logits, and the head is a large share of a prefill — a fifth of SmolLM2's weights).
    fn logits_at(&self, hidden: Tensor<B, 3>, at: &[usize]) -> Vec<Vec<f32>> {
        let [b, t, h] = hidden.dims();
        let index: Vec<i64> = at
            .iter()
            .enumerate()
            .map(|(r, &i)| (r * t + i) as i64)
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b]), &hidden.device());
        let picked = hidden.reshape([b * t, h]).select(0, index);
        let logits = self.head(picked.unsqueeze_dim::<3>(0));
        let v = logits.dims()[2];
        let data: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        data.chunks(v).map(<[f32]>::to_vec).collect()
    }

    /// Log-likelihood of each candidate continuation after `prompt`, in one padded batch.
    pub fn score(&self, prompt: &[u32], candidates: &[Vec<u32>]) -> Result<Vec<Score>> {
        if prompt.is_empty() {
            return Err(LlmError::Input("scoring needs a non-empty prompt".into()));
        }
        let positions: Vec<i64> = (0..prompt.len() as i64).collect();
        self.score_after_embeds(self.embed(&[prompt.to_vec()])?, &positions, candidates)
    }

    /// Log-likelihood of each candidate continuation (token ids) after a prompt given as
    /// embeddings `[1, P, hidden]` with its position ids (e.g. text with visual tokens spliced
    /// in): the candidates run as one right-padded batch, continuing from the largest prompt
    /// position.
    pub fn score_after_embeds(
        &self,
        prompt: Tensor<B, 3>,
        positions: &[i64],
        candidates: &[Vec<u32>],
    ) -> Result<Vec<Score>> {
        let [b1, p, d] = prompt.dims();
        if b1 != 1 || p == 0 || positions.len() != p {
            return Err(LlmError::Input(format!(
                "scoring takes one non-empty prompt with one position per token (got [{b1}, {p}], {} positions)",
                positions.len()
            )));
        }
        self.check_prompt_length(p)?;
        if candidates.iter().any(Vec::is_empty) {
            return Err(LlmError::Input("a candidate continuation is empty".into()));
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let next = positions.iter().copied().max().unwrap_or(-1) + 1;
        let t = p + candidates.iter().map(Vec::len).max().unwrap_or(0);
        let b = candidates.len();
        let device = prompt.device();
        let mut rows = Vec::with_capacity(b);
        let mut all_positions = Vec::with_capacity(b);
        let mut pad = Vec::with_capacity(b * t);
        for c in candidates {
            let mut parts = vec![prompt.clone(), self.embed(std::slice::from_ref(c))?];
            let real = p + c.len();
            if real < t {
                parts.push(Tensor::zeros([1, t - real, d], &device));
            }
            rows.push(Tensor::cat(parts, 1));
            let mut q = positions.to_vec();
            q.extend((0..(t - p) as i64).map(|k| next + k));
            all_positions.push(q);
            pad.extend((0..t).map(|i| i >= real));
        }
        let padding = Tensor::<B, 2, Bool>::from_data(TensorData::new(pad, [b, t]), &device);
        let logits = self.forward(Tensor::cat(rows, 0), &all_positions, Some(padding), None)?;
        let logp = log_softmax(logits.cast(DType::F32), 2);
        let v = self.vocab_size();
        let data: Vec<f32> = logp.into_data().convert::<f32>().to_vec().expect("f32");
        Ok(candidates
            .iter()
            .enumerate()
            .map(|(bi, c)| {
                let sum: f64 = c
                    .iter()
                    .enumerate()
                    .map(|(j, &tok)| data[(bi * t + p + j - 1) * v + tok as usize] as f64)
                    .sum();
                Score {
                    sum,
                    mean: sum / c.len() as f64,
                    tokens: c.len(),
                }
            })
            .collect())
    }
}
