//! The real Llama-3 tokenizer and chat template against python `tokenizers`/`transformers`
//! (fixture by scripts/make_tokenizer_fixtures.py).

use og_llm::{ChatTokenizer, Message, Segment};
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizers")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn llama3_ids_and_chat_match_python() {
    let tok = ChatTokenizer::from_dir(root().join("llama3")).unwrap();
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("llama3_cases.json")).unwrap())
            .unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&c["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&c["ids_special"]),
            "{text:?} (special)"
        );
        let back = tok.decode(&ids(&c["ids"]), false).unwrap();
        assert_eq!(back, c["decoded"].as_str().unwrap(), "decode {text:?}");
    }
    assert_eq!(
        tok.encode("Hello, my dog is cute", false).unwrap(),
        vec![9906, 11, 856, 5679, 374, 19369]
    );
    let messages: Vec<Message> = serde_json::from_value(fx["chat"]["messages"].clone()).unwrap();
    let rendered = tok.render(&messages, true).unwrap();
    assert_eq!(rendered, fx["chat"]["rendered"].as_str().unwrap());
    assert_eq!(
        tok.encode(&rendered, false).unwrap(),
        ids(&fx["chat"]["ids"])
    );
    // Split at <image>: one BOS, then the image slot, then the rest.
    let segs = tok.encode_chat(&messages, true).unwrap();
    let (before, after) = rendered.split_once("<image>").unwrap();
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[0], Segment::Text(tok.encode(before, false).unwrap()));
    assert_eq!(segs[1], Segment::Image(0));
    assert_eq!(segs[2], Segment::Text(tok.encode(after, false).unwrap()));
    // As one id sequence: the image token in the image's slot.
    let mut want = tok.encode(before, false).unwrap();
    want.push(7);
    want.extend(tok.encode(after, false).unwrap());
    assert_eq!(tok.encode_chat_ids(&messages, true, 7).unwrap(), want);
    let Segment::Text(first) = &segs[0] else {
        panic!()
    };
    assert_eq!(
        first.iter().filter(|&&t| t == 128000).count(),
        1,
        "exactly one <|begin_of_text|>"
    );
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(128000), Some(128001)));
    assert_eq!(tok.token_id("<|eot_id|>"), Some(128009));
}
