//! What trains, and how: named trainable parameters, AdamW with PyTorch's arithmetic and
//! per-group learning rates, clipping by the global gradient norm, warm-up + cosine schedule.
//!
//! Parameters are addressed by name (HF names: `multi_modal_projector.linear_1.weight`,
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, …) rather than by burn's
//! `ParamId`, which a reloaded model does not keep: optimiser state saved by name restores
//! exactly on resume. Tensors keep burn's layout (`Linear` weights `[in, out]`).

use std::collections::BTreeMap;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor, TensorData};
use og_llava::OgLlava;

use crate::config::Stage;

/// Parameter groups with their own learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Connector,
    Lora,
}

pub use og_weights::ParamMut;

/// A trainable parameter, its name and its group.
pub struct Trainable<'a, B: Backend> {
    pub name: String,
    pub group: Group,
    pub param: ParamMut<'a, B>,
}

/// The tensors that train in `stage`, in a fixed order: the connector's (MLP, delimiter,
/// learned PE) in both stages, plus every LoRA A and B in SFT. The vision tower and every base
/// weight of the LLM are frozen by [`freeze_for`] and never listed.
pub fn trainables<B: Backend>(model: &mut OgLlava<B>, stage: Stage) -> Vec<Trainable<'_, B>> {
    let mut v: Vec<Trainable<'_, B>> = model
        .connector
        .named_params_mut()
        .into_iter()
        .map(|(name, param)| Trainable {
            name,
            group: Group::Connector,
            param,
        })
        .collect();
    if stage == Stage::Sft {
        v.extend(
            model
                .llm
                .lora_params_mut()
                .into_iter()
                .map(|(name, param)| Trainable {
                    name,
                    group: Group::Lora,
                    param,
                }),
        );
    }
    v
}

/// Freezes what must not train: the vision tower always, the whole LLM in alignment, the
/// LLM's base weights in SFT (adapters attached by `with_lora` stay trainable). The released
/// code leaves its mask token untrained in stage 1; here the delimiter trains in both stages.
pub fn freeze_for<B: Backend>(mut model: OgLlava<B>, stage: Stage) -> OgLlava<B> {
    use burn::module::Module;
    model.vision = model.vision.no_grad();
    if stage == Stage::Align {
        model.llm = model.llm.no_grad();
    }
    model
}

/// Optimiser settings (PyTorch's AdamW semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// PyTorch's β = (0.9, 0.999) and ε = 1e-8, with the paper's weight decay 0.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
}

/// AdamW state: the step count, the moments by parameter name, and f32 master copies of the
/// parameters the model holds in a lower precision (bf16 mixed precision; empty in f32). The
/// moments are always f32.
#[derive(Debug, Clone)]
pub struct OptimState<B: Backend> {
    pub step: usize,
    pub moments: BTreeMap<String, Moments<B>>,
    pub master: BTreeMap<String, Tensor<B, 1>>,
}

impl<B: Backend> OptimState<B> {
    /// A copy on `device`.
    pub fn to_device(&self, device: &B::Device) -> Self {
        Self {
            step: self.step,
            moments: self
                .moments
                .iter()
                .map(|(k, m)| {
                    (
                        k.clone(),
                        Moments {
                            exp_avg: m.exp_avg.clone().to_device(device),
                            exp_avg_sq: m.exp_avg_sq.clone().to_device(device),
                        },
                    )
                })
                .collect(),
            master: self
                .master
                .iter()
                .map(|(k, m)| (k.clone(), m.clone().to_device(device)))
                .collect(),
        }
    }

