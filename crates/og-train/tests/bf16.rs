//! bf16 mixed precision, on Flex (the CPU backend with bf16 arithmetic): the run follows the
//! same run in f32, the optimiser keeps f32 master weights, a resume is exact, and a backend
//! without bf16 is refused.
//!
//! This file is its own test process: a device's dtype is chosen once per process, so Flex is
//! bf16 here and the f32 reference runs on NdArray.

mod common;

use burn::backend::{Autodiff, Flex, NdArray};
use common::{config, losses_agree, same_checkpoint, sft, tiny_world};
use og_train::{Collective, RunOptions, Stage, TrainError, train, train_parallel};
use og_weights::Weights;

type F = Autodiff<Flex<f32>>;
type N = Autodiff<NdArray<f32>>;

fn bf16_round(x: f32) -> f32 {
    burn::tensor::bf16::from_f32(x).to_f32()
}

#[test]
fn bf16_training_follows_f32_with_f32_master_weights_and_resumes_exactly() {
    let dir = tiny_world();
    let root = dir.path();
    let run_config = |out: &str, precision: &str| {
        sft(
            root,
            out,
            &[
                "lora.dropout=0.0".into(),
                "epochs=2".into(),
                format!("precision={precision}"),
            ],
        )
    };
    let f32_run = train::<N>(
        &run_config("f32", "f32"),
        &Default::default(),
        &RunOptions::default(),
    )
    .expect("f32 run");
    let cfg = run_config("bf16", "bf16");
    let bf16_run = train::<F>(&cfg, &Default::default(), &RunOptions::default()).expect("bf16 run");
    assert_eq!(f32_run.steps, bf16_run.steps);
    // The model computes in bf16 (relative resolution 2^-8), the loss and softmaxes in f32.
    let (m32, m16) = losses_agree(root, "f32", "bf16", 2e-3);
    for (a, b) in m32.iter().zip(&m16) {
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 3e-2 * a.grad_norm,
            "step {}: |g| {} in f32, {} in bf16",
            a.step,
            a.grad_norm,
            b.grad_norm
        );
    }

    // The frozen weights are bf16 on the device.
    let base = cfg
        .base
        .load::<Flex<f32>>(None, &Default::default())
        .unwrap();
    assert_eq!(
        base.llm.model.embed_tokens.weight.val().dtype(),
        burn::tensor::DType::BF16
    );

    // The trained tensors are the bf16 roundings of f32 master copies the optimiser keeps and
    // checkpoints; the masters hold what bf16 cannot.
    let last = root.join("bf16/checkpoints/step-00000006");
    let trained = Weights::open(last.join("trainable.safetensors")).unwrap();
    let optim = Weights::open(last.join("optimizer.safetensors")).unwrap();
    let mut finer = 0usize;
    for name in trained.names() {
        let (t, _) = trained.f32(name).unwrap();
        let (m, _) = optim.f32(&format!("master.{name}")).unwrap();
        assert_eq!(t.len(), m.len(), "{name}");
        for (a, b) in t.iter().zip(&m) {
            assert_eq!(*a, bf16_round(*b), "{name}: {a} is not bf16({b})");
        }
        finer += m.iter().filter(|x| bf16_round(**x) != **x).count();
    }
    assert!(finer > 0, "no master value is finer than bf16");

    // Stopped after step 3 (checkpoint at 2), resumed: bit for bit.
    let cut = run_config("bf16_cut", "bf16");
    let stop = RunOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    train::<F>(&cut, &Default::default(), &stop).unwrap();
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    assert_eq!(
        train::<F>(&cut, &Default::default(), &resume)
            .unwrap()
            .steps,
        6
    );
    same_checkpoint(&last, &root.join("bf16_cut/checkpoints/step-00000006"));
}

#[test]
fn bf16_on_a_backend_without_it_is_refused() {
    let dir = tiny_world();
    let root = dir.path();
    let cfg = config(root, Stage::Align, "nd", &["precision=bf16".into()]);
    match train::<N>(&cfg, &Default::default(), &RunOptions::default()) {
        Err(TrainError::Invalid(m)) => assert!(m.contains("bf16") && m.contains("f32"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|s| s.steps)),
    }
    // `auto` is f32 on the CPU backends.
    let cfg = config(root, Stage::Align, "auto", &["max_steps=1".into()]);
    assert_eq!(
        train::<N>(&cfg, &Default::default(), &RunOptions::default())
            .unwrap()
            .steps,
        1
    );
    let w =
        Weights::open(root.join("auto/checkpoints/step-00000001/optimizer.safetensors")).unwrap();
    assert!(w.names().iter().all(|n| !n.starts_with("master.")));
}

/// Two bf16 replicas (f32 gradients all-reduced, each replica updating its own f32 masters)
/// train like one bf16 device with the doubled micro-batch.
#[test]
fn two_bf16_replicas_train_like_one_device_with_twice_the_batch() {
    let dir = tiny_world();
    let root = dir.path();
    let device = Default::default();
    let run_config = |out: &str, batch: usize| {
        sft(
            root,
            out,
            &[
                format!("batch_size={batch}"),
                "lora.dropout=0.0".into(),
                "epochs=1".into(),
                "precision=bf16".into(),
            ],
        )
    };
    let local = Collective::default();
    let opts = RunOptions::default();
    train_parallel::<F>(&run_config("one", 2), &[device], &local, &opts).unwrap();
    train_parallel::<F>(&run_config("two", 1), &[device, device], &local, &opts).unwrap();
    // bf16 sums in another order: agreement to bf16's resolution, not f32's.
    let (m1, _) = losses_agree(root, "one", "two", 2e-3);
    let last = format!("checkpoints/step-{:08}/optimizer.safetensors", m1.len());
    let (a, b) = (
        Weights::open(root.join("one").join(&last)).unwrap(),
        Weights::open(root.join("two").join(&last)).unwrap(),
    );
    let masters: Vec<&str> = a
        .names()
        .into_iter()
        .filter(|n| n.starts_with("master."))
        .collect();
    assert!(!masters.is_empty());
    for name in masters {
        let (x, _) = a.f32(name).unwrap();
        let (y, _) = b.f32(name).unwrap();
        let worst = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-2, "{name}: masters differ by {worst}");
    }
}
