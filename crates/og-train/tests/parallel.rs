//! Data-parallel training on two CPU replicas through burn-collective: the same steps as one
//! device with twice the micro-batch, exact resume, a resume on another device count with the
//! same global batch, and one with another global batch refused.

mod common;

use burn::backend::{Autodiff, NdArray};
use common::{losses_agree, same_checkpoint, sft, tiny_world};
use og_train::{Collective, RunOptions, TrainError, read_metrics, train_parallel};

type B = Autodiff<NdArray<f32>>;

#[test]
fn two_devices_train_like_one_with_twice_the_batch_and_resume_exactly() {
    let dir = tiny_world();
    let root = dir.path();
    let device = Default::default();
    let one_dev = [device];
    let two_dev = [device, device];
    let local = Collective::default();
    // SFT from the base: connector and LoRA train; dropout 0 so both runs draw nothing.
    let run_config = |out: &str, batch: usize| {
        sft(
            root,
            out,
            &[
                format!("batch_size={batch}"),
                "lora.dropout=0.0".into(),
                "epochs=2".into(),
            ],
        )
    };

    let one = train_parallel::<B>(
        &run_config("one", 2),
        &one_dev,
        &local,
        &RunOptions::default(),
    )
    .expect("one device");
    let two = train_parallel::<B>(
        &run_config("two", 1),
        &two_dev,
        &local,
        &RunOptions::default(),
    )
    .expect("two devices");
    // 9 good examples an epoch, 4 a step: steps of 4, 4 and 1 example(s) — the last one
    // leaves the second replica without a micro-batch.
    assert_eq!((one.steps, two.steps), (6, 6));
    assert_eq!(one.examples, two.examples);
    assert_eq!(one.supervised_tokens, two.supervised_tokens);
    let (m1, m2) = losses_agree(root, "one", "two", 1e-5);
    for (a, b) in m1.iter().zip(&m2) {
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-4 * a.grad_norm.max(1e-3),
            "step {}: |g| {} vs {}",
            a.step,
            a.grad_norm,
            b.grad_norm
        );
    }
    let last = "checkpoints/step-00000006/trainable.safetensors";
    let diffs = og_train::testing::weight_differences(
        &root.join("one").join(last),
        &root.join("two").join(last),
    );
    assert!(diffs.iter().any(|(n, _)| n.contains("lora_B")));
    let worst = diffs.iter().map(|d| d.1).fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "trained weights differ by {worst} between one and two devices"
    );

    // Two devices, interrupted after step 3 (checkpoint at 2), resumed: bit for bit.
    let cut = run_config("two_cut", 1);
    let s = train_parallel::<B>(
        &cut,
        &two_dev,
        &local,
        &RunOptions {
            stop_after: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.steps, 3);
    // One device with the same micro-batch would change what a step consumes: refused.
    match train_parallel::<B>(
        &cut,
        &one_dev,
        &local,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    ) {
        Err(TrainError::Config { message, .. }) => {
            assert!(message.contains("took 4 rows"), "{message}")
        }
        other => panic!(
            "expected a refused resume, got {:?}",
            other.map(|s| s.steps)
        ),
    }
    // One device with twice the micro-batch keeps the global batch: a run interrupted on two
    // devices resumes on one and ends where the uninterrupted two-device run ends.
    train_parallel::<B>(
        &run_config("cross", 1),
        &two_dev,
        &local,
        &RunOptions {
            stop_after: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let s = train_parallel::<B>(
        &run_config("cross", 2),
        &one_dev,
        &local,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .expect("resume on one device");
    assert_eq!(s.steps, 6);
    let worst = og_train::testing::weight_differences(
        &root.join("two").join(last),
        &root.join("cross").join(last),
    )
    .iter()
    .map(|d| d.1)
    .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "resumed on one device: weights differ by {worst}"
    );
    let s = train_parallel::<B>(
        &cut,
        &two_dev,
        &local,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.steps, 6);
    same_checkpoint(
        &root.join("two/checkpoints/step-00000006"),
        &root.join("two_cut/checkpoints/step-00000006"),
    );
}

/// With LoRA dropout on, per-micro-batch host streams make two replicas draw exactly the masks
/// one device draws for the same micro-batches: 2 replicas × 2 accumulated micro-batches equal
/// 1 device × 4, and a rerun is bit-identical whatever the thread scheduling.
#[test]
fn two_devices_with_dropout_draw_what_one_device_draws() {
    let dir = tiny_world();
    let root = dir.path();
    let device = Default::default();
    let local = Collective::default();
    let opts = RunOptions {
        host_dropout: true,
        ..Default::default()
    };
    let run_config = |out: &str, accumulate: usize| {
        sft(
            root,
            out,
            &[
                "batch_size=1".into(),
                format!("grad_accumulation={accumulate}"),
                "lora.dropout=0.3".into(),
                "epochs=1".into(),
            ],
        )
    };
    train_parallel::<B>(&run_config("one", 4), &[device], &local, &opts).expect("one device");
    for out in ["two", "two_again"] {
        train_parallel::<B>(&run_config(out, 2), &[device, device], &local, &opts)
            .expect("two devices");
    }
    let (m1, _) = losses_agree(root, "one", "two", 1e-5);
    let last = format!("checkpoints/step-{:08}/trainable.safetensors", m1.len());
    let worst = og_train::testing::weight_differences(
        &root.join("one").join(&last),
        &root.join("two").join(&last),
    )
    .iter()
    .map(|d| d.1)
    .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "one vs two devices: weights differ by {worst}"
    );
    let step = format!("checkpoints/step-{:08}", m1.len());
    same_checkpoint(
        &root.join("two").join(&step),
        &root.join("two_again").join(&step),
    );
    // The masks did act: without dropout the run ends elsewhere.
    train_parallel::<B>(
        &sft(
            root,
            "no_dropout",
            &[
                "batch_size=1".into(),
                "grad_accumulation=4".into(),
                "lora.dropout=0.0".into(),
                "epochs=1".into(),
            ],
        ),
        &[device],
        &local,
        &opts,
    )
    .unwrap();
    let m0 = read_metrics(&root.join("no_dropout")).unwrap();
    assert!(
        m0.iter()
            .zip(&m1)
            .any(|(a, b)| (a.loss - b.loss).abs() > 1e-4),
        "dropout 0.3 changed no loss"
    );
}
