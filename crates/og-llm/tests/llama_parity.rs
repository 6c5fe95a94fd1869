//! Llama equal to transformers' LlamaForCausalLM on committed tiny checkpoints
//! (scripts/make_llm_fixtures.py): logits within 1e-4 with standard and segment-aware position
//! ids and a right-padded row; greedy generations token for token, with and without the cache.

use burn::backend::{Flex, NdArray};
use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use og_llm::{GenerationConfig, LlamaForCausalLM, Sampling};
use og_weights::Weights;

type B = NdArray<f32>;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llm")
}

fn rows(w: &Weights, name: &str) -> Vec<Vec<i64>> {
    let (v, s) = w.i64(name).unwrap();
    v.chunks(s[1]).map(|c| c.to_vec()).collect()
}

fn check(name: &str) {
    check_dir(name, &fixtures().join(name));
}

/// The model in `dir` gives the logits transformers gave for fixture `name`, on NdArray and on
/// Flex (where og-kernels' fused paths run).
fn check_dir(name: &str, dir: &std::path::Path) {
    check_dir_on::<B>(name, dir);
    check_dir_on::<Flex<f32>>(name, dir);
}

fn check_dir_on<B: Backend>(name: &str, dir: &std::path::Path) {
    let device = Default::default();
    let model = LlamaForCausalLM::<B>::load_hf(dir, &device).unwrap();
    let io = Weights::open(fixtures().join(format!("{name}_io.safetensors"))).unwrap();
    let ids: Vec<Vec<u32>> = rows(&io, "input_ids")
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect();
    let mask = rows(&io, "attention_mask");
    let valid: Vec<usize> = mask
        .iter()
        .map(|r| r.iter().filter(|&&m| m == 1).count())
        .collect();
    let padding: Vec<bool> = mask.iter().flatten().map(|&m| m == 0).collect();
    for (pos_name, logit_name) in [
        ("position_ids", "logits"),
        ("seg_position_ids", "seg_logits"),
    ] {
        let positions = rows(&io, pos_name);
        let pad =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(padding.clone(), [2, 10]), &device);
        let logits = model
            .forward(model.embed(&ids).unwrap(), &positions, Some(pad), None)
            .unwrap();
        let want: Tensor<B, 3> = io.tensor(logit_name, [2, 10, 64], &device).unwrap();
        for (b, &n) in valid.iter().enumerate() {
            let d: f32 = (logits.clone().slice([b..b + 1, 0..n])
                - want.clone().slice([b..b + 1, 0..n]))
            .abs()
            .max()
            .into_scalar()
            .elem::<f32>();
            assert!(d < 1e-4, "{name} {pos_name} row {b}: logits differ by {d}");
        }
    }
    let greedy: Vec<u32> = rows(&io, "greedy")[0].iter().map(|&x| x as u32).collect();
    for use_cache in [true, false] {
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            sampling: Sampling::Greedy,
            eos_token_ids: vec![],
            use_cache,
        };
        let mut streamed = Vec::new();
        let out = model
            .generate(&greedy[..5], &cfg, |t| streamed.push(t))
            .unwrap();
        assert_eq!(out, greedy[5..], "{name} greedy (cache: {use_cache})");
        assert_eq!(streamed, out);
    }
}

#[test]
fn gqa_untied_default_rope() {
    check("gqa");
}

#[test]
fn llama3_rope_tied_head_biases_head_dim() {
    check("llama3");
}

#[test]
fn linear_rope_old_config_spelling() {
    check("linear_old");
}

#[test]
fn scoring_is_consistent_and_padding_free() {
    let device = Default::default();
    let model = LlamaForCausalLM::<B>::load_hf(fixtures().join("gqa"), &device).unwrap();
    let prompt = [5u32, 9, 17];
    let cands = vec![vec![3u32, 4, 8, 20], vec![11u32], vec![40u32, 41]];
    let together = model.score(&prompt, &cands).unwrap();
    for (c, s) in cands.iter().zip(&together) {
        let alone = model.score(&prompt, std::slice::from_ref(c)).unwrap()[0];
        assert!((alone.sum - s.sum).abs() < 1e-4, "padding changed a score");
        // Direct: sum of log-softmax of a full forward.
        let seq: Vec<u32> = prompt.iter().chain(c).copied().collect();
        let n = seq.len();
        let logits = model
            .forward(
                model.embed(std::slice::from_ref(&seq)).unwrap(),
                &[(0..n as i64).collect()],
                None,
                None,
            )
            .unwrap();
        let lp: Vec<f32> = burn::tensor::activation::log_softmax(logits, 2)
            .into_data()
            .to_vec()
            .unwrap();
        let direct: f64 = (0..c.len())
            .map(|j| lp[(prompt.len() + j - 1) * 64 + c[j] as usize] as f64)
            .sum();
        assert!((direct - s.sum).abs() < 1e-4);
        assert!((s.mean - s.sum / c.len() as f64).abs() < 1e-12);
    }
    assert!(model.score(&[], &cands).is_err());
    assert!(model.score(&prompt, &[vec![]]).is_err());
    assert!(
        model.embed(&[vec![64]]).is_err(),
        "out-of-vocabulary ids are errors"
    );
}

