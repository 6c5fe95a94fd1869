//! LoRA: a PEFT adapter (made by python peft on a fixture model) gives peft's logits; merging
//! keeps them; our adapters save and reload as PEFT adapters; only adapters train.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use og_llm::{LlamaForCausalLM, LoraConfig};
use og_weights::Weights;

type B = NdArray<f32>;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llm")
}

fn logits<BB: burn::tensor::backend::Backend>(
    m: &LlamaForCausalLM<BB>,
    ids: &[Vec<u32>],
) -> Tensor<BB, 3> {
    let pos: Vec<Vec<i64>> = ids.iter().map(|r| (0..r.len() as i64).collect()).collect();
    m.forward(m.embed(ids).unwrap(), &pos, None, None).unwrap()
}

fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn peft_adapter_matches_peft_and_merges() {
    let device = Default::default();
    let io = Weights::open(fixtures().join("gqa_lora_io.safetensors")).unwrap();
    let (v, _) = io.i64("input_ids").unwrap();
    let ids: Vec<Vec<u32>> = v
        .chunks(10)
        .map(|c| c.iter().map(|&x| x as u32).collect())
        .collect();
    let want: Tensor<B, 3> = io.tensor("logits", [2, 10, 64], &device).unwrap();
    let base = LlamaForCausalLM::<B>::load_hf(fixtures().join("gqa"), &device).unwrap();
    let d_base = max_diff(logits(&base, &ids), want.clone());
    assert!(
        d_base > 1e-2,
        "the adapter must matter for this test ({d_base})"
    );
    let adapted = base.load_peft_adapter(fixtures().join("gqa_lora")).unwrap();
    let d = max_diff(logits(&adapted, &ids), want.clone());
    assert!(d < 1e-4, "adapter logits differ from peft by {d}");
    let merged = adapted.clone().merge_lora();
    let d = max_diff(logits(&merged, &ids), want.clone());
    assert!(d < 1e-4, "merged logits differ from peft by {d}");

    // Save as a PEFT adapter and load it back.
    let dir = tempfile::tempdir().unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    let mut adapted = adapted;
    adapted
        .save_peft_adapter(dir.path(), &cfg, "fixtures/llm/gqa")
        .unwrap();
    let back = LlamaForCausalLM::<B>::load_hf(fixtures().join("gqa"), &device)
        .unwrap()
        .load_peft_adapter(dir.path())
        .unwrap();
    assert!(max_diff(logits(&back, &ids), want) < 1e-4);
}

#[test]
fn only_adapters_train_and_start_at_zero() {
    type AB = Autodiff<NdArray<f32>>;
    let device = Default::default();
    let base = LlamaForCausalLM::<AB>::load_hf(fixtures().join("gqa"), &device).unwrap();
    let ids = vec![vec![5u32, 9, 17, 3]];
    let before: Vec<f32> = logits(&base, &ids).into_data().to_vec().unwrap();
    let cfg = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "o_proj".into(), "up_proj".into()],
    };
    let m = base.with_lora(&cfg).unwrap();
    let out = logits(&m, &ids);
    let after: Vec<f32> = out.clone().into_data().to_vec().unwrap();
    // B = 0 at initialisation; dropout is active under autodiff but only on the adapter input.
    assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() < 1e-5));
    let grads = out.sum().backward();
    let layer = &m.model.layers[0];
    let a = layer.self_attn.q_proj.lora.as_ref().unwrap();
    assert!(a.lora_b.grad(&grads).is_some(), "lora_B trains");
    assert!(
        layer.self_attn.q_proj.base.weight.grad(&grads).is_none(),
        "base frozen"
    );
    assert!(
        layer.self_attn.k_proj.lora.is_none()
            && layer.self_attn.k_proj.base.weight.grad(&grads).is_none()
    );
    assert!(
        m.model.embed_tokens.weight.grad(&grads).is_none(),
        "embeddings frozen"
    );
    assert!(
        m.lm_head.as_ref().unwrap().weight.grad(&grads).is_none(),
        "head frozen"
    );
    assert!(
        layer.input_layernorm.gamma.grad(&grads).is_none(),
        "norms frozen"
    );
}

#[test]
fn unsupported_adapters_are_errors() {
    for (json, needle) in [
        (
            r#"{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "use_rslora": true}"#,
            "rsLoRA",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4, "target_modules": ["qkv"]}"#,
            "qkv",
        ),
        (
            r#"{"peft_type": "IA3", "r": 4, "target_modules": ["q_proj"]}"#,
            "IA3",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 8}}"#,
            "rank_pattern",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4.5, "target_modules": ["q_proj"]}"#,
            "r: invalid type",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4, "target_modules": "q_proj"}"#,
            "target_modules",
        ),
        (
            r#"{"peft_type": "LORA", "target_modules": ["q_proj"]}"#,
            "missing r",
        ),
    ] {
        let e = LoraConfig::from_peft_json(&serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    let paper = LoraConfig::paper();
    assert_eq!((paper.r, paper.scale()), (128, 2.0));
}
