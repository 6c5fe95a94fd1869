//! The no-mask path of the composed model equals transformers' LlavaForConditionalGeneration
//! (fixture: scripts/make_llava_fixtures.py): two prompts of different lengths, batched and
//! right-padded, logits within 1e-4 at every real position; the image placeholder may be one
//! token or the repeated run transformers writes.

use burn::backend::NdArray;
use burn::tensor::Tensor;
use og_llava::{OgLlava, OgLlavaInput};
use og_weights::Weights;

type B = NdArray<f32>;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[test]
fn no_mask_path_matches_transformers_llava() {
    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let io = Weights::open(root().join("llava/llava_tiny_io.safetensors")).unwrap();
    let (ids, shape) = io.i64("input_ids").unwrap();
    let (mask, _) = io.i64("attention_mask").unwrap();
    let t = shape[1];
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let want: Tensor<B, 3> = io.tensor("logits", [2, t, 64], &device).unwrap();
    let mut inputs = Vec::new();
    let mut lens = Vec::new();
    for b in 0..2 {
        let n = mask[b * t..(b + 1) * t].iter().filter(|&&m| m == 1).count();
        lens.push(n);
        inputs.push(OgLlavaInput {
            token_ids: ids[b * t..b * t + n].iter().map(|&x| x as u32).collect(),
            images: vec![og_llava::ImageInput {
                pixel_values: pv.clone().slice(b..b + 1),
                selection: None,
            }],
        });
    }
    let (logits, got_lens) = model.forward(&inputs).unwrap();
    assert_eq!(got_lens, lens);
    for (b, &n) in lens.iter().enumerate() {
        let d: f32 = (logits.clone().slice([b..b + 1, 0..n])
            - want.clone().slice([b..b + 1, 0..n]))
        .abs()
        .max()
        .into_scalar();
        assert!(d < 1e-4, "prompt {b}: logits differ by {d}");
    }
    // The placeholder written once expands to the same sequence.
    let once: Vec<u32> = {
        let full = &inputs[1].token_ids;
        let mut v: Vec<u32> = Vec::new();
        for &x in full {
            if !(x == model.image_token_id && v.last() == Some(&x)) {
                v.push(x);
            }
        }
        v
    };
    let single = OgLlavaInput {
        token_ids: once,
        ..inputs[1].clone()
    };
    let (l2, n2) = model.forward(std::slice::from_ref(&single)).unwrap();
    assert_eq!(n2[0], lens[1]);
    let d: f32 = (l2.slice([0..1, 0..lens[1]]) - logits.slice([1..2, 0..lens[1]]))
        .abs()
        .max()
        .into_scalar();
    assert!(d < 1e-4, "{d}");
    // A placeholder without an image is an error.
    let bad = OgLlavaInput::<B> {
        token_ids: vec![1, model.image_token_id, 5],
        images: vec![],
    };
    assert!(model.forward(&[bad]).is_err());
}

/// The OG path equals an independent PyTorch reference that builds OGVT the paper's way
/// (Listing 1 Φ, or patch-aligned Φ; row selection; concatenation; the checkpoint's projector)
/// and feeds it to transformers' Llama as `inputs_embeds`.
#[test]
fn og_path_matches_pytorch_reference() {
    use og_fusion::{MaskOrder, Phi, Selection, SelectionConfig, Threshold};

    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let io = Weights::open(root().join("llava/og_path_io.safetensors")).unwrap();
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [1, 3, 30, 30], &device).unwrap();
    let (masks, frame) = fixture_masks(&io);
    let (ids, _) = io.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    for (name, phi) in [
        ("raster", Phi::RasterStrip1d { alpha: 0.5 }),
        (
            "patch",
            Phi::PatchGrid2d {
                threshold: Threshold::Pixels(0.5),
            },
        ),
    ] {
        let cfg = SelectionConfig {
            phi,
            order: MaskOrder::Given,
            ..Default::default()
        };
        let selection = Selection::from_masks(&masks, &frame, &cfg).unwrap();
        let (tokens, _) = io.i64(&format!("{name}_tokens")).unwrap();
        assert_eq!(selection.total_tokens() as i64, tokens[0], "{name}: T");
        let input = OgLlavaInput {
            token_ids: ids.clone(),
            images: vec![og_llava::ImageInput {
                pixel_values: pv.clone(),
                selection: Some(selection),
            }],
        };
        let (logits, lens) = model.forward(&[input]).unwrap();
        let n = lens[0];
        let want: Tensor<B, 3> = io
            .tensor(&format!("{name}_logits"), [1, n, 64], &device)
            .unwrap();
        let d: f32 = (logits - want).abs().max().into_scalar();
        assert!(d < 1e-4, "{name}: logits differ by {d}");
    }
}

