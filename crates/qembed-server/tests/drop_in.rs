//! Cohere's `/v2/embed` and TEI's `/embed` (and `POST /`) in-process: the vectors
//! against an offline load of the same fixture, every output form, truncation on each
//! side, and bad input in each API family's own error shape.

mod common;

use common::{cosine, fixture, long_text, TestApp};
use qembed_engine::{
    quantize, DTypeChoice, Embedder, Input, LoadOptions, OutputOptions, Truncate,
    DEFAULT_QUERY_INSTRUCTION,
};
use serde_json::{json, Value};

const MODEL: &str = "qwen3-tiny-gqa";

fn offline() -> Embedder {
    let opts = LoadOptions {
        dtype: DTypeChoice::F32,
        max_length: Some(64),
        ..LoadOptions::default()
    };
    Embedder::load(&fixture(MODEL), &opts).unwrap()
}

/// The vector of `text` as the offline embedder makes it, tokenised as `truncate` says.
fn want(
    e: &Embedder,
    text: &str,
    instruction: Option<&str>,
    truncate: Truncate,
    dims: Option<usize>,
    normalize: bool,
) -> Vec<f32> {
    let ids = e.tokenize(Input { text, instruction }, truncate).unwrap();
    let raw = e.embed_ids(&[ids]).unwrap().remove(0);
    let out = OutputOptions {
        dimensions: dims,
        normalize,
    };
    qembed_engine::postprocess::finish(&raw, out.dimensions, out.normalize).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "{what}: max |diff| {worst}");
}

