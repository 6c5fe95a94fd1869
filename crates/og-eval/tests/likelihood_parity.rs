//! The likelihood protocol's option scores on the tiny llava-hf checkpoint equal transformers'
//! log-likelihoods of the same rows (fixture: scripts/make_eval_fixtures.py): prompt through
//! the chat template and the word-level tokenizer, the image's 25 visual tokens, each option
//! followed by EOS.

mod common;

use burn::tensor::Tensor;
use common::{B, fixtures};
use og_eval::{Benchmark, ImageSource, Item};
use og_llava::ImageInput;
use og_llava::og_vision::ImageProcessor;
use og_weights::Weights;

#[test]
fn option_log_likelihoods_equal_transformers() {
    let device = Default::default();
    let (model, tokenizer) = common::tiny_model_and_tokenizer(&device);
    let processor = ImageProcessor::clip_336();
    let ev = common::evaluator(&model, &tokenizer, &processor, 1);
    let root = fixtures().join("eval/likelihood");
    let pixels: Tensor<B, 4> = Weights::open(root.join("pixel_values.safetensors"))
        .unwrap()
        .tensor("pixel_values", [1, 3, 30, 30], &device)
        .unwrap();
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("rows.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let options: Vec<String> = serde_json::from_value(row["options"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(row["sums"].clone()).unwrap();
        let item = Item {
            bench: Benchmark::MmBench,
            id: "0".into(),
            category: None,
            image: ImageSource::File("unused.png".into()),
            image_name: "unused.png".into(),
            crop: None,
            question: row["question"].as_str().unwrap().into(),
            hint: None,
            prompt: None,
            options,
            answer: 0,
            answer_text: None,
            group: None,
            source: None,
            split: None,
        };
        let image = ImageInput {
            pixel_values: pixels.clone(),
            selection: None,
        };
        let got = ev.option_scores(&item, image).unwrap();
        assert_eq!(got.len(), want.len());
        for ((g, w), option) in got.iter().zip(&want).zip(&item.options) {
            assert_eq!(
                g.tokens,
                option.split_whitespace().count() + 1,
                "words + EOS"
            );
            assert!(
                (g.sum - w).abs() < 1e-4,
                "{}: {} vs transformers {w}",
                item.question,
                g.sum
            );
            assert!((g.mean - g.sum / g.tokens as f64).abs() < 1e-9);
        }
    }
}