/// The fixture's `masks` ([n, 30, 30] u8) and the identity frame of the 30-px towers.
fn fixture_masks(io: &Weights) -> (og_segment::MaskSet, og_vision::Frame) {
    use og_segment::{Bitmap, MaskSet};
    let (m, _) = io.i64("masks").unwrap();
    let bitmaps: Vec<Bitmap> = m
        .chunks(900)
        .map(|c| {
            Bitmap::from_bytes(30, 30, &c.iter().map(|&x| x as u8).collect::<Vec<_>>()).unwrap()
        })
        .collect();
    let frame = og_vision::FrameConfig {
        pad_to_square: false,
        ..og_vision::FrameConfig::square(30, 6)
    }
    .frame(30, 30)
    .unwrap();
    (MaskSet::from_bitmaps(&bitmaps).unwrap(), frame)
}

/// The released OG-LLaVA layout (LLaVA config, PEFT adapter as adapter_model.bin,
/// non_lora_trainables.bin with projector and BoM token, base Llama and CLIP tower in their own
/// directories) gives the logits of transformers + peft with OGVT built in PyTorch: the plain
/// grid, and Listing-1 groups each preceded by the BoM token. This is also the LoRA-adapted
/// composed model against peft; merging the adapter changes nothing beyond rounding.
#[test]
fn released_og_llava_layout_matches_peft() {
    use og_fusion::{Delimiter, MaskOrder, Phi, Selection, SelectionConfig};
    use og_llava::ORIGINAL_IMAGE_TOKEN;

    let device = Default::default();
    let mut model = OgLlava::<B>::load_og_llava_released(
        root().join("llava/released"),
        root().join("llava/released_base"),
        root().join("vision/clip_vision_tiny"),
        None,
        &device,
    )
    .unwrap();
    assert_eq!(model.connector.config().delimiter, Delimiter::BeforeMask);
    let io = Weights::open(root().join("llava/released_io.safetensors")).unwrap();
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [1, 3, 30, 30], &device).unwrap();
    let (masks, frame) = fixture_masks(&io);
    let (ids, _) = io.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids
        .iter()
        .map(|&x| {
            if x < 0 {
                ORIGINAL_IMAGE_TOKEN
            } else {
                x as u32
            }
        })
        .collect();
    let selection = Selection::from_masks(
        &masks,
        &frame,
        &SelectionConfig {
            phi: Phi::RasterStrip1d { alpha: 0.5 },
            order: MaskOrder::Given,
            ..Default::default()
        },
    )
    .unwrap();
    for merged in [false, true] {
        if merged {
            model.llm = model.llm.merge_lora();
        }
        for (name, selection) in [("plain", None), ("og", Some(selection.clone()))] {
            let input = OgLlavaInput {
                token_ids: ids.clone(),
                images: vec![og_llava::ImageInput {
                    pixel_values: pv.clone(),
                    selection,
                }],
            };
            let (logits, lens) = model.forward(&[input]).unwrap();
            let want: Tensor<B, 3> = io
                .tensor(&format!("{name}_logits"), [1, lens[0], 64], &device)
                .unwrap();
            let d: f32 = (logits - want).abs().max().into_scalar();
            assert!(d < 1e-4, "{name} (merged: {merged}): logits differ by {d}");
        }
    }
    // Without the adapter the logits are different: the test sees LoRA.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "non_lora_trainables.bin"] {
        std::fs::copy(root().join("llava/released").join(f), dir.path().join(f)).unwrap();
    }
    let bare = OgLlava::<B>::load_og_llava_released(
        dir.path(),
        root().join("llava/released_base"),
        root().join("vision/clip_vision_tiny"),
        None,
        &device,
    )
    .unwrap();
    let input = OgLlavaInput {
        token_ids: ids.clone(),
        images: vec![og_llava::ImageInput {
            pixel_values: pv.clone(),
            selection: None,
        }],
    };
    let (logits, lens) = bare.forward(&[input]).unwrap();
    let want: Tensor<B, 3> = io
        .tensor("plain_logits", [1, lens[0], 64], &device)
        .unwrap();
    let d: f32 = (logits - want).abs().max().into_scalar();
    assert!(d > 1e-3, "the adapter had no effect ({d})");
    // A corrupt pickle is a typed error naming the file.
    std::fs::write(dir.path().join("non_lora_trainables.bin"), b"not a pickle").unwrap();
    let e = OgLlava::<B>::load_og_llava_released(
        dir.path(),
        root().join("llava/released_base"),
        root().join("vision/clip_vision_tiny"),
        None,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("non_lora_trainables.bin"), "{e}");
}