fn args() -> Vec<&'static str> {
    vec![
        "--max-input-tokens",
        "64",
        "--max-client-batch-size",
        "8",
        "--prompt",
        "classification=Classify the sentiment of the text",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_v2_embed_returns_every_type_for_each_input_type() {
    let t = TestApp::start(MODEL, &args()).await;
    let e = offline();
    let texts = [
        "the first text",
        "a second, longer text about something else",
    ];
    let types = ["float", "int8", "uint8", "binary", "ubinary", "base64"];
    for (input_type, instruction) in [
        ("search_query", Some(DEFAULT_QUERY_INSTRUCTION)),
        ("search_document", None),
        ("classification", Some("Classify the sentiment of the text")),
        ("clustering", None),
    ] {
        let body = json!({
            "model": MODEL,
            "texts": texts,
            "input_type": input_type,
            "embedding_types": types,
        });
        let r = t.post("/v2/embed", &body).await;
        assert_eq!(r.status, 200, "{input_type}: {}", r.text);
        let emb = &r.body["embeddings"];
        assert_eq!(r.body["texts"], json!(texts));
        assert_eq!(r.body["response_type"], "embeddings_by_type");
        assert!(r.body["id"].as_str().is_some_and(|s| !s.is_empty()));
        let mut tokens = 0;
        for (i, text) in texts.iter().enumerate() {
            let w = want(&e, text, instruction, Truncate::End, None, true);
            tokens += e
                .tokenize(Input { text, instruction }, Truncate::End)
                .unwrap()
                .len();
            let f = floats(&emb["float"][i]);
            assert_close(&f, &w, &format!("{input_type} float[{i}]"));
            // The integer forms are those of the float vector served beside them.
            let ints = |k: &str| -> Vec<i64> { serde_json::from_value(emb[k][i].clone()).unwrap() };
            let as_i64 = |v: Vec<i8>| v.into_iter().map(i64::from).collect::<Vec<_>>();
            assert_eq!(ints("int8"), as_i64(quantize::int8(&f)));
            assert_eq!(
                ints("uint8"),
                quantize::uint8(&f)
                    .into_iter()
                    .map(i64::from)
                    .collect::<Vec<_>>()
            );
            assert_eq!(ints("binary"), as_i64(quantize::binary(&f)));
            assert_eq!(ints("binary").len(), f.len().div_ceil(8));
            assert_eq!(
                ints("ubinary"),
                quantize::ubinary(&f)
                    .into_iter()
                    .map(i64::from)
                    .collect::<Vec<_>>()
            );
            let b64 = common::decode_base64(emb["base64"][i].as_str().unwrap());
            assert_eq!(b64, f, "base64 is the float vector's bytes");
        }
        assert_eq!(
            r.body["meta"]["billed_units"]["input_tokens"],
            json!(tokens)
        );
    }
    // Only what was asked for; float when nothing is.
    let r = t
        .post(
            "/v2/embed",
            &json!({"texts": ["x y"], "input_type": "search_document", "embedding_types": ["int8"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys: Vec<_> = r.body["embeddings"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["int8"]);
    let r = t
        .post(
            "/v2/embed",
            &json!({"texts": ["x y"], "input_type": "search_document"}),
        )
        .await;
    let keys: Vec<_> = r.body["embeddings"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["float"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_inputs_dimension_truncation_and_max_tokens() {
    let t = TestApp::start(MODEL, &args()).await;
    let e = offline();
    // `inputs` with content parts embed like `texts`.
    let by_texts = t
        .post(
            "/v2/embed",
            &json!({"texts": ["hello world"], "input_type": "search_document"}),
        )
        .await;
    let by_inputs = t
        .post(
            "/v2/embed",
            &json!({
                "inputs": [{"content": [{"type": "text", "text": "hello world"}]}],
                "input_type": "search_document",
            }),
        )
        .await;
    assert_eq!(by_inputs.status, 200, "{}", by_inputs.text);
    assert_eq!(by_inputs.body["embeddings"], by_texts.body["embeddings"]);

    // output_dimension: Matryoshka truncation, then normalisation, then quantisation.
    let r = t
        .post(
            "/v2/embed",
            &json!({"texts": ["hello world"], "input_type": "search_document",
                    "output_dimension": 32, "embedding_types": ["float", "ubinary"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let w = want(&e, "hello world", None, Truncate::End, Some(32), true);
    assert_close(&floats(&r.body["embeddings"]["float"][0]), &w, "dims 32");
    assert_eq!(
        r.body["embeddings"]["ubinary"][0].as_array().unwrap().len(),
        4
    );

    // Over-long input: END (Cohere's default) keeps the start, START the end, NONE refuses.
    let long = long_text(200);
    for (truncate, side) in [
        (None, Truncate::End),
        (Some("END"), Truncate::End),
        (Some("START"), Truncate::Start),
    ] {
        let mut body = json!({"texts": [long], "input_type": "search_document"});
        if let Some(s) = truncate {
            body["truncate"] = json!(s);
        }
        let r = t.post("/v2/embed", &body).await;
        assert_eq!(r.status, 200, "{truncate:?}: {}", r.text);
        let w = want(&e, &long, None, side, None, true);
        assert_close(
            &floats(&r.body["embeddings"]["float"][0]),
            &w,
            &format!("truncate {truncate:?}"),
        );
        assert_eq!(r.body["meta"]["billed_units"]["input_tokens"], json!(64));
    }
    // max_tokens: each input held to that many tokens, cut as `truncate` says.
    let r = t
        .post(
            "/v2/embed",
            &json!({"texts": [long], "input_type": "search_document", "max_tokens": 10}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["meta"]["billed_units"]["input_tokens"], json!(10));
    let ids = e
        .tokenize_capped(
            Input {
                text: &long,
                instruction: None,
            },
            Truncate::End,
            Some(10),
        )
        .unwrap();
    let raw = e.embed_ids(&[ids]).unwrap().remove(0);
    let w = qembed_engine::postprocess::finish(&raw, None, true).unwrap();
    assert_close(
        &floats(&r.body["embeddings"]["float"][0]),
        &w,
        "max_tokens 10",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_bad_input_gets_cohere_errors() {
    let t = TestApp::start(MODEL, &args()).await;
    let long = long_text(200);
    let ok = json!({"texts": ["a b"], "input_type": "search_document"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = vec![
        (json!({"texts": ["a"]}), 400, "input_type"),
        (with("input_type", json!("search")), 400, "search"),
        (with("input_type", json!("image")), 400, "text only"),
        (
            with("embedding_types", json!(["float", "int4"])),
            400,
            "int4",
        ),
        (with("embedding_types", json!([])), 400, "embedding_types"),
        (with("output_dimension", json!(31)), 400, "dimensions"),
        (with("output_dimension", json!(65)), 400, "dimensions"),
        (with("output_dimension", json!(-1)), 400, "output_dimension"),
        (with("truncate", json!("MIDDLE")), 400, "truncate"),
        (with("max_tokens", json!(0)), 400, "max_tokens"),
        (with("model", json!("nope")), 404, "nope"),
        (
            with("images", json!(["data:image/png;base64,AAAA"])),
            400,
            "images",
        ),
        (json!({"input_type": "search_document"}), 400, "texts"),
        (
            json!({"texts": ["a"], "inputs": [{"content": [{"type": "text", "text": "a"}]}], "input_type": "search_document"}),
            400,
            "not both",
        ),
        (
            json!({"inputs": [{"content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "input_type": "search_document"}),
            400,
            "text only",
        ),
        (
            json!({"texts": vec!["a"; 9], "input_type": "search_document"}),
            400,
            "limit",
        ),
        (
            json!({"texts": [long], "input_type": "search_document", "truncate": "NONE"}),
            400,
            "tokens",
        ),
    ];
    for (body, status, needle) in cases {
        let r = t.post("/v2/embed", &body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        let message = r.body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not Cohere's error shape: {}", r.text));
        assert!(message.contains(needle), "{body}: {message}");
        assert!(r.body.get("error").is_none(), "{}", r.text);
    }
    // Still serving.
    assert_eq!(t.post("/v2/embed", &ok).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_embed_and_root_route() {
    let t = TestApp::start(MODEL, &args()).await;
    let e = offline();
    let texts = ["the first text", "another one"];
    for path in ["/embed", "/"] {
        let r = t.post(path, &json!({"inputs": texts})).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let got: Vec<Vec<f32>> = serde_json::from_value(r.body.clone()).unwrap();
        assert_eq!(got.len(), 2);
        for (g, text) in got.iter().zip(texts) {
            assert_close(g, &want(&e, text, None, Truncate::End, None, true), path);
        }
        // One string is a batch of one.
        let r = t.post(path, &json!({"inputs": "another one"})).await;
        let got: Vec<Vec<f32>> = serde_json::from_value(r.body.clone()).unwrap();
        assert_eq!(got.len(), 1);
    }
    // normalize false: the raw pooled vector; dimensions: Matryoshka.
    let r = t
        .post(
            "/embed",
            &json!({"inputs": ["another one"], "normalize": false, "dimensions": 32}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got: Vec<Vec<f32>> = serde_json::from_value(r.body.clone()).unwrap();
    let w = want(&e, "another one", None, Truncate::End, Some(32), false);
    assert_close(&got[0], &w, "raw, 32 dims");
    let norm: f32 = got[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "not normalised (norm {norm})");
    // prompt_name picks a configured prompt, as an instruction.
    let r = t
        .post(
            "/embed",
            &json!({"inputs": ["another one"], "prompt_name": "classification"}),
        )
        .await;
    let got: Vec<Vec<f32>> = serde_json::from_value(r.body.clone()).unwrap();
    let instruction = Some("Classify the sentiment of the text");
    let w = want(&e, "another one", instruction, Truncate::End, None, true);
    assert_close(&got[0], &w, "prompt_name");
    // Truncation: refused by default; right keeps the start, left the end.
    let long = long_text(200);
    let (left, right) = (
        want(&e, &long, None, Truncate::Start, None, true),
        want(&e, &long, None, Truncate::End, None, true),
    );
    assert!(cosine(&left, &right) < 0.999, "the two sides must differ");
    let r = t.post("/embed", &json!({"inputs": [long]})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error_type"], "validation");
    for (direction, side) in [
        ("right", Truncate::End),
        ("left", Truncate::Start),
        ("Left", Truncate::Start),
    ] {
        let r = t
            .post(
                "/embed",
                &json!({"inputs": [long], "truncate": true, "truncation_direction": direction}),
            )
            .await;
        assert_eq!(r.status, 200, "{direction}: {}", r.text);
        let got: Vec<Vec<f32>> = serde_json::from_value(r.body.clone()).unwrap();
        assert_close(&got[0], &want(&e, &long, None, side, None, true), direction);
    }
    // The same on the OpenAI route's extension fields.
    let r = t
        .post(
            "/v1/embeddings",
            &json!({"input": [long], "truncate": true, "truncation_direction": "left"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got = floats(&r.body["data"][0]["embedding"]);
    assert_close(
        &got,
        &want(&e, &long, None, Truncate::Start, None, true),
        "openai left",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_bad_input_gets_tei_errors() {
    let t = TestApp::start(MODEL, &args()).await;
    for (body, status) in [
        (json!({}), 400),
        (json!({"inputs": []}), 400),
        (json!({"inputs": [""]}), 400),
        (json!({"inputs": "a", "dimensions": 8}), 400),
        (json!({"inputs": "a", "truncation_direction": "up"}), 400),
        (json!({"inputs": "a", "prompt_name": "nope"}), 400),
        (json!({"inputs": "a", "normalize": "yes"}), 400),
        (json!({"inputs": vec!["a"; 9]}), 400),
    ] {
        for path in ["/embed", "/"] {
            let r = t.post(path, &body).await;
            assert_eq!(r.status, status, "{path} {body}: {}", r.text);
            assert!(
                r.body["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{}",
                r.text
            );
            assert_eq!(r.body["error_type"], "validation", "{}", r.text);
        }
    }
    // A reranker's embed routes say which task they need, in each family's shape.
    let rr = TestApp::start("qwen3-rerank-tied", &["--task", "rerank"]).await;
    let r = rr.post("/embed", &json!({"inputs": "a"})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"].as_str().unwrap().contains("--task embed"),
        "{}",
        r.text
    );
    let r = rr
        .post(
            "/v2/embed",
            &json!({"texts": ["a"], "input_type": "search_document"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["message"].as_str().unwrap().contains("--task embed"),
        "{}",
        r.text
    );
}