    /// Checks state read from a checkpoint against the parameters it will update (`params`:
    /// name and element count): every moment and master copy must name one of them and hold
    /// its element count.
    pub fn check(&self, params: &[(String, usize)]) -> std::result::Result<(), String> {
        let sizes: BTreeMap<&str, usize> = params.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        let tensors = self.moments.iter().flat_map(|(name, m)| {
            [
                ("exp_avg", name, &m.exp_avg),
                ("exp_avg_sq", name, &m.exp_avg_sq),
            ]
        });
        let masters = self.master.iter().map(|(name, t)| ("master", name, t));
        for (kind, name, t) in tensors.chain(masters) {
            let len = t.dims()[0];
            match sizes.get(name.as_str()) {
                None => {
                    return Err(format!(
                        "{kind}.{name}: no trainable parameter of that name"
                    ));
                }
                Some(&k) if k != len => {
                    return Err(format!(
                        "{kind}.{name}: {len} values for a parameter of {k}"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl<B: Backend> Default for OptimState<B> {
    fn default() -> Self {
        Self {
            step: 0,
            moments: BTreeMap::new(),
            master: BTreeMap::new(),
        }
    }
}

/// What one optimiser step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// The factor gradients were multiplied by (1 when not clipped).
    pub clip_coef: f64,
}

/// The gradients of `params` (flattened, on the inner backend, in f32 whatever the model's
/// dtype: accumulation, the all-reduce and clipping work in f32) by name; parameters that got
/// no gradient (unused in this batch) are absent.
pub fn grads_by_name<B: AutodiffBackend>(
    params: &[Trainable<'_, B>],
    grads: &B::Gradients,
) -> BTreeMap<String, Tensor<B::InnerBackend, 1>> {
    params
        .iter()
        .filter_map(|t| {
            let g = match &t.param {
                ParamMut::D1(x) => x.val().grad(grads),
                ParamMut::D2(x) => x.val().grad(grads).map(|g| g.reshape([-1])),
            };
            g.map(|g| (t.name.clone(), g.cast(DType::F32)))
        })
        .collect()
}

/// Adds `more` into `acc` (gradient accumulation over micro-batches).
pub fn accumulate<B: Backend>(
    acc: &mut BTreeMap<String, Tensor<B, 1>>,
    more: BTreeMap<String, Tensor<B, 1>>,
) {
    for (k, g) in more {
        match acc.remove(&k) {
            Some(a) => acc.insert(k, a + g),
            None => acc.insert(k, g),
        };
    }
}

/// Global L2 norm of `grads` and PyTorch `clip_grad_norm_`'s factor
/// `min(1, max_norm / (norm + 1e-6))` (1 without `max_norm`). Burn's own clipping works per
/// tensor; see the test `global_clipping_differs_from_per_tensor`.
pub fn global_clip<B: Backend>(grads: &[Tensor<B, 1>], max_norm: Option<f64>) -> (f64, f64) {
    let sq: f64 = grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum().into_scalar().elem::<f64>())
        .sum();
    let norm = sq.sqrt();
    let coef = match max_norm {
        Some(m) => (m / (norm + 1e-6)).min(1.0),
        None => 1.0,
    };
    (norm, coef)
}

impl AdamW {
    /// One step over `params` with the gradients in `grads` (by name; parameters without a
    /// gradient — unused in this batch — are skipped, as PyTorch skips `grad is None`). `lr`
    /// gives each group's learning rate.
    pub fn step<B: AutodiffBackend>(
        &self,
        params: Vec<Trainable<'_, B>>,
        mut grads: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
        state: &mut OptimState<B::InnerBackend>,
        lr: impl Fn(Group) -> f64,
        max_grad_norm: Option<f64>,
    ) -> StepReport {
        let with_grad: Vec<(Trainable<'_, B>, Tensor<B::InnerBackend, 1>)> = params
            .into_iter()
            .filter_map(|t| grads.remove(&t.name).map(|g| (t, g)))
            .collect();
        let flat: Vec<Tensor<B::InnerBackend, 1>> =
            with_grad.iter().map(|(_, g)| g.clone()).collect();
        let (grad_norm, clip_coef) = global_clip(&flat, max_grad_norm);
        state.step += 1;
        let t = state.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (tr, g) in with_grad {
            let g = if max_grad_norm.is_some() {
                g * clip_coef
            } else {
                g
            };
            let lr = lr(tr.group);
            let m = state
                .moments
                .entry(tr.name.clone())
                .or_insert_with(|| Moments {
                    exp_avg: g.zeros_like(),
                    exp_avg_sq: g.zeros_like(),
                });
            m.exp_avg = m.exp_avg.clone() * self.beta1 + g.clone() * (1.0 - self.beta1);
            m.exp_avg_sq = m.exp_avg_sq.clone() * self.beta2 + g.clone() * g * (1.0 - self.beta2);
            let denom = m.exp_avg_sq.clone().sqrt() / bc2_sqrt + self.eps;
            let update = m.exp_avg.clone() / denom * (lr / bc1);
            let decay = 1.0 - lr * self.weight_decay;
            // The value the update applies to: the parameter itself in f32, else its f32 master
            // copy (made from the parameter at its first step).
            let (old, dtype, shape) = match &tr.param {
                ParamMut::D1(p) => (p.val().inner(), p.val().dtype(), vec![p.val().dims()[0]]),
                ParamMut::D2(p) => {
                    let v = p.val().inner();
                    (v.clone().reshape([-1]), v.dtype(), v.dims().to_vec())
                }
            };
            let old = if dtype == DType::F32 {
                old
            } else {
                state
                    .master
                    .remove(&tr.name)
                    .unwrap_or_else(|| old.cast(DType::F32))
            };
            let new = old * decay - update;
            if dtype != DType::F32 {
                state.master.insert(tr.name.clone(), new.clone());
            }
            let new = new.cast(dtype);
            match tr.param {
                ParamMut::D1(p) => {
                    *p = p.clone().map(|_| Tensor::from_inner(new).require_grad());
                }
                ParamMut::D2(p) => {
                    let new = new.reshape([shape[0], shape[1]]);
                    *p = p.clone().map(|_| Tensor::from_inner(new).require_grad());
                }
            }
        }
        StepReport {
            grad_norm,
            clip_coef,
        }
    }
}

/// Linear warm-up over `ceil(warmup_ratio × total)` steps, then cosine decay to 0 at `total`
/// (transformers' `get_cosine_schedule_with_warmup`). `step` counts from 0.
pub fn lr_at(base: f64, step: usize, total: usize, warmup_ratio: f64) -> f64 {
    let warmup = (warmup_ratio * total as f64).ceil() as usize;
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Saves/loads optimiser state as host tensors by name (for checkpoints).
pub fn state_to_host<B: Backend>(state: &OptimState<B>) -> Vec<og_weights::SaveTensor> {
    let mut v = Vec::new();
    for (name, m) in &state.moments {
        v.push(og_weights::SaveTensor::from_tensor(
            format!("exp_avg.{name}"),
            m.exp_avg.clone(),
        ));
        v.push(og_weights::SaveTensor::from_tensor(
            format!("exp_avg_sq.{name}"),
            m.exp_avg_sq.clone(),
        ));
    }
    for (name, m) in &state.master {
        v.push(og_weights::SaveTensor::from_tensor(
            format!("master.{name}"),
            m.clone(),
        ));
    }
    v
}

pub fn state_from_weights<B: Backend>(
    w: &og_weights::Weights,
    step: usize,
    device: &B::Device,
) -> og_weights::Result<OptimState<B>> {
    let mut moments = BTreeMap::new();
    let mut master = BTreeMap::new();
    // Optimiser state is f32 whatever the device's default dtype.
    let load = |n: &str| -> og_weights::Result<Tensor<B, 1>> {
        let (v, _) = w.f32(n)?;
        let len = v.len();
        Ok(Tensor::from_data(
            TensorData::new(v, [len]),
            (device, DType::F32),
        ))
    };
    for name in w.names() {
        if let Some(param) = name.strip_prefix("master.") {
            master.insert(param.to_string(), load(name)?);
        }
        let Some(param) = name.strip_prefix("exp_avg.") else {
            continue;
        };
        moments.insert(
            param.to_string(),
            Moments {
                exp_avg: load(name)?,
                exp_avg_sq: load(&format!("exp_avg_sq.{param}"))?,
            },
        );
    }
    Ok(OptimState {
        step,
        moments,
        master,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Param;

    type I = NdArray<f32>;
    type A = Autodiff<I>;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert_eq!(lr_at(1.0, 0, 100, 0.06), 0.0);
        assert!((lr_at(1.0, 3, 100, 0.06) - 0.5).abs() < 1e-12);
        assert!((lr_at(1.0, 6, 100, 0.06) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 53, 100, 0.06) - 0.5).abs() < 1e-12);
        assert!(lr_at(1.0, 100, 100, 0.06).abs() < 1e-12);
        assert_eq!(lr_at(2.0, 0, 10, 0.0), 2.0);
    }

    /// PyTorch `clip_grad_norm_` scales every gradient by one factor computed from the norm of
    /// all of them; clipping each tensor to the max norm (burn's `GradientClipping::Norm`)
    /// gives a different, direction-changing result.
    #[test]
    fn global_clipping_differs_from_per_tensor() {
        let device = Default::default();
        let a = Tensor::<I, 1>::from_floats([3.0, 4.0], &device); // norm 5
        let b = Tensor::<I, 1>::from_floats([0.0, 0.1], &device); // norm 0.1
        let (norm, coef) = global_clip(&[a.clone(), b.clone()], Some(0.3));
        assert!((norm - (25.01f64).sqrt()).abs() < 1e-6);
        let clipped_b: Vec<f32> = (b.clone() * coef).into_data().to_vec().unwrap();
        // Global: b shrinks with a (coef ≈ 0.06). Per tensor: b (norm 0.1 < 0.3) is untouched.
        assert!((clipped_b[1] - 0.1 * coef as f32).abs() < 1e-7);
        assert!(clipped_b[1] < 0.01);
        let (_, per_tensor_b) = global_clip(&[b], Some(0.3));
        assert_eq!(per_tensor_b, 1.0);
        assert_eq!(global_clip(&[a], None).1, 1.0);
    }

    /// Two AdamW steps on a 2-element parameter equal PyTorch's AdamW (values computed with
    /// torch 2.15: lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, gradient 2·p).
    #[test]
    fn adamw_matches_pytorch_arithmetic() {
        let device = Default::default();
        let mut p = Param::from_tensor(Tensor::<A, 1>::from_floats([1.0, -2.0], &device));
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut state = OptimState::default();
        for _ in 0..2 {
            let loss = p.val().powi_scalar(2).sum();
            let tr = vec![Trainable {
                name: "p".into(),
                group: Group::Connector,
                param: ParamMut::D1(&mut p),
            }];
            let grads = grads_by_name::<A>(&tr, &loss.backward());
            opt.step::<A>(tr, grads, &mut state, |_| 0.1, None);
        }
        let v: Vec<f32> = p.val().into_data().to_vec().unwrap();
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01); two steps of (p**2).sum().
        let want = [0.798_519_1f32, -1.796_272_6];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{v:?} vs {want:?}");
        }
        assert_eq!(state.step, 2);
    }

    /// A bf16 parameter whose every update is below bf16's resolution still moves: the update
    /// goes to the f32 master copy, and the parameter is its rounding. Updating the bf16
    /// tensor itself would leave it at 1.0 forever.
    #[test]
    fn bf16_parameters_train_through_f32_master_weights() {
        type F = Autodiff<burn::backend::Flex<f32>>;
        let device = Default::default();
        let init = Tensor::<F, 1>::from_data(
            TensorData::new(vec![1.0f32, -1.0], [2]),
            (&device, DType::BF16),
        );
        let mut p = Param::from_tensor(init);
        let opt = AdamW::default();
        let mut state = OptimState::default();
        // lr 1e-3 with a constant gradient: Adam moves by ~1e-3 a step, while bf16's spacing
        // around 1 is 2^-8 ≈ 3.9e-3 (below) and 2^-7 (above).
        for _ in 0..20 {
            let loss = p.val().sum();
            let tr = vec![Trainable {
                name: "p".into(),
                group: Group::Connector,
                param: ParamMut::D1(&mut p),
            }];
            let grads = grads_by_name::<F>(&tr, &loss.backward());
            assert_eq!(grads["p"].dtype(), DType::F32);
            opt.step::<F>(tr, grads, &mut state, |_| 1e-3, None);
        }
        assert_eq!(p.val().dtype(), DType::BF16);
        let master: Vec<f32> = state.master["p"].clone().into_data().to_vec().unwrap();
        assert!((master[0] - 0.98).abs() < 1e-4, "{master:?}");
        assert!((master[1] + 1.02).abs() < 1e-4, "{master:?}");
        let v: Vec<f32> = p.val().into_data().convert::<f32>().to_vec().unwrap();
        assert!(
            v[0] < 0.99 && v[1] < -1.01,
            "the bf16 parameter did not move: {v:?}"
        );
        assert_eq!(state.moments["p"].exp_avg.dtype(), DType::F32);
    }
}