/// The same weights laid out as an original LLaVA-1.5 checkpoint (`model.*`,
/// `model.mm_projector.0/.2`, mm_* config keys), with the tower in its own CLIP directory or
/// bundled, give transformers' logits.
#[test]
fn original_llava_layout_matches() {
    use og_llava::ORIGINAL_IMAGE_TOKEN;
    use og_weights::SaveTensor;

    let device = Default::default();
    let src_dir = root().join("vision/llava_tiny");
    let src = Weights::open(&src_dir).unwrap();
    let (_, hf_cfg) = og_weights::read_config(&src_dir).unwrap();
    let tensor = |name: &str, new: String| {
        let (values, shape) = src.f32(name).unwrap();
        SaveTensor {
            name: new,
            shape,
            values,
        }
    };
    let rename = |n: &str| -> Option<String> {
        if let Some(r) = n.strip_prefix("language_model.model.") {
            Some(format!("model.{r}"))
        } else if n == "language_model.lm_head.weight" {
            Some("lm_head.weight".into())
        } else if let Some(r) = n.strip_prefix("multi_modal_projector.linear_1") {
            Some(format!("model.mm_projector.0{r}"))
        } else {
            n.strip_prefix("multi_modal_projector.linear_2")
                .map(|r| format!("model.mm_projector.2{r}"))
        }
    };
    let mut config = hf_cfg["text_config"].clone();
    let obj = config.as_object_mut().unwrap();
    obj.insert("mm_vision_select_layer".into(), (-2).into());
    obj.insert("mm_vision_select_feature".into(), "patch".into());
    obj.insert("mm_projector_type".into(), "mlp2x_gelu".into());
    obj.insert("mm_hidden_size".into(), 32.into());
    let vision_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        vision_dir.path().join("config.json"),
        hf_cfg["vision_config"].to_string(),
    )
    .unwrap();
    let vision: Vec<SaveTensor> = src
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix("vision_tower.")
                .map(|r| tensor(n, format!("vision_model.{r}")))
        })
        .collect();
    og_weights::save_safetensors(vision_dir.path().join("model.safetensors"), &vision).unwrap();

    let io = Weights::open(root().join("llava/llava_tiny_io.safetensors")).unwrap();
    let (ids, shape) = io.i64("input_ids").unwrap();
    let t = shape[1];
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let want: Tensor<B, 3> = io.tensor("logits", [2, t, 64], &device).unwrap();
    let mut prompt: Vec<u32> = Vec::new();
    for &x in &ids[..t] {
        let x = if x == 63 {
            ORIGINAL_IMAGE_TOKEN
        } else {
            x as u32
        };
        if !(x == ORIGINAL_IMAGE_TOKEN && prompt.last() == Some(&x)) {
            prompt.push(x);
        }
    }
    for bundled in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let mut tensors: Vec<SaveTensor> = src
            .names()
            .into_iter()
            .filter_map(|n| rename(n).map(|new| tensor(n, new)))
            .collect();
        if bundled {
            tensors.extend(src.names().into_iter().filter_map(|n| {
                n.strip_prefix("vision_tower.").map(|r| {
                    tensor(
                        n,
                        format!("model.vision_tower.vision_tower.vision_model.{r}"),
                    )
                })
            }));
        }
        og_weights::save_safetensors(dir.path().join("model.safetensors"), &tensors).unwrap();
        assert_eq!(
            og_llava::Layout::detect(dir.path()).unwrap(),
            og_llava::Layout::LlavaOriginal
        );
        let parts = og_llava::ExternalParts {
            vision: Some(vision_dir.path()),
            base: None,
        };
        let model = OgLlava::<B>::open(dir.path(), parts, &device).unwrap();
        let input = OgLlavaInput {
            token_ids: prompt.clone(),
            images: vec![og_llava::ImageInput {
                pixel_values: pv.clone().slice(0..1),
                selection: None,
            }],
        };
        let (logits, lens) = model.forward(&[input]).unwrap();
        let n = lens[0];
        let d: f32 = (logits - want.clone().slice([0..1, 0..n]))
            .abs()
            .max()
            .into_scalar();
        assert!(d < 1e-4, "bundled={bundled}: logits differ by {d}");
    }
}

