//! Llama as transformers' `LlamaForCausalLM`: token embeddings, pre-RMSNorm decoder layers with
//! grouped-query attention and RoPE, SwiGLU MLP, final norm, tied or untied head. Field names
//! mirror HF's parameters.
//!
//! The forward takes input **embeddings** (so OG-Fusion's visual tokens can be spliced in) and
//! explicit **position ids** per token, plus a key-padding mask; attention is causal in
//! sequence order whatever the position ids say.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use og_kernels::CausalKeys;

use crate::config::LlamaConfig;
use crate::error::{LlmError, Result};
use crate::lora::LoraLinear;
use crate::rope;

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub o_proj: LoraLinear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// SwiGLU: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
}

#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    pub self_attn: LlamaAttention<B>,
    pub mlp: LlamaMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The decoder stack (`model.*` in HF checkpoints).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<LlamaDecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// Decoder plus language-model head. `lm_head` is `None` when tied to `embed_tokens`.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    pub model: LlamaModel<B>,
    pub lm_head: Option<Linear<B>>,
    inv_freq: Vec<f32>,
    vocab_size: usize,
    hidden_size: usize,
    max_positions: usize,
}

/// Keys and values of earlier tokens, per layer (after RoPE, before head repetition), and
/// which of those tokens are padding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// `[batch, past]`, true at padding.
    padding: Option<Tensor<B, 2, Bool>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            padding: None,
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.padding.as_ref().map_or(0, |p| p.dims()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of decoder layers the cache holds keys/values for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Number of cached sequences (0 before the first forward pass).
    pub fn batch(&self) -> usize {
        self.padding.as_ref().map_or(0, |p| p.dims()[0])
    }

    /// Keeps only the sequences at `rows` (indices into the batch, in the order given): a
    /// batch drops its finished sequences and decodes on with the rest. Key columns that are
    /// padding in every kept row (left by a longer sequence that has gone) are dropped too;
    /// what each sequence attends to is unchanged.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        let batch = self.batch();
        if let Some(&bad) = rows.iter().find(|&&r| r >= batch) {
            return Err(LlmError::Input(format!(
                "row {bad} is not in a cache of {batch} sequences"
            )));
        }
        let Some(padding) = self.padding.take() else {
            return Ok(());
        };
        let [_, len] = padding.dims();
        let device = padding.device();
        let pad = host_padding(padding);
        let columns: Vec<usize> = (0..len)
            .filter(|&j| rows.iter().any(|&r| !pad[r * len + j]))
            .collect();
        let kept: Vec<bool> = rows
            .iter()
            .flat_map(|&r| columns.iter().map(move |&j| r * len + j))
            .map(|i| pad[i])
            .collect();
        self.padding = Some(Tensor::from_data(
            TensorData::new(kept, [rows.len(), columns.len()]),
            &device,
        ));
        let rows = index_tensor(rows.iter().copied(), &device);
        let columns = (columns.len() < len).then(|| index_tensor(columns.into_iter(), &device));
        let keep = |x: &Tensor<B, 4>| {
            let x = x.clone().select(0, rows.clone());
            match &columns {
                Some(c) => x.select(2, c.clone()),
                None => x,
            }
        };
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = keep(k);
            *v = keep(v);
        }
        Ok(())
    }

    /// Appends the sequences of `other` after this cache's rows (a batch taking in newly
    /// prefilled sequences). The shorter key axis is lengthened with padding keys (zeros, never
    /// attended): attention reads keys by mask, and positions travel with the keys (RoPE is
    /// applied before caching), so a sequence continues exactly as it would alone.
    pub fn append(&mut self, other: KvCache<B>) -> Result<()> {
        if other.layers.len() != self.layers.len() {
            return Err(LlmError::Input(format!(
                "a cache of {} layers cannot join one of {}",
                other.layers.len(),
                self.layers.len()
            )));
        }
        if other.batch() == 0 {
            return Ok(());
        }
        if self.batch() == 0 {
            *self = other;
            return Ok(());
        }
        let len = self.len().max(other.len());
        let (mut mine, mut theirs) = (std::mem::take(&mut self.layers), other.layers);
        let padding = Tensor::cat(
            vec![
                pad_keys(self.padding.take().expect("a non-empty cache"), len),
                pad_keys(other.padding.expect("a non-empty cache"), len),
            ],
            0,
        );
        for (a, b) in mine.iter_mut().zip(theirs.iter_mut()) {
            if let (Some((ka, va)), Some((kb, vb))) = (a.take(), b.take()) {
                *a = Some((
                    Tensor::cat(vec![pad_values(ka, len), pad_values(kb, len)], 0),
                    Tensor::cat(vec![pad_values(va, len), pad_values(vb, len)], 0),
                ));
            }
        }
        self.layers = mine;
        self.padding = Some(padding);
        Ok(())
    }
}

