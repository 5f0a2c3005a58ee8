//! The rerank routes in-process, in all four API shapes (Jina/Cohere v1, Cohere v2,
//! TEI, vLLM score), against the model card's transformers scores for the fixtures;
//! bad input in each family's error shape; the task gate both ways.

mod common;

use std::sync::Arc;

use common::{assert_error_shape, metric, TestApp};
use qembed_engine::rerank::sigmoid;
use qembed_testkit::{RerankGroup, RerankReference, RERANK_FIXTURES};
use serde_json::{json, Value};

const TIED: &str = RERANK_FIXTURES[0];

fn group<'a>(r: &'a RerankReference, name: &str) -> &'a RerankGroup {
    r.groups.iter().find(|g| g.name == name).unwrap()
}

/// Reference order of a group: indices by descending score.
fn order(scores: &[f32]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..scores.len()).collect();
    o.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    o
}

fn close(got: &Value, want: f32, what: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {got}"));
    assert!((got - want as f64).abs() <= 1e-4, "{what}: {got} vs {want}");
}

async fn reranker(args: &[&str]) -> TestApp {
    let mut all = vec!["--task", "rerank"];
    all.extend_from_slice(args);
    TestApp::start(TIED, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_api_shapes_give_the_cards_scores() {
    let t = reranker(&["--served-model-name", "qwen3-reranker"]).await;
    let r = RerankReference::load(TIED);
    let g = group(&r, "many");
    let n = g.documents.len();
    let want = order(&g.scores);
    let tokens: usize = g.input_ids.iter().map(Vec::len).sum();

    // Jina / Cohere v1: sorted, documents returned by default, usage counted.
    let v1 = t
        .post(
            "/v1/rerank",
            &json!({"model": "qwen3-reranker", "query": g.query, "documents": g.documents}),
        )
        .await;
    assert_eq!(v1.status, 200, "{}", v1.text);
    let results = v1.body["results"].as_array().unwrap();
    assert_eq!(results.len(), n);
    for (rank, (item, &i)) in results.iter().zip(&want).enumerate() {
        assert_eq!(item["index"], json!(i), "rank {rank}");
        close(&item["relevance_score"], g.scores[i], "v1 score");
        assert_eq!(item["document"]["text"], json!(g.documents[i]));
    }
    assert_eq!(v1.body["model"], json!("qwen3-reranker"));
    assert_eq!(v1.body["usage"]["total_tokens"], json!(tokens));
    assert!(v1.body["id"].as_str().is_some_and(|s| !s.is_empty()));

    // top_n cuts after sorting; documents can be objects; return_documents false.
    let docs: Vec<Value> = g.documents.iter().map(|d| json!({"text": d})).collect();
    let top = t
        .post(
            "/v1/rerank",
            &json!({"query": g.query, "documents": docs, "top_n": 3, "return_documents": false}),
        )
        .await;
    assert_eq!(top.status, 200, "{}", top.text);
    let results = top.body["results"].as_array().unwrap();
    let idx: Vec<usize> = results
        .iter()
        .map(|x| x["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(idx, want[..3]);
    assert!(results.iter().all(|x| x.get("document").is_none()));

    // Cohere v2.
    let v2 = t
        .post(
            "/v2/rerank",
            &json!({"model": "qwen3-reranker", "query": g.query, "documents": g.documents, "top_n": 5}),
        )
        .await;
    assert_eq!(v2.status, 200, "{}", v2.text);
    let results = v2.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (item, &i) in results.iter().zip(&want) {
        assert_eq!(item["index"], json!(i));
        close(&item["relevance_score"], g.scores[i], "v2 score");
    }
    assert_eq!(v2.body["meta"]["api_version"]["version"], json!("2"));

    // TEI: a bare array, sorted; text on request; raw scores are the logits.
    let tei = t
        .post(
            "/rerank",
            &json!({"query": g.query, "texts": g.documents, "return_text": true, "raw_scores": true}),
        )
        .await;
    assert_eq!(tei.status, 200, "{}", tei.text);
    let results = tei.body.as_array().unwrap();
    assert_eq!(results.len(), n);
    for (item, &i) in results.iter().zip(&want) {
        assert_eq!(item["index"], json!(i));
        close(&item["score"], g.logits[i], "TEI raw score");
        assert_eq!(item["text"], json!(g.documents[i]));
    }
    // vLLM's Jina-shaped /rerank (documents, not texts) answers in Jina's shape.
    let jina = t
        .post(
            "/rerank",
            &json!({"query": g.query, "documents": g.documents}),
        )
        .await;
    assert_eq!(jina.status, 200, "{}", jina.text);
    assert_eq!(jina.body["results"].as_array().unwrap().len(), n);

    // vLLM score: input order, one text_1 against every text_2.
    let score = t
        .post(
            "/v1/score",
            &json!({"model": "qwen3-reranker", "text_1": g.query, "text_2": g.documents}),
        )
        .await;
    assert_eq!(score.status, 200, "{}", score.text);
    let data = score.body["data"].as_array().unwrap();
    assert_eq!(data.len(), n);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], json!(i));
        assert_eq!(item["object"], json!("score"));
        close(&item["score"], g.scores[i], "vLLM score");
    }
    assert_eq!(score.body["usage"]["prompt_tokens"], json!(tokens));
}

/// Groups with their own instruction, and vLLM's paired lists: every group of both
/// fixtures through /v1/score, against the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_of_both_fixtures_and_paired_lists() {
    for name in RERANK_FIXTURES {
        let t = TestApp::start(name, &["--task", "rerank"]).await;
        let r = RerankReference::load(name);
        let mut checked = 0;
        for g in r.groups.iter().filter(|g| g.max_length.is_none()) {
            let mut body = json!({
                "text_1": vec![g.query.clone(); g.documents.len()],
                "text_2": g.documents,
            });
            if let Some(i) = &g.instruction {
                body["instruct"] = json!(i);
            }
            let s = t.post("/score", &body).await;
            assert_eq!(s.status, 200, "{name}/{}: {}", g.name, s.text);
            let data = s.body["data"].as_array().unwrap();
            assert_eq!(data.len(), g.documents.len(), "{name}/{}", g.name);
            for (item, want) in data.iter().zip(&g.scores) {
                close(&item["score"], *want, &format!("{name}/{}", g.name));
                checked += 1;
            }
        }
        assert!(checked >= 30, "{name}: only {checked} pairs");
    }
}