/// Our checkpoint format: a model with a delimiter, a learned PE and LoRA saves and loads back
/// to the same logits; the projector part is llava-hf named and the adapter is a PEFT one.
#[test]
fn own_checkpoint_round_trip() {
    use og_fusion::{Delimiter, OgFusionConfig, PositionalEncoding, Selection, Windows};
    use og_llm::LoraConfig;

    let device = Default::default();
    let base = root().join("vision/llava_tiny");
    let fusion = OgFusionConfig::new(32, 24)
        .with_delimiter(Delimiter::BeforeMask)
        .with_positional(PositionalEncoding::Learned1d { max_segments: 8 });
    let mut model = OgLlava::<B>::load_llava_hf(&base, Some(fusion), &device).unwrap();
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "down_proj".into()],
    };
    model.llm = model.llm.with_lora(&lora).unwrap();
    // Give the adapters non-zero B so that saving them matters.
    for layer in &mut model.llm.model.layers {
        let a = layer.self_attn.q_proj.lora.as_mut().unwrap();
        a.lora_b = burn::module::Param::from_tensor(a.lora_b.val().ones_like() * 0.05);
    }
    model.segment_rope = true;
    model.image = og_llava::ImageSettings {
        selection: og_llava::og_fusion::SelectionConfig {
            phi: og_llava::og_fusion::Phi::paper(),
            order: og_llava::og_fusion::MaskOrder::Given,
            complement: true,
            max_tokens: Some(7),
            max_masks: 9,
        },
        pad_to_square: false,
    };
    let pv: Tensor<B, 4> = Tensor::ones([1, 3, 30, 30], &device) * 0.3;
    let input = OgLlavaInput {
        token_ids: vec![1, 5, 63, 7],
        images: vec![og_llava::ImageInput {
            pixel_values: pv,
            selection: Some(Selection::from_windows((5, 5), Windows::Tiles { k: 4 }).unwrap()),
        }],
    };
    let (before, _) = model.forward(std::slice::from_ref(&input)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model
        .save_checkpoint(
            dir.path(),
            &og_llava::BaseModel::LlavaHf { path: base.clone() },
            Some(&lora),
        )
        .unwrap();
    for f in [
        "og_llava.json",
        "connector.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    assert!(matches!(
        og_llava::Layout::detect(dir.path()).unwrap(),
        og_llava::Layout::Ours(og_llava::BaseModel::LlavaHf { .. })
    ));
    let back = OgLlava::<B>::open(dir.path(), Default::default(), &device).unwrap();
    assert!(back.segment_rope);
    assert_eq!(back.image, model.image);
    assert_eq!(back.connector.config().delimiter, Delimiter::BeforeMask);
    let (after, _) = back.forward(&[input]).unwrap();
    let d: f32 = (before - after).abs().max().into_scalar();
    assert!(d < 1e-5, "reloaded logits differ by {d}");
    std::fs::write(dir.path().join("og_llava.json"), "{\"format\": \"other\"}").unwrap();
    assert!(OgLlava::<B>::load_checkpoint(dir.path(), None, &device).is_err());
}

