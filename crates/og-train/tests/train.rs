//! End to end on the tiny llava fixture: stage 1 then stage 2 through the real data path
//! (LLaVA JSON, PNG images, COCO RLE masks, bad rows), exact resume after an interruption
//! (including one during a checkpoint write), what trains in each stage, non-finite stop.

mod common;

use burn::backend::{Autodiff, Flex};
use common::{config, same_checkpoint, sft, tiny_world};
use og_train::{RunOptions, Stage, TrainConfig, TrainError, train};

type B = Autodiff<Flex<f32>>;

/// The backend's RNG is process-wide and these runs draw LoRA dropout from it: one run at a
/// time, so that no test draws from another's stream.
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_run() -> std::sync::MutexGuard<'static, ()> {
    ONE_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn two_stages_resume_exactly_and_train_only_what_they_should() {
    let _one = one_run();
    let dir = tiny_world();
    let root = dir.path();
    let device = Default::default();

    // Stage 1.
    let cfg = config(root, Stage::Align, "align", &[]);
    let s = train::<B>(&cfg, &device, &RunOptions::default()).unwrap();
    // 11 rows, 2 bad (each counted once): 9 examples an epoch, 4 per step (the last step of
    // an epoch takes 1), 3 epochs.
    assert_eq!(s.total_steps, 9);
    assert_eq!(s.steps, 9);
    assert_eq!(s.examples, 27);
    assert_eq!(s.bad_rows.counts.get("missing image"), Some(&1));
    assert_eq!(s.bad_rows.counts.get("corrupt image"), Some(&1));
    let (first, last) = (s.first_loss.unwrap(), s.last_loss.unwrap());
    assert!(last < first, "stage 1 loss {first} → {last}");
    for f in [
        "config.json",
        "metrics.jsonl",
        "loss.svg",
        "final/og_llava.json",
        "final/connector.safetensors",
    ] {
        assert!(root.join("align").join(f).is_file(), "{f}");
    }
    let metrics = og_train::read_metrics(&root.join("align")).unwrap();
    assert_eq!(metrics.len(), 9);
    // The same steps reach TensorBoard: one event file, every scalar of every step.
    let board: Vec<_> = std::fs::read_dir(root.join("align/tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(board.len(), 1, "{board:?}");
    let scalars = og_train::tensorboard::read_scalars(&board[0]).unwrap();
    assert_eq!(scalars.len(), 5 * metrics.len());
    for m in &metrics {
        for (tag, value) in [("loss", m.loss), ("lr/connector", m.lr_connector)] {
            let s = scalars
                .iter()
                .find(|s| s.step == m.step as u64 && s.tag == tag)
                .unwrap_or_else(|| panic!("no {tag} at step {}", m.step));
            assert_eq!(s.value, value as f32);
        }
    }
    // Only the connector changed: the LLM and the tower are the base's.
    let base =
        og_llava::OgLlava::<Flex<f32>>::load_llava_hf(root.join("model"), None, &device).unwrap();
    let trained =
        og_llava::OgLlava::<Flex<f32>>::load_checkpoint(root.join("align/final"), None, &device)
            .unwrap();
    let same = |a: burn::tensor::Tensor<Flex<f32>, 2>, b: burn::tensor::Tensor<Flex<f32>, 2>| {
        a.equal(b).all().into_scalar()
    };
    assert!(same(
        base.llm.model.embed_tokens.weight.val(),
        trained.llm.model.embed_tokens.weight.val()
    ));
    assert!(same(
        base.vision
            .embeddings
            .patch_embedding
            .weight
            .val()
            .reshape([1, -1]),
        trained
            .vision
            .embeddings
            .patch_embedding
            .weight
            .val()
            .reshape([1, -1])
    ));
    assert!(!same(
        base.connector.linear_1.weight.val(),
        trained.connector.linear_1.weight.val()
    ));
    assert!(trained.connector.delimiter.is_some());

    // Stage 2 from stage 1, uninterrupted …
    let init = format!("init_from=\"{}\"", root.join("align/final").display());
    let full = sft(root, "sft_full", std::slice::from_ref(&init));
    let s = train::<B>(&full, &device, &RunOptions::default()).unwrap();
    assert!(s.last_loss.unwrap() < s.first_loss.unwrap());
    assert!(
        root.join("sft_full/final/adapter/adapter_model.safetensors")
            .is_file()
    );

    // … and killed after step 3 (checkpoint at 2), with a checkpoint write cut short, resumed.
    let cut = sft(root, "sft_cut", &[init]);
    let s = train::<B>(
        &cut,
        &device,
        &RunOptions {
            stop_after: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.steps, 3);
    let half = root.join("sft_cut/checkpoints/.tmp-step-00000004");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("trainable.safetensors"), b"partial").unwrap();
    assert!(
        matches!(
            train::<B>(&cut, &device, &RunOptions::default()),
            Err(TrainError::Invalid(_))
        ),
        "an existing run needs --resume"
    );
    let s = train::<B>(
        &cut,
        &device,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.steps, 9);
    same_checkpoint(
        &root.join("sft_full/checkpoints/step-00000009"),
        &root.join("sft_cut/checkpoints/step-00000009"),
    );
    assert_eq!(
        og_train::read_metrics(&root.join("sft_cut")).unwrap().len(),
        9
    );
    assert!(
        !half.exists(),
        "leftovers of an interrupted write are removed"
    );
    // A changed configuration cannot resume the run.
    let changed = sft(root, "sft_cut", &["lr_lora=0.5".into()]);
    assert!(
        train::<B>(
            &changed,
            &device,
            &RunOptions {
                resume: true,
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn non_finite_loss_stops_with_the_last_good_checkpoint() {
    let _one = one_run();
    let dir = tiny_world();
    let root = dir.path();
    let cfg = config(
        root,
        Stage::Align,
        "blowup",
        &[
            "lr_connector=1e30".into(),
            "warmup_ratio=0.0".into(),
            "checkpoint_every=1".into(),
            "max_grad_norm=null".into(),
        ],
    );
    let e = train::<B>(&cfg, &Default::default(), &RunOptions::default()).unwrap_err();
    match e {
        TrainError::NonFinite {
            step, last_good, ..
        } => {
            assert!(step >= 2);
            let good = last_good.expect("a checkpoint was written");
            assert!(good.join("state.json").is_file());
        }
        other => panic!("expected NonFinite, got {other}"),
    }
}

#[test]
fn images_without_masks_are_bad_rows_unless_the_plain_path_is_chosen() {
    let _one = one_run();
    let dir = tiny_world();
    let root = dir.path();
    // The tiny world has masks for images 0 and 2 only: rows img1, img3 and the pair (0 and 1)
    // lack masks.
    let cfg = config(
        root,
        Stage::Align,
        "strict",
        &["data.missing_masks=bad_row".into(), "epochs=1".into()],
    );
    let s = train::<B>(&cfg, &Default::default(), &RunOptions::default()).unwrap();
    assert_eq!(
        s.bad_rows.counts.get("missing masks"),
        Some(&3),
        "{:?}",
        s.bad_rows
    );
    let cfg = config(
        root,
        Stage::Align,
        "nofolder",
        &[format!("data.masks={}", root.join("absent").display())],
    );
    let e = train::<B>(&cfg, &Default::default(), &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent") && e.contains("does not exist"), "{e}");
}

/// One alignment epoch on the tiny world with an empty mask folder into `out`. With
/// `segmenter` overrides a segmenter stands in for the folder and a row without masks is a
/// bad row; without, such rows train on the plain path.
fn without_mask_files(
    root: &std::path::Path,
    out: &str,
    segmenter: &[String],
) -> Result<og_train::RunSummary, TrainError> {
    let empty = root.join("no_masks");
    std::fs::create_dir_all(&empty).unwrap();
    let missing = if segmenter.is_empty() {
        "plain"
    } else {
        "bad_row"
    };
    // Room for a delimiter per segment.
    let mut overrides = vec![
        "epochs=1".to_string(),
        "model_max_length=512".into(),
        format!("data.masks={}", empty.display()),
        format!("data.missing_masks={missing}"),
    ];
    overrides.extend_from_slice(segmenter);
    let cfg = config(root, Stage::Align, out, &overrides);
    train::<B>(&cfg, &Default::default(), &RunOptions::default())
}

#[test]
fn a_felzenszwalb_segmenter_replaces_the_mask_folder() {
    let _one = one_run();
    let dir = tiny_world();
    let root = dir.path();
    // The mask folder is empty: strict about missing masks, yet no row lacks them.
    let segmented = without_mask_files(
        root,
        "segmented",
        &[
            "data.felzenszwalb.scale=300".into(),
            "data.felzenszwalb.min_size=20".into(),
        ],
    )
    .unwrap();
    assert!(
        !segmented.bad_rows.counts.contains_key("missing masks"),
        "{:?}",
        segmented.bad_rows
    );
    let plain = without_mask_files(root, "plain", &[]).unwrap();
    assert_eq!(
        segmented.examples, plain.examples,
        "{:?}",
        segmented.bad_rows
    );
    assert_ne!(
        segmented.first_loss, plain.first_loss,
        "the OG path was taken"
    );
    // Bad segmenter settings stop the run before it starts.
    let e = TrainConfig::resolve(
        None,
        Some(&root.join("segmented.json")),
        &["data.felzenszwalb.sigma=-1".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sigma"), "{e}");
}

#[test]
fn a_sam2_segmenter_replaces_the_mask_folder() {
    let _one = one_run();
    let dir = tiny_world();
    let root = dir.path();
    let sam = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/sam2/original_t/model.pt");
    // The tiny SAM 2 keeps the three candidate masks of one point (no thresholds, no NMS).
    let segmented = without_mask_files(
        root,
        "sam2",
        &[
            format!("data.sam2.weights={}", sam.display()),
            "data.sam2.generator.points_per_side=1".into(),
            "data.sam2.generator.pred_iou_thresh=0".into(),
            "data.sam2.generator.stability_score_thresh=0".into(),
            "data.sam2.generator.box_nms_thresh=1".into(),
        ],
    )
    .unwrap();
    for reason in ["missing masks", "segmentation"] {
        assert!(
            !segmented.bad_rows.counts.contains_key(reason),
            "{:?}",
            segmented.bad_rows
        );
    }
    let plain = without_mask_files(root, "plain", &[]).unwrap();
    assert_eq!(segmented.examples, plain.examples);
    assert_ne!(
        segmented.first_loss, plain.first_loss,
        "the OG path was taken"
    );
    // Weights that are not there, and two segmenters at once, stop the run with the reason.
    let absent = format!("data.sam2.weights={}", root.join("absent.pt").display());
    let e = without_mask_files(root, "absent", &[absent])
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.sam2.weights"), "{e}");
    let e = TrainConfig::resolve(
        None,
        Some(&root.join("sam2.json")),
        &[
            "data.felzenszwalb.scale=300".into(),
            format!("data.sam2.weights={}", sam.display()),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("alternatives"), "{e}");
}

/// A dataset in which no row yields a step ends the run with the reasons, instead of looping
/// over epochs forever (with max_steps) or writing an untrained model.
#[test]
fn an_epoch_without_a_step_is_an_error_not_a_hang() {
    let _one = one_run();
    let dir = tiny_world();
    let root = dir.path();
    for extra in [vec!["max_steps=3"], vec!["epochs=2"]] {
        let mut overrides = vec!["model_max_length=2".to_string()];
        overrides.extend(extra.iter().map(|s| s.to_string()));
        let cfg = config(
            root,
            Stage::Align,
            &format!("none-{}", extra[0]),
            &overrides,
        );
        match train::<B>(&cfg, &Default::default(), &RunOptions::default()) {
            Err(TrainError::Data { message, .. }) => {
                assert!(
                    message.contains("gave no training step") && message.contains("too long"),
                    "{message}"
                )
            }
            other => panic!("expected a data error, got {:?}", other.map(|s| s.steps)),
        }
    }
    let e = TrainConfig::resolve(
        None,
        Some(&root.join("none-max_steps=3.json")),
        &["max_steps=0".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_steps must be at least 1"), "{e}");
}