/// The server's instruction defaults: `--default-instruction`, then `--prompt` by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_named_instructions() {
    let r = RerankReference::load(TIED);
    let g = group(&r, "custom_instruction");
    let task = g.instruction.as_deref().unwrap();
    let prompt = format!("judge={task}");
    let t = reranker(&["--default-instruction", task, "--prompt", &prompt]).await;
    for body in [
        json!({"query": g.query, "documents": g.documents}),
        json!({"query": g.query, "documents": g.documents, "prompt_name": "judge"}),
    ] {
        let v = t.post("/v1/rerank", &body).await;
        assert_eq!(v.status, 200, "{}", v.text);
        for item in v.body["results"].as_array().unwrap() {
            let i = item["index"].as_u64().unwrap() as usize;
            close(&item["relevance_score"], g.scores[i], "instruction");
        }
    }
}

/// A thousand documents in one request run as several forward passes and come back
/// whole, each with the score it has alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_documents_are_split_across_batches() {
    let t = reranker(&[
        "--max-batch-tokens",
        "4096",
        "--max-client-batch-size",
        "1000",
    ])
    .await;
    let r = RerankReference::load(TIED);
    let g = group(&r, "many");
    let docs: Vec<String> = (0..1000)
        .map(|i| g.documents[i % g.documents.len()].clone())
        .collect();
    let v = t
        .post("/v1/score", &json!({"text_1": g.query, "text_2": docs}))
        .await;
    assert_eq!(v.status, 200, "{}", v.text);
    let data = v.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1000);
    for (i, item) in data.iter().enumerate() {
        close(&item["score"], g.scores[i % g.documents.len()], "document");
    }
    let m = t.get("/metrics").await.text;
    assert_eq!(metric(&m, "qembed_rerank_pairs_total"), Some(1000.0));
    let tokens: usize = (0..1000)
        .map(|i| g.input_ids[i % g.documents.len()].len())
        .sum();
    assert!(tokens > 4096 * 10, "the request needs many forward passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_each_familys_error_shape() {
    let t = reranker(&["--max-client-batch-size", "4", "--max-input-tokens", "128"]).await;
    let long = "word ".repeat(400);
    // (route, body, status, param) on the OpenAI-shaped routes.
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/rerank", json!({"query": "q"}), 400, "documents"),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": []}),
            400,
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", 5]}),
            400,
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [""]}),
            400,
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": 0}),
            400,
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": "2"}),
            400,
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": vec!["a"; 5]}),
            400,
            "documents",
        ),
        ("/v1/rerank", json!({"documents": ["a"]}), 400, "query"),
        (
            "/v1/rerank",
            json!({"query": "", "documents": ["a"]}),
            400,
            "query",
        ),
        (
            "/v1/rerank",
            json!({"query": 3, "documents": ["a"]}),
            400,
            "query",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "model": "gpt-4"}),
            404,
            "model",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "instruction": "x", "instruct": "y"}),
            400,
            "instruct",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "prompt_name": "nope"}),
            400,
            "prompt_name",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [long], "truncate": false}),
            400,
            "documents[0]",
        ),
        (
            "/v1/score",
            json!({"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}),
            400,
            "text_1",
        ),
        ("/v1/score", json!({"text_1": "a"}), 400, "text_2"),
    ];
    for (route, body, status, param) in &cases {
        let r = t.post(route, body).await;
        assert_eq!(r.status, *status, "{route} {body}: {}", r.text);
        let err = assert_error_shape(&r.body);
        assert_eq!(err["param"], json!(param), "{route} {body}: {}", r.text);
    }
    // Over-long input is cut by default (the card's behaviour).
    let ok = t
        .post("/v1/rerank", &json!({"query": "q", "documents": [long]}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // Cohere v2: {"message"}.
    for body in [
        json!({"query": "q", "documents": []}),
        json!({"query": "q", "documents": ["a"], "top_n": 0}),
        json!({"documents": ["a"]}),
        json!({"query": "q", "documents": ["a"], "max_tokens_per_doc": -3}),
    ] {
        let r = t.post("/v2/rerank", &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(
            r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.text
        );
        assert!(r.body.get("error").is_none(), "{}", r.text);
    }
    let r = t
        .post(
            "/v2/rerank",
            &json!({"model": "nope", "query": "q", "documents": ["a"]}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.body["message"].is_string());

    // TEI: {"error", "error_type"}; over-long refused unless truncate is true.
    for body in [
        json!({"query": "q", "texts": []}),
        json!({"query": "q", "texts": [long]}),
        json!({"texts": ["a"]}),
        json!({"query": "q", "texts": ["a"], "truncation_direction": "left"}),
        json!({"query": "q", "texts": ["a"], "raw_scores": "yes"}),
    ] {
        let r = t.post("/rerank", &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(
            r.body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.text
        );
        assert_eq!(r.body["error_type"], json!("validation"), "{}", r.text);
    }
    let ok = t
        .post(
            "/rerank",
            &json!({"query": "q", "texts": [long], "truncate": true}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let r = t.post_raw("/rerank", "{\"query\": ").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error_type"], json!("validation"), "{}", r.text);

    // Still serving.
    let ok = t
        .post(
            "/v2/rerank",
            &json!({"query": "q", "documents": ["a", "b"]}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_refuses_the_others_routes() {
    let t = reranker(&[]).await;
    for (route, body) in [
        ("/v1/embeddings", json!({"input": "hello"})),
        ("/tokenize", json!({"input": "hello"})),
    ] {
        let r = t.post(route, &body).await;
        assert_eq!(r.status, 400, "{route}: {}", r.text);
        let err = assert_error_shape(&r.body);
        assert_eq!(err["code"], json!("unsupported_task"));
        assert!(
            err["message"].as_str().unwrap().contains("--task embed"),
            "{}",
            r.text
        );
    }
    let info = t.get("/info").await.body;
    assert_eq!(info["task"], json!("rerank"));
    let m = t.get("/metrics").await.text;
    assert!(m.contains("task=\"rerank\""), "model info names the task");

    let e = TestApp::start("qwen3-tiny-gqa", &[]).await;
    assert_eq!(e.get("/info").await.body["task"], json!("embed"));
    for route in ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/score"] {
        let body =
            json!({"query": "q", "documents": ["a"], "texts": ["a"], "text_1": "q", "text_2": "a"});
        let r = e.post(route, &body).await;
        assert_eq!(r.status, 400, "{route}: {}", r.text);
        assert!(r.text.contains("--task rerank"), "{route}: {}", r.text);
    }
    // And the reranker's fingerprint is not the same checkpoint's embedding one.
    let same = TestApp::start(TIED, &[]).await;
    assert_ne!(
        same.get("/info").await.body["fingerprint"],
        t.get("/info").await.body["fingerprint"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_errors_in_each_familys_shape_and_bearer_in_any_case() {
    let t = Arc::new(reranker(&["--api-key", "k3y"]).await);
    let body = json!({"query": "q", "documents": ["a"], "texts": ["a"]});
    let r = t.post("/v1/rerank", &body).await;
    assert_eq!(r.status, 401);
    assert_error_shape(&r.body);
    let r = t.post("/v2/rerank", &body).await;
    assert_eq!(r.status, 401);
    assert!(r.body["message"].is_string(), "{}", r.text);
    let r = t.post("/rerank", &body).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].is_string(), "{}", r.text);
    for auth in ["Bearer k3y", "bearer k3y", "BEARER k3y"] {
        let r = t
            .post_with("/v2/rerank", &[("authorization", auth)], &body)
            .await;
        assert_eq!(r.status, 200, "{auth}: {}", r.text);
    }
    let r = t
        .post_with("/v2/rerank", &[("authorization", "Bearer nope")], &body)
        .await;
    assert_eq!(r.status, 401);
    // Scores in (0, 1) are the sigmoid of the raw ones.
    let raw = t
        .post_with(
            "/rerank",
            &[("authorization", "Bearer k3y")],
            &json!({"query": "q", "texts": ["a"], "raw_scores": true}),
        )
        .await;
    let plain = t
        .post_with(
            "/rerank",
            &[("authorization", "Bearer k3y")],
            &json!({"query": "q", "texts": ["a"]}),
        )
        .await;
    let logit = raw.body[0]["score"].as_f64().unwrap() as f32;
    close(
        &plain.body[0]["score"],
        sigmoid(logit),
        "sigmoid of the raw score",
    );
}