/// The loss counts exactly the supervised tokens, each predicted by the position before it in
/// the final (image-expanded) sequence: equal to a log-softmax over the full logits of
/// `forward` (which matches transformers), for a batch of two right-padded prompts.
#[test]
fn loss_counts_only_supervised_tokens() {
    use burn::tensor::activation::log_softmax;
    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let img = model.image_token_id;
    let io = Weights::open(root().join("llava/llava_tiny_io.safetensors")).unwrap();
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let prompts: [Vec<u32>; 2] = [vec![1, 5, 6, img, 7, 8, 9, 10], vec![1, 11, img, 12, 13]];
    let trainable = vec![
        vec![false, false, false, false, false, true, true, true],
        vec![false, true, false, false, true],
    ];
    let inputs: Vec<OgLlavaInput<B>> = prompts
        .iter()
        .enumerate()
        .map(|(b, ids)| OgLlavaInput {
            token_ids: ids.clone(),
            images: vec![og_llava::ImageInput {
                pixel_values: pv.clone().slice(b..b + 1),
                selection: None,
            }],
        })
        .collect();
    let (sum, n) = model.loss_sum(&inputs, &trainable).unwrap();
    assert_eq!(n, 5);
    let (logits, _) = model.forward(&inputs).unwrap();
    let logp = log_softmax(logits, 2);
    // (row, position in the expanded sequence, target): the image (25 tokens) shifts positions
    // after it by 24.
    let expected = [
        (0, 5 + 24, 8),
        (0, 6 + 24, 9),
        (0, 7 + 24, 10),
        (1, 1, 11),
        (1, 4 + 24, 13),
    ];
    let mut want = 0.0f32;
    for (b, q, tok) in expected {
        let v: f32 = logp
            .clone()
            .slice([b..b + 1, q - 1..q, tok..tok + 1])
            .into_scalar();
        want -= v;
    }
    let got: f32 = sum.into_scalar();
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    let mean: f32 = model.loss(&inputs, &trainable).unwrap().into_scalar();
    assert!((mean - want / 5.0).abs() < 1e-5);
    // Mis-sized flags are an error, not a panic.
    assert!(model.loss_sum(&inputs, &trainable[..1]).is_err());
    assert!(
        model
            .loss_sum(&inputs, &[trainable[0].clone(), vec![true]])
            .is_err()
    );
}