#[test]
fn sampling_is_seeded_and_stops_at_eos() {
    let device = Default::default();
    let model = LlamaForCausalLM::<B>::load_hf(fixtures().join("llama3"), &device).unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: 10,
        sampling: Sampling::TopP {
            temperature: 1.5,
            top_p: 0.9,
            seed: 7,
        },
        eos_token_ids: vec![],
        use_cache: true,
    };
    let a = model.generate(&[3, 4, 5], &cfg, |_| {}).unwrap();
    let b = model.generate(&[3, 4, 5], &cfg, |_| {}).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 10);
    // Declaring the third sampled token an EOS stops right after it.
    let stop = GenerationConfig {
        eos_token_ids: vec![a[2]],
        ..cfg
    };
    let c = model.generate(&[3, 4, 5], &stop, |_| {}).unwrap();
    let first = a.iter().position(|&t| t == a[2]).unwrap();
    assert_eq!(c, a[..=first]);
}

/// A right-padded batch of prompts of different lengths generates, row for row, what each
/// prompt generates alone — greedy and sampled, with an EOS that ends some rows early (their
/// cache rows dropped while the others decode on), positions that do not start at 0.
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    let device = Default::default();
    let model = LlamaForCausalLM::<B>::load_hf(fixtures().join("llama3"), &device).unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5], vec![9], vec![7, 1, 2, 8, 6], vec![11, 12]];
    let offsets = [0i64, 4, 2, 9];
    let t = prompts.iter().map(Vec::len).max().unwrap();
    let hidden = model.hidden_size();
    let mut rows = Vec::new();
    let mut positions = Vec::new();
    for (p, &off) in prompts.iter().zip(&offsets) {
        let mut parts = vec![model.embed(std::slice::from_ref(p)).unwrap()];
        if p.len() < t {
            parts.push(Tensor::zeros([1, t - p.len(), hidden], &device));
        }
        rows.push(Tensor::cat(parts, 1));
        // Padding positions hold junk: they must not matter.
        positions.push(
            (0..t as i64)
                .map(|i| if i < p.len() as i64 { off + i } else { 99 })
                .collect::<Vec<_>>(),
        );
    }
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let sampled = Sampling::TopP {
        temperature: 1.5,
        top_p: 0.9,
        seed: 3,
    };
    for sampling in [Sampling::Greedy, sampled] {
        let base = GenerationConfig {
            max_new_tokens: 8,
            sampling,
            eos_token_ids: vec![],
            use_cache: true,
        };
        let alone = |cfg: &GenerationConfig| -> Vec<Vec<u32>> {
            prompts
                .iter()
                .zip(&positions)
                .map(|(p, pos)| {
                    let e = model.embed(std::slice::from_ref(p)).unwrap();
                    model
                        .generate_from_embeds(e, pos[..p.len()].to_vec(), cfg, |_| {})
                        .unwrap()
                })
                .collect()
        };
        let free = alone(&base);
        // An EOS that one row emits early ends that row only.
        let cfg = GenerationConfig {
            eos_token_ids: vec![free[0][1]],
            ..base
        };
        let want = alone(&cfg);
        assert!(
            want.iter().any(|w| w.len() < 8),
            "some row stops early: {want:?}"
        );
        let mut streamed = vec![Vec::new(); prompts.len()];
        let got = model
            .generate_batch_from_embeds(
                Tensor::cat(rows.clone(), 0),
                &positions,
                &lengths,
                &cfg,
                |row, token| streamed[row].push(token),
            )
            .unwrap();
        assert_eq!(got, want, "{sampling:?}");
        assert_eq!(streamed, want);
    }
    // Mis-shaped batches are errors, not panics.
    let e = Tensor::cat(rows.clone(), 0);
    let cfg = GenerationConfig::default();
    assert!(
        model
            .generate_batch_from_embeds(e.clone(), &positions, &[3, 1, 0, 2], &cfg, |_, _| {})
            .is_err()
    );
    assert!(
        model
            .generate_batch_from_embeds(e.clone(), &positions, &[3, 1, 6, 2], &cfg, |_, _| {})
            .is_err()
    );
    assert!(
        model
            .generate_batch_from_embeds(e, &positions[..3], &lengths, &cfg, |_, _| {})
            .is_err()
    );
}

