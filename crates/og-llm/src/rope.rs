//! Rotary position embeddings in transformers' `rotate_half` layout, for explicit position ids
//! (so segment-aware RoPE — tokens of one mask group sharing a position — is just a choice of
//! ids), with the `default`, `linear` and `llama3` frequency scalings.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::config::{LlamaConfig, RopeScaling};

/// Inverse frequencies `θ^(−2i/d)` (i < d/2), scaled as the config says; f32 as transformers
/// computes them.
pub fn inv_freq(config: &LlamaConfig) -> Vec<f32> {
    let d = config.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / d as f32;
            1.0 / (config.rope_theta as f32).powf(exponent)
        })
        .collect();
    match config.rope_scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        } => {
            let low_wavelen = old_len / low_freq_factor;
            let high_wavelen = old_len / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f as f64;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        (f as f64 / factor) as f32
                    } else {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * f as f64 / factor + smooth * f as f64) as f32
                    }
                })
                .collect()
        }
    }
}

/// cos and sign-folded sin tables for given positions: `sin` holds `−sin θ` in its first half
/// and `sin θ` in its second, so that [`apply`] needs no negation (`rotate_half`'s sign is in
/// the table, computed once per forward instead of once per layer). One row per token, shared
/// by the query and the key heads.
///
/// # Shapes
/// `positions`: batch × tokens → cos, sin `[batch, tokens, 1, head_dim]`
pub fn cos_sin<B: Backend>(
    inv_freq: &[f32],
    positions: &[Vec<i64>],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let b = positions.len();
    let t = positions.first().map_or(0, Vec::len);
    let half = inv_freq.len();
    let d = half * 2;
    let mut cos = vec![0f32; b * t * d];
    let mut sin = vec![0f32; b * t * d];
    let rows = cos
        .chunks_mut(d)
        .zip(sin.chunks_mut(d))
        .zip(positions.iter().flatten());
    for ((cos, sin), &p) in rows {
        for (i, &f) in inv_freq.iter().enumerate() {
            // f32 product, as transformers (autocast disabled, float32 matmul).
            let angle = p as f32 * f;
            let (s, c) = angle.sin_cos();
            cos[i] = c;
            cos[half + i] = c;
            sin[i] = -s;
            sin[half + i] = s;
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [b, t, 1, d]), device),
        Tensor::from_data(TensorData::new(sin, [b, t, 1, d]), device),
    )
}

/// `x·cos + rotate_half(x)·sin`, `rotate_half([x1, x2]) = [−x2, x1]`, with `sin` from
/// [`cos_sin`] (sign folded in: `[x2, x1]·[−sin, sin]`, the same numbers bit for bit); one
/// pass on the CPU backends ([`og_kernels::rope`]).
///
/// # Shapes
/// `x`: `[batch, tokens, heads, head_dim]` (the token-major layout a projection's output
/// reshapes to); cos/sin `[batch, tokens, 1, head_dim]` (shared by the heads) or of `x`'s shape.
pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    og_kernels::rope(x, cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_bands() {
        let mut c = LlamaConfig::tiny();
        c.head_dim = 64;
        c.rope_theta = 500_000.0;
        let plain = inv_freq(&c);
        c.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let scaled = inv_freq(&c);
        // High frequencies untouched, the lowest divided by the factor, the middle in between.
        assert_eq!(scaled[0], plain[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
        assert!(
            scaled
                .iter()
                .zip(&plain)
                .all(|(s, p)| s <= p && *s >= p / 8.0 - 1e-12)
        );
    }
}

/// Position ids for a token layout (paper 5.4.3, segment-aware 1-D RoPE): `segments[i]` is 0
/// for a token that stands alone (text, plain visual tokens, Global View rows) and k > 0 for a
/// token of mask group k. Each run of equal non-zero ids shares the position of its first
/// token; every other token advances the position by one. Computed on the real layout, so
/// the text before an image counts.
pub fn segment_positions(segments: &[u32]) -> Vec<i64> {
    let mut out = Vec::with_capacity(segments.len());
    let mut next = 0i64;
    let mut prev: Option<u32> = None;
    for &s in segments {
        if s != 0 && prev == Some(s) {
            out.push(next - 1);
        } else {
            out.push(next);
            next += 1;
        }
        prev = Some(s);
    }
    out
}

#[cfg(test)]
mod segment_tests {
    use super::segment_positions;

    #[test]
    fn groups_share_their_first_position() {
        // BOS, 2 text tokens, group 1 (3 tokens), group 2 (2 tokens), plain token, text.
        let segs = [0, 0, 0, 1, 1, 1, 2, 2, 0, 0];
        assert_eq!(segment_positions(&segs), vec![0, 1, 2, 3, 3, 3, 4, 4, 5, 6]);
        assert_eq!(segment_positions(&[0, 0, 0]), vec![0, 1, 2]);
        assert_eq!(segment_positions(&[]), Vec::<i64>::new());
        // Adjacent groups with different ids do not merge; a group may start the sequence.
        assert_eq!(segment_positions(&[3, 3, 4, 4, 4]), vec![0, 0, 1, 1, 1]);
    }
}