/// Two images in one prompt (placeholder runs taken in order) give transformers' logits; the
/// loss maps supervised tokens after both images to the right positions.
#[test]
fn two_images_in_one_prompt_match_transformers() {
    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let io = Weights::open(root().join("llava/multi_image_io.safetensors")).unwrap();
    let (ids, _) = io.i64("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let pv: Tensor<B, 4> = io.tensor("pixel_values", [2, 3, 30, 30], &device).unwrap();
    let n = ids.len();
    let want: Tensor<B, 3> = io.tensor("logits", [1, n, 64], &device).unwrap();
    let images = (0..2)
        .map(|k| og_llava::ImageInput {
            pixel_values: pv.clone().slice(k..k + 1),
            selection: None,
        })
        .collect();
    let input = OgLlavaInput {
        token_ids: ids.clone(),
        images,
    };
    let (logits, lens) = model.forward(std::slice::from_ref(&input)).unwrap();
    assert_eq!(lens[0], n);
    let d: f32 = (logits.clone() - want).abs().max().into_scalar();
    assert!(d < 1e-4, "logits differ by {d}");
    // The last token (8) is predicted by the position before it.
    let mut flags = vec![false; n];
    flags[n - 1] = true;
    let (sum, count) = model
        .loss_sum(std::slice::from_ref(&input), &[flags])
        .unwrap();
    assert_eq!(count, 1);
    let logp = burn::tensor::activation::log_softmax(logits, 2);
    let v: f32 = logp.slice([0..1, n - 2..n - 1, 8..9]).into_scalar();
    assert!((sum.into_scalar() + v).abs() < 1e-5);
    // One image for two placeholders is an error.
    let one = OgLlavaInput {
        token_ids: ids,
        images: input.images[..1].to_vec(),
    };
    assert!(model.forward(&[one]).is_err());
}

/// `score` (images encoded once, candidates batched) equals summing log-probabilities from
/// `forward` on each full sequence; `generate` continues the prompt like greedy argmax.
#[test]
fn score_and_generate_agree_with_forward() {
    use burn::tensor::activation::log_softmax;
    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let img = model.image_token_id;
    let pv: Tensor<B, 4> = Tensor::ones([1, 3, 30, 30], &device) * 0.2;
    let prompt = OgLlavaInput::with_image(vec![1, 5, img, 6], pv.clone(), None);
    let candidates = vec![vec![7, 8, 9], vec![10], vec![11, 12]];
    let scores = model.score(&prompt, &candidates).unwrap();
    for (c, s) in candidates.iter().zip(&scores) {
        let mut ids = prompt.token_ids.clone();
        ids.extend(c);
        let full = OgLlavaInput::with_image(ids, pv.clone(), None);
        let (logits, lens) = model.forward(&[full]).unwrap();
        let logp = log_softmax(logits, 2);
        let start = lens[0] - c.len();
        let want: f64 = c
            .iter()
            .enumerate()
            .map(|(j, &tok)| {
                let q = start + j;
                let v: f32 = logp
                    .clone()
                    .slice([0..1, q - 1..q, tok as usize..tok as usize + 1])
                    .into_scalar();
                v as f64
            })
            .sum();
        assert!((s.sum - want).abs() < 1e-4, "{} vs {want}", s.sum);
        assert_eq!(s.tokens, c.len());
    }
    let cfg = og_llava::og_llm::GenerationConfig {
        max_new_tokens: 3,
        eos_token_ids: vec![],
        ..Default::default()
    };
    let mut streamed = Vec::new();
    let out = model.generate(&prompt, &cfg, |t| streamed.push(t)).unwrap();
    assert_eq!(out, streamed);
    let (logits, lens) = model.forward(std::slice::from_ref(&prompt)).unwrap();
    let n = lens[0];
    let first = logits.slice([0..1, n - 1..n]).argmax(2).into_scalar();
    assert_eq!(out[0] as i64, first);
    assert!(model.score(&prompt, &[vec![]]).is_err());
}

/// `generate_batch` gives each prompt (different images, a repeated one, lengths, a text-only
/// one) what `generate` gives it alone.
#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    let device = Default::default();
    let model =
        OgLlava::<B>::load_llava_hf(root().join("vision/llava_tiny"), None, &device).unwrap();
    let img = model.image_token_id;
    let pv = |v: f32| Tensor::<B, 4>::ones([1, 3, 30, 30], &device) * v;
    let inputs = vec![
        OgLlavaInput::with_image(vec![1, 5, img, 6], pv(0.2), None),
        // The same image again (encoded once for both).
        OgLlavaInput::with_image(vec![1, img, 3, 3], pv(0.2), None),
        OgLlavaInput::with_image(vec![1, img, 6, 9, 4, 3, 2], pv(-0.7), None),
        OgLlavaInput {
            token_ids: vec![1, 8],
            images: vec![],
        },
    ];
    let cfg = og_llava::og_llm::GenerationConfig {
        max_new_tokens: 5,
        eos_token_ids: vec![],
        ..Default::default()
    };
    let alone: Vec<Vec<u32>> = inputs
        .iter()
        .map(|input| model.generate(input, &cfg, |_| {}).unwrap())
        .collect();
    let mut streamed = vec![Vec::new(); inputs.len()];
    let batched = model
        .generate_batch(&inputs, &cfg, |i, t| streamed[i].push(t))
        .unwrap();
    assert_eq!(batched, alone);
    assert_eq!(streamed, alone);
    assert!(model.generate_batch(&[], &cfg, |_, _| {}).is_err());
}

