//! Which tokens survive truncation on each side, checked against the untruncated ids
//! of the same text (the fixture tokenizers are real byte-level BPE tokenizers).

use qembed_engine::{
    query_prefix, DTypeChoice, Embedder, EngineError, Input, LoadOptions, Truncate,
};
use qembed_testkit::fixture;

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{}", i * 7919 % 1000))
        .collect::<Vec<_>>()
        .join(" ")
}

fn load(max_length: usize) -> Embedder {
    let opts = LoadOptions {
        dtype: DTypeChoice::F32,
        max_length: Some(max_length),
        ..LoadOptions::default()
    };
    Embedder::load(&fixture("qwen3-tiny-gqa"), &opts).unwrap()
}

#[test]
fn each_side_keeps_its_end_of_the_text_and_the_eos() {
    let full_e = load(2048);
    let e = load(40);
    let eos = e.tokenizer().eos_id();
    let text = words(120);
    let doc = Input {
        text: &text,
        instruction: None,
    };
    let full = full_e.tokenize(doc, Truncate::Refuse).unwrap();
    assert!(full.len() > 40, "the text must be over the limit");
    assert!(matches!(
        e.tokenize(doc, Truncate::Refuse),
        Err(EngineError::TooLong { max: 40, .. })
    ));
    let end = e.tokenize(doc, Truncate::End).unwrap();
    assert_eq!(end.len(), 40);
    assert_eq!(&end[..39], &full[..39], "END keeps the start");
    assert_eq!(end[39], eos);
    let start = e.tokenize(doc, Truncate::Start).unwrap();
    assert_eq!(start.len(), 40);
    assert_eq!(
        &start[..39],
        &full[full.len() - 40..full.len() - 1],
        "START keeps the end"
    );
    assert_eq!(start[39], eos);
    // The old boolean spelling still means END.
    assert_eq!(e.tokenize(doc, true).unwrap(), end);
}

#[test]
fn cutting_the_start_keeps_the_instruction_whole() {
    let full_e = load(2048);
    let e = load(48);
    let task = "Given a query, retrieve passages";
    let text = words(120);
    let query = Input {
        text: &text,
        instruction: Some(task),
    };
    let full = full_e.tokenize(query, Truncate::Refuse).unwrap();
    // The prefix tokenised on its own: what the kept head must equal.
    let head = e.tokenizer().encode_plain(&query_prefix(task)).unwrap();
    assert!(head.len() < 20, "fixture prefix is {} tokens", head.len());
    let got = e.tokenize(query, Truncate::Start).unwrap();
    assert_eq!(got.len(), 48);
    assert_eq!(&got[..head.len()], &head[..], "the instruction is kept");
    let tail = 47 - head.len();
    assert_eq!(
        &got[head.len()..47],
        &full[full.len() - 1 - tail..full.len() - 1],
        "then the end of the text"
    );
    // A limit the instruction alone fills is refused, not silently emptied.
    let tiny = load(head.len() + 1);
    assert!(matches!(
        tiny.tokenize(query, Truncate::Start),
        Err(EngineError::TooLong { .. })
    ));
}

#[test]
fn a_cap_below_the_limit_applies_to_text_and_to_token_input() {
    let e = load(2048);
    let eos = e.tokenizer().eos_id();
    let text = words(60);
    let doc = Input {
        text: &text,
        instruction: None,
    };
    let full = e.tokenize(doc, Truncate::Refuse).unwrap();
    let capped = e.tokenize_capped(doc, Truncate::End, Some(10)).unwrap();
    assert_eq!(capped, [&full[..9], &[eos]].concat());
    assert!(matches!(
        e.tokenize_capped(doc, Truncate::Refuse, Some(10)),
        Err(EngineError::TooLong { max: 10, .. })
    ));
    // A cap above the model's limit is the model's limit.
    assert_eq!(
        e.tokenize_capped(doc, Truncate::End, Some(1 << 20))
            .unwrap(),
        full
    );
    let ids: Vec<u32> = full[..full.len() - 1].to_vec();
    let start = e
        .prepare_ids_capped(ids.clone(), Truncate::Start, Some(10))
        .unwrap();
    assert_eq!(start, [&ids[ids.len() - 9..], &[eos]].concat());
    let end = e
        .prepare_ids_capped(ids.clone(), Truncate::End, Some(10))
        .unwrap();
    assert_eq!(end, [&ids[..9], &[eos]].concat());
}
