//! Whole training steps against PyTorch (fixture: `scripts/make_train_fixtures.py`): the tiny
//! llava-hf model with a PEFT-equivalent LoRA on q/v and a training projector, three steps of
//! loss → backward → global-norm clip → AdamW, compared with transformers + peft +
//! `clip_grad_norm_` + `torch.optim.AdamW`: each step's loss and gradient norm, and every
//! trained tensor at the end.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::Tensor;
use og_llava::og_llm::LoraConfig;
use og_llava::{ImageInput, OgLlava, OgLlavaInput};
use og_train::Stage;
use og_train::optim::{AdamW, OptimState, ParamMut, freeze_for, grads_by_name, trainables};
use og_weights::Weights;

type B = Autodiff<NdArray<f32>>;

#[test]
fn three_steps_match_pytorch() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let fx = Weights::open(fixtures.join("train/step_parity.safetensors")).unwrap();
    let device = Default::default();
    let mut model =
        OgLlava::<B>::load_llava_hf(fixtures.join("vision/llava_tiny"), None, &device).unwrap();
    model.llm = model
        .llm
        .with_lora(&LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        })
        .unwrap();
    let mut model = freeze_for(model, Stage::Sft);
    for t in trainables(&mut model, Stage::Sft) {
        let name = format!("init.{}", t.name);
        match t.param {
            ParamMut::D1(p) => {
                let v: Tensor<B, 1> = fx.tensor(&name, p.val().dims(), &device).unwrap();
                *p = p.clone().map(|_| v.require_grad());
            }
            ParamMut::D2(p) => {
                let v: Tensor<B, 2> = fx.tensor(&name, p.val().dims(), &device).unwrap();
                *p = p.clone().map(|_| v.require_grad());
            }
        }
    }

    // The batch: labels ≠ -100 mark the supervised tokens.
    let (ids, shape) = fx.i64("input_ids").unwrap();
    let (mask, _) = fx.i64("attention_mask").unwrap();
    let (labels, _) = fx.i64("labels").unwrap();
    let t = shape[1];
    let pixels: Tensor<B, 4> = fx.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let mut inputs = Vec::new();
    let mut flags = Vec::new();
    let mut total = 0;
    for b in 0..2 {
        let n = mask[b * t..(b + 1) * t].iter().filter(|&&m| m == 1).count();
        inputs.push(OgLlavaInput {
            token_ids: ids[b * t..b * t + n].iter().map(|&x| x as u32).collect(),
            images: vec![ImageInput {
                pixel_values: pixels.clone().slice(b..b + 1),
                selection: None,
            }],
        });
        let f: Vec<bool> = labels[b * t..b * t + n]
            .iter()
            .map(|&l| l != -100)
            .collect();
        total += f.iter().filter(|&&x| x).count();
        flags.push(f);
    }

    let (losses, _) = fx.f32("losses").unwrap();
    let (norms, _) = fx.f32("grad_norms").unwrap();
    let opt = AdamW::default();
    let mut state = OptimState::default();
    for step in 0..losses.len() {
        let (sum, n) = model.loss_sum(&inputs, &flags).unwrap();
        assert_eq!(n, total);
        let loss = sum / total as f64;
        let value: f32 = loss.clone().into_scalar();
        assert!(
            (value - losses[step]).abs() < 1e-5 * losses[step].abs(),
            "step {}: loss {value}, PyTorch {}",
            step + 1,
            losses[step]
        );
        let grads = loss.backward();
        let grads = grads_by_name::<B>(&trainables(&mut model, Stage::Sft), &grads);
        let report = opt.step::<B>(
            trainables(&mut model, Stage::Sft),
            grads,
            &mut state,
            |_| 1e-2,
            Some(0.5),
        );
        assert!(
            (report.grad_norm as f32 - norms[step]).abs() < 1e-4 * norms[step],
            "step {}: gradient norm {}, PyTorch {}",
            step + 1,
            report.grad_norm,
            norms[step]
        );
    }
    // Step 1 clips (|g| ≈ 9 > 0.5): the clip factor is part of what matches.
    assert!(norms[0] > 0.5);
    let mut checked = 0;
    for t in trainables(&mut model, Stage::Sft) {
        let got: Vec<f32> = match t.param {
            ParamMut::D1(p) => p.val().into_data().to_vec().unwrap(),
            ParamMut::D2(p) => p.val().into_data().to_vec().unwrap(),
        };
        let (want, _) = fx.f32(&format!("final.{}", t.name)).unwrap();
        let (init, _) = fx.f32(&format!("init.{}", t.name)).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let moved = init
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{}: differs from PyTorch by {worst}", t.name);
        assert!(moved > 1e-3, "{}: PyTorch did not train it", t.name);
        checked += 1;
    }
    assert_eq!(
        checked, 8,
        "projector weights and biases, LoRA A and B on q and v"
    );
}