/// `OgLlava::open` tells the llava-hf and released OG-LLaVA layouts apart and loads each as its
/// own loader does (same logits); a released checkpoint opened without its base and tower names
/// both; a folder with no model says so. (Our layout and the original LLaVA-1.5 one go through
/// `open` in `own_checkpoint_round_trip` and `original_llava_layout_matches`.)
#[test]
fn open_detects_every_layout() {
    use og_llava::{ExternalParts, Layout, ModelError, ModelPart};

    let device = Default::default();
    let logits = |m: &OgLlava<B>| {
        let pv: Tensor<B, 4> = Tensor::ones([1, 3, 30, 30], &device) * 0.2;
        let input = OgLlavaInput {
            token_ids: vec![1, 5, m.image_token_id, 7],
            images: vec![og_llava::ImageInput {
                pixel_values: pv,
                selection: None,
            }],
        };
        m.forward(&[input]).unwrap().0
    };
    let hf = root().join("vision/llava_tiny");
    assert_eq!(Layout::detect(&hf).unwrap(), Layout::LlavaHf);
    let opened = OgLlava::<B>::open(&hf, ExternalParts::default(), &device).unwrap();
    let direct = OgLlava::<B>::load_llava_hf(&hf, None, &device).unwrap();
    let d: f32 = (logits(&opened) - logits(&direct))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(d, 0.0);

    let released = root().join("llava/released");
    let (base, vision) = (
        root().join("llava/released_base"),
        root().join("vision/clip_vision_tiny"),
    );
    assert_eq!(Layout::detect(&released).unwrap(), Layout::OgLlavaReleased);
    let parts = ExternalParts {
        vision: Some(&vision),
        base: Some(&base),
    };
    let opened = OgLlava::<B>::open(&released, parts, &device).unwrap();
    assert_eq!(opened.image, og_llava::ImageSettings::released());
    let direct =
        OgLlava::<B>::load_og_llava_released(&released, &base, &vision, None, &device).unwrap();
    let d: f32 = (logits(&opened) - logits(&direct))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(d, 0.0);
    match OgLlava::<B>::open(&released, ExternalParts::default(), &device) {
        Err(ModelError::MissingParts { parts, .. }) => {
            assert_eq!(parts, vec![ModelPart::BaseLlm, ModelPart::VisionTower])
        }
        other => panic!("expected MissingParts, got {:?}", other.map(|_| ())),
    }
    let empty = tempfile::tempdir().unwrap();
    let e = Layout::detect(empty.path()).unwrap_err().to_string();
    assert!(e.contains("holds no model"), "{e}");
}