/// The padding mask on the host, row-major (read through integers: bool tensors' element
/// type differs between backends).
fn host_padding<B: Backend>(padding: Tensor<B, 2, Bool>) -> Vec<bool> {
    padding
        .int()
        .into_data()
        .convert::<i64>()
        .iter::<i64>()
        .map(|v| v != 0)
        .collect()
}

fn index_tensor<B: Backend>(
    index: impl ExactSizeIterator<Item = usize>,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let n = index.len();
    Tensor::from_data(
        TensorData::new(index.map(|i| i as i64).collect(), [n]),
        device,
    )
}

/// `padding` `[batch, past]` lengthened to `len` keys with padding (true).
fn pad_keys<B: Backend>(padding: Tensor<B, 2, Bool>, len: usize) -> Tensor<B, 2, Bool> {
    let [b, past] = padding.dims();
    if past == len {
        return padding;
    }
    let extra = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(vec![true; b * (len - past)], [b, len - past]),
        &padding.device(),
    );
    Tensor::cat(vec![padding, extra], 1)
}

/// Cached keys or values `[batch, heads, past, head_dim]` lengthened to `len` with zeros.
fn pad_values<B: Backend>(x: Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
    let [b, h, past, d] = x.dims();
    if past == len {
        return x;
    }
    let zeros = Tensor::<B, 4>::zeros([b, h, len - past, d], &x.device()).cast(x.dtype());
    Tensor::cat(vec![x, zeros], 2)
}

impl LlamaConfig {
    /// A randomly initialised model (weights normally come from `load_hf`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LlamaForCausalLM<B>> {
        self.validate()?;
        let (h, hd) = (self.hidden_size, self.head_dim);
        // transformers' `_init_weights` for Llama: N(0, 0.02) for linear layers and embeddings
        // (what training from scratch needs; loading replaces it and never materialises it).
        let init = burn::nn::Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let lin = |i, o, bias| {
            LinearConfig::new(i, o)
                .with_bias(bias)
                .with_initializer(init.clone())
                .init(device)
        };
        let proj = |i, o, bias| LoraLinear::new(lin(i, o, bias));
        let norm = || {
            RmsNormConfig::new(h)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: proj(h, self.num_attention_heads * hd, self.attention_bias),
                    k_proj: proj(h, self.num_key_value_heads * hd, self.attention_bias),
                    v_proj: proj(h, self.num_key_value_heads * hd, self.attention_bias),
                    o_proj: proj(self.num_attention_heads * hd, h, self.attention_bias),
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: hd,
                },
                mlp: LlamaMlp {
                    gate_proj: proj(h, self.intermediate_size, self.mlp_bias),
                    up_proj: proj(h, self.intermediate_size, self.mlp_bias),
                    down_proj: proj(self.intermediate_size, h, self.mlp_bias),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Ok(LlamaForCausalLM {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, h)
                    .with_initializer(init.clone())
                    .init(device),
                layers,
                norm: norm(),
            },
            lm_head: (!self.tie_word_embeddings).then(|| lin(h, self.vocab_size, false)),
            inv_freq: rope::inv_freq(self),
            vocab_size: self.vocab_size,
            max_positions: self.max_position_embeddings,
            hidden_size: h,
        })
    }
}

/// RoPE tables of one forward pass, `[batch, tokens, 1, head_dim]` each: shared by the query
/// and the key heads (see [`rope::cos_sin`]).
type RopeTables<B> = (Tensor<B, 4>, Tensor<B, 4>);

impl<B: Backend> LlamaAttention<B> {
    /// # Shapes
    /// `x` `[batch, tokens, hidden]`; `rope`: tables `[batch, tokens, heads, head_dim]`;
    /// `keys`: which keys each query sees.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        keys: &CausalKeys<B>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let x = x.reshape([b * t, h]);
        // RoPE in the projection's token-major layout, then heads first for attention.
        let (cos, sin) = rope;
        let heads = |y: Tensor<B, 2>, n: usize| {
            rope::apply(y.reshape([b, t, n, hd]), cos.clone(), sin.clone()).swap_dims(1, 2)
        };
        let q = heads(self.q_proj.forward(x.clone()), nh);
        let mut k = heads(self.k_proj.forward(x.clone()), nkv);
        let mut v = self
            .v_proj
            .forward(x)
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let out = og_kernels::causal_attention(q, k, v, keys);
        self.o_proj.forward(out).reshape([b, t, h])
    }
}

