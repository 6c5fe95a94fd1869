//! Generation protocols answer every item the same whatever the batch size: records from
//! batches of 3 prompts equal those of one prompt at a time (paper and circular), an item whose
//! image cannot be read gets its own error in both, and a resumable run writes the same lines.

mod common;

use common::{B, fixtures};
use og_eval::run::{RunConfig, read_records, run_benchmark};
use og_eval::{Benchmark, EvalError, Evaluator, ImageSource, Item, Protocol};
use og_llava::og_vision::ImageProcessor;

fn item(id: usize, image: &str, question: &str, options: &[&str]) -> Item {
    Item {
        bench: Benchmark::MmBench,
        id: id.to_string(),
        category: None,
        image: ImageSource::File(fixtures().join("images").join(image)),
        image_name: image.into(),
        crop: None,
        question: question.into(),
        hint: None,
        prompt: None,
        options: options.iter().map(|o| o.to_string()).collect(),
        answer: id % options.len(),
        answer_text: None,
        group: None,
        source: None,
        split: None,
    }
}

#[test]
fn batch_size_does_not_change_answers() {
    let device = Default::default();
    let (mut model, tokenizer) = common::tiny_model_and_tokenizer(&device);
    // The tiny model's random attention is nearly uniform, so it answers every prompt alike;
    // sharpened (queries scaled up), its answers depend on the prompt.
    for layer in &mut model.llm.model.layers {
        let q = &mut layer.self_attn.q_proj.base.weight;
        *q = burn::module::Param::from_tensor(q.val() * 300.0);
    }
    let processor =
        ImageProcessor::from_hf_dir(fixtures().join("vision/llava_tiny"), 30, 6, true).unwrap();
    let evaluator = |batch_size| common::evaluator(&model, &tokenizer, &processor, batch_size);
    // Words the tokenizer knows (`w<id>`), so prompts differ in content and length.
    let items = vec![
        item(0, "astronaut.webp", "w10 w11", &["w20", "w21 w22"]),
        item(
            1,
            "coffee.webp",
            "w30 w31 w32 w33 w34 w35 w36",
            &["w40", "w41", "w42"],
        ),
        item(2, "missing.png", "w12", &["w5", "w6"]),
        item(3, "rocket.jpg", "w50", &["w7", "w8 w9 w13", "w14", "w15"]),
        item(4, "chelsea.webp", "w44 w45 w46 w47", &["w48", "w49"]),
    ];
    let refs: Vec<&Item> = items.iter().collect();
    let (one, three) = (evaluator(1), evaluator(3));
    for protocol in [Protocol::Paper, Protocol::Circular] {
        let alone = one.answer_many(&refs, protocol, Some(4));
        let batched = three.answer_many(&refs, protocol, Some(4));
        assert_eq!(alone.len(), items.len());
        for (k, (a, b)) in alone.iter().zip(&batched).enumerate() {
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{protocol} item {k}");
                    let n = if protocol == Protocol::Circular {
                        items[k].options.len()
                    } else {
                        1
                    };
                    assert_eq!(a.generated.as_ref().map(Vec::len), Some(n));
                }
                (
                    Err(EvalError::Input { path: pa, .. }),
                    Err(EvalError::Input { path: pb, .. }),
                ) => {
                    assert_eq!(k, 2, "only the missing image fails");
                    assert_eq!(pa, pb);
                }
                other => panic!("{protocol} item {k}: {other:?}"),
            }
        }
    }
    // A run in batches writes, for the readable items, the lines a run of one at a time writes.
    let run = |ev: &Evaluator<'_, B>| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RunConfig {
            benchmark: Benchmark::MmBench,
            protocol: Protocol::Paper,
            out: dir.path().to_path_buf(),
            limit: None,
            max_new_tokens: Some(3),
            skip_bad_rows: true,
            skipped_rows: 0,
        };
        let summary = run_benchmark(ev, &items, &cfg, |_, _| {}).unwrap();
        assert_eq!(summary.skipped, 1);
        read_records(&dir.path().join("items.jsonl")).unwrap()
    };
    let (a, b) = (run(&one), run(&three));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b);
}