/// Continuous batching: prompts that join a running batch at different steps (longer and
/// shorter than those already decoding) and leave at different steps each generate what they
/// generate alone, greedy and sampled, on NdArray and on Flex.
#[test]
fn sequences_joining_and_leaving_a_batch_equal_each_alone() {
    joining_and_leaving::<B>();
    joining_and_leaving::<Flex<f32>>();
}

fn joining_and_leaving<B: Backend>() {
    let device = Default::default();
    let model = LlamaForCausalLM::<B>::load_hf(fixtures().join("llama3"), &device).unwrap();
    let prompts: Vec<Vec<u32>> = vec![
        vec![3, 4, 5],
        vec![9],
        vec![7, 1, 2, 8, 6, 10, 13],
        vec![11, 12],
        vec![2, 2, 3, 5],
    ];
    // (step the prompt joins at, tokens it generates)
    let plan = [(0usize, 6usize), (0, 2), (1, 5), (3, 7), (3, 1)];
    let sampled = Sampling::TopP {
        temperature: 1.5,
        top_p: 0.9,
        seed: 5,
    };
    for sampling in [Sampling::Greedy, sampled] {
        let want: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&plan)
            .map(|(p, &(_, n))| {
                let cfg = GenerationConfig {
                    max_new_tokens: n,
                    sampling,
                    ..GenerationConfig::default()
                };
                model.generate(p, &cfg, |_| {}).unwrap()
            })
            .collect();
        let mut got = vec![Vec::new(); prompts.len()];
        let mut batch = og_llm::DecodeBatch::<B, usize>::new(&model);
        for step in 0.. {
            let mut tokens = if batch.is_empty() {
                Vec::new()
            } else {
                batch.step(&model).unwrap()
            };
            let joining: Vec<usize> = (0..prompts.len()).filter(|&i| plan[i].0 == step).collect();
            for &i in &joining {
                let p = &prompts[i];
                let positions = vec![(0..p.len() as i64).collect::<Vec<_>>()];
                let e = model.embed(std::slice::from_ref(p)).unwrap();
                tokens.extend(
                    batch
                        .admit(&model, e, &positions, &[p.len()], &[(i, sampling)])
                        .unwrap(),
                );
            }
            for (i, token) in tokens {
                got[i].push(token);
            }
            batch.remove(|&i, _| got[i].len() >= plan[i].1).unwrap();
            if batch.is_empty() && step >= 3 {
                break;
            }
        }
        assert_eq!(got, want, "{sampling:?}");
    }
}

/// `save_pretrained` writes what `load_hf` reads back to transformers' logits (tied and untied
/// heads, biases, llama3 and linear RoPE in the old spelling — written back in the new one).
#[test]
fn save_pretrained_round_trips() {
    let device = Default::default();
    for name in ["gqa", "llama3", "linear_old"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = og_llm::LlamaConfig::from_hf_dir(fixtures().join(name)).unwrap();
        let model = LlamaForCausalLM::<B>::load_hf(fixtures().join(name), &device).unwrap();
        model.save_pretrained(dir.path(), &cfg).unwrap();
        assert_eq!(og_llm::LlamaConfig::from_hf_dir(dir.path()).unwrap(), cfg);
        check_dir(name, dir.path());
    }
    let cfg = og_llm::LlamaConfig::from_hf_dir(fixtures().join("gqa")).unwrap();
    let lora = LlamaForCausalLM::<B>::load_hf(fixtures().join("gqa"), &device)
        .unwrap()
        .with_lora(&og_llm::LoraConfig::paper())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(lora.save_pretrained(dir.path(), &cfg).is_err());
}