impl<B: Backend> LlamaMlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        let x = x.reshape([b * t, h]);
        let y = og_kernels::silu_mul(self.gate_proj.forward(x.clone()), self.up_proj.forward(x));
        self.down_proj.forward(y).reshape([b, t, h])
    }
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// The RoPE tables of one forward pass.
    fn rope_tables(&self, positions: &[Vec<i64>], device: &B::Device) -> RopeTables<B> {
        rope::cos_sin::<B>(&self.inv_freq, positions, device)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The context length (`max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Raises (or lowers) the prompt length [`Self::check_prompt_length`] accepts.
    pub fn set_max_positions(&mut self, n: usize) {
        self.max_positions = n;
    }

    /// Refuses a prompt of `tokens` tokens longer than the context: beyond it the positions
    /// were never trained, and its attention scores grow as the square of the length.
    pub fn check_prompt_length(&self, tokens: usize) -> Result<()> {
        if tokens > self.max_positions {
            return Err(LlmError::Input(format!(
                "the prompt is {tokens} tokens, longer than the model's context of {} \
                 (max_position_embeddings; `--context N` accepts longer prompts)",
                self.max_positions
            )));
        }
        Ok(())
    }

    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Token embeddings `[batch, tokens, hidden]` of token ids.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Tensor<B, 3>> {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        if ids.iter().any(|r| r.len() != t) {
            return Err(LlmError::Input(
                "token id rows have different lengths".into(),
            ));
        }
        if let Some(&bad) = ids
            .iter()
            .flatten()
            .find(|&&i| i as usize >= self.vocab_size)
        {
            return Err(LlmError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        let device = self.model.embed_tokens.weight.device();
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
        Ok(self.model.embed_tokens.forward(ids))
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - `embeds`: `[batch, tokens, hidden]`
    /// - `positions`: batch × tokens position ids (any values: segment-aware RoPE repeats them)
    /// - `padding`: `[batch, tokens]`, true at padding keys (never attended); `None`: none
    /// - output: `[batch, tokens, vocab]`
    ///
    /// With a cache, earlier tokens' keys/values are reused and the new ones appended.
    pub fn forward(
        &self,
        embeds: Tensor<B, 3>,
        positions: &[Vec<i64>],
        padding: Option<Tensor<B, 2, Bool>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let hidden = self.forward_hidden(embeds, positions, padding, cache)?;
        Ok(self.head(hidden))
    }

    /// The final-norm hidden states, before the head.
    pub fn forward_hidden(
        &self,
        embeds: Tensor<B, 3>,
        positions: &[Vec<i64>],
        padding: Option<Tensor<B, 2, Bool>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let [b, t, h] = embeds.dims();
        let device = embeds.device();
        if h != self.hidden_size {
            return Err(LlmError::Input(format!(
                "embeddings have width {h}, the model {}",
                self.hidden_size
            )));
        }
        if positions.len() != b || positions.iter().any(|r| r.len() != t) {
            return Err(LlmError::Input(format!(
                "position ids must be {b} rows of {t} (one per token)"
            )));
        }
        let padding = match padding {
            Some(p) if p.dims() != [b, t] => {
                return Err(LlmError::Input(format!(
                    "padding mask is {:?}, expected [{b}, {t}]",
                    p.dims()
                )));
            }
            Some(p) => p,
            None => Tensor::<B, 2, Bool>::from_data(
                TensorData::new(vec![false; b * t], [b, t]),
                &device,
            ),
        };
        let past = cache.as_ref().map_or(0, |c| c.len());
        let key_padding = match cache.as_deref_mut() {
            Some(c) => {
                let all = match c.padding.take() {
                    Some(prev) => Tensor::cat(vec![prev, padding], 1),
                    None => padding,
                };
                c.padding = Some(all.clone());
                all
            }
            None => padding,
        };
        // Causal in sequence order: query i (at past + i) sees keys j ≤ past + i.
        let keys = CausalKeys::new(past, t, key_padding);
        let rope = self.rope_tables(positions, &device);
        let mut x = embeds;
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let a = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &rope,
                &keys,
                slot,
            );
            x = x + a;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        Ok(self.model.norm.forward(x))
    }

    /// The language-model head (tied to the embeddings when there is no `lm_head`).
    ///
    /// # Shapes
    /// `[batch, tokens, hidden]` → `[batch, tokens, vocab]`
    pub fn head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h] = hidden.dims();
        let x = hidden.reshape([b * t, h]);
        let logits = match &self.lm_head {
            Some(head) => {
                og_kernels::linear(x, head.weight.val(), head.bias.as_ref().map(|b| b.val()))
            }
            None => og_kernels::matmul(x, self.model.embed_tokens.weight.val().transpose()),
        };
        logits.reshape([b, t, self.vocab_size])
    }
}
