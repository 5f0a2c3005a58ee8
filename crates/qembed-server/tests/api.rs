//! The HTTP application in-process (no socket, no process): bad input, concurrency,
//! overload, auth and what is served, each against a fixture model loaded for real.

mod common;

use std::sync::Arc;

use common::{
    assert_error_shape, cosine, decode_base64, fixture, long_text, metric, Reference, TestApp,
};
use qembed_engine::{DTypeChoice, Embedder, Input, LoadOptions, OutputOptions};
use serde_json::{json, Value};

const MODEL: &str = "qwen3-tiny-gqa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_openai_errors_and_the_server_keeps_serving() {
    let t = TestApp::start(
        MODEL,
        &[
            "--max-client-batch-size",
            "8",
            "--max-input-tokens",
            "64",
            "--max-body-bytes",
            "4096",
            "--prompt",
            "query=Given a query, find passages",
        ],
    )
    .await;
    let url = "/v1/embeddings";
    let long = long_text(200);
    // (body, status, param, code)
    let json_cases: Vec<(Value, u16, Option<&str>, Option<&str>)> = vec![
        (json!([1, 2]), 400, None, None),
        (json!({}), 400, Some("input"), None),
        (json!({"input": null}), 400, Some("input"), None),
        (json!({"input": 5}), 400, Some("input"), None),
        (json!({"input": {"text": "a"}}), 400, Some("input"), None),
        (json!({"input": ""}), 400, Some("input"), None),
        (json!({"input": []}), 400, Some("input"), None),
        (json!({"input": ["a", ""]}), 400, Some("input"), None),
        (json!({"input": ["a", 1]}), 400, Some("input"), None),
        (json!({"input": [true]}), 400, Some("input"), None),
        (json!({"input": [-1]}), 400, Some("input"), None),
        (json!({"input": [1.5]}), 400, Some("input"), None),
        (json!({"input": [4294967296u64]}), 400, Some("input"), None),
        (json!({"input": [[]]}), 400, Some("input"), None),
        (json!({"input": [[1], "a"]}), 400, Some("input"), None),
        (
            json!({"input": [[1, 100000]]}),
            400,
            Some("input[0]"),
            Some("invalid_token"),
        ),
        (
            json!({"input": "a", "dimensions": 31}),
            400,
            Some("dimensions"),
            Some("invalid_dimensions"),
        ),
        (
            json!({"input": "a", "dimensions": 65}),
            400,
            Some("dimensions"),
            Some("invalid_dimensions"),
        ),
        (
            json!({"input": "a", "dimensions": -1}),
            400,
            Some("dimensions"),
            None,
        ),
        (
            json!({"input": "a", "dimensions": "32"}),
            400,
            Some("dimensions"),
            None,
        ),
        (
            json!({"input": "a", "encoding_format": "int8"}),
            400,
            Some("encoding_format"),
            None,
        ),
        (
            json!({"input": "a", "model": "gpt-4"}),
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        (json!({"input": "a", "model": 7}), 400, Some("model"), None),
        (json!({"input": vec!["a"; 9]}), 400, Some("input"), None),
        (
            json!({"input": ["ok", long]}),
            400,
            Some("input[1]"),
            Some("context_length_exceeded"),
        ),
        (
            json!({"input": "a", "truncate": "yes"}),
            400,
            Some("truncate"),
            None,
        ),
        (
            json!({"input": [[1, 2]], "instruction": "task"}),
            400,
            Some("instruction"),
            None,
        ),
        (
            json!({"input": "a", "prompt_name": "nope"}),
            400,
            Some("prompt_name"),
            None,
        ),
        (
            json!({"input": "a", "instruction": 5}),
            400,
            Some("instruction"),
            None,
        ),
        (json!({"input": "a", "user": 5}), 400, Some("user"), None),
        (
            json!({"input": "a", "prompt_name": "query", "instruction": "x"}),
            400,
            Some("prompt_name"),
            None,
        ),
    ];
    for (body, status, param, code) in &json_cases {
        let r = t.post(url, body).await;
        assert_eq!(r.status, *status, "{body}: {}", r.text);
        let err = assert_error_shape(&r.body);
        if let Some(p) = param {
            assert_eq!(err["param"], json!(p), "{body}: {}", r.text);
        }
        if let Some(code) = code {
            assert_eq!(err["code"], json!(code), "{body}: {}", r.text);
        }
    }
    // Raw bodies and routes.
    let r = t.post_raw(url, "{\"input\": ").await;
    assert_eq!(r.status, 400);
    assert_error_shape(&r.body);
    let r = t
        .post_raw(url, format!("{{\"input\": \"{}\"}}", "x".repeat(10_000)))
        .await;
    assert_eq!(r.status, 413);
    assert_error_shape(&r.body);
    let r = t.get("/v1/nothing").await;
    assert_eq!(r.status, 404);
    assert_error_shape(&r.body);
    // Unknown routes answer in the shape of the API family their path belongs to.
    let r = t.get("/v2/nothing").await;
    assert_eq!(r.status, 404);
    assert!(r.body["message"].is_string(), "Cohere's shape: {}", r.text);
    let r = t.get(url).await;
    assert_eq!(r.status, 405);
    assert_error_shape(&r.body);
    let r = t.get("/v1/models/gpt-4").await;
    assert_eq!(r.status, 404);
    assert_error_shape(&r.body);

    // Still serving, and the valid forms work: truncation on request, a named prompt.
    let ok = t
        .post(url, &json!({"input": ["ok", long], "truncate": true}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["data"].as_array().unwrap().len(), 2);
    let ok = t
        .post(url, &json!({"input": "a", "prompt_name": "query"}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let ok = t
        .post(url, &json!({"input": [[1, 2, 3], [4]], "model": MODEL}))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(
        ok.body["usage"]["prompt_tokens"],
        json!(6),
        "EOS appended to each token array"
    );
}

/// 240 concurrent requests, each with its own texts, each answer checked against the
/// vector of its own text computed alone, offline: nothing lost, nothing mixed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_vectors() {
    let t = Arc::new(TestApp::start(MODEL, &["--color", "green", "--batch-wait-ms", "5"]).await);
    let offline = Embedder::load(
        &fixture(MODEL),
        &LoadOptions {
            dtype: DTypeChoice::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let task = "Given a web search query, retrieve relevant passages";
    let mut set = tokio::task::JoinSet::new();
    for i in 0..240usize {
        let t = t.clone();
        set.spawn(async move {
            let texts: Vec<String> = (0..1 + i % 3)
                .map(|j| {
                    format!(
                        "request {i} text {j}: {}",
                        long_text(1 + (i * 13 + j * 29) % 150)
                    )
                })
                .collect();
            let dims = if i % 4 == 0 { Some(32) } else { None };
            let base64 = i % 2 == 0;
            let instruct = i % 5 == 0;
            let mut body = json!({"input": texts, "model": MODEL});
            if let Some(d) = dims {
                body["dimensions"] = json!(d);
            }
            if base64 {
                body["encoding_format"] = json!("base64");
            }
            if instruct {
                body["instruction"] = json!(task);
            }
            let r = t.post("/v1/embeddings", &body).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.headers["x-qembed-color"], "green");
            (i, texts, dims, base64, instruct, r.body)
        });
    }
    let mut answered = 0;
    while let Some(res) = set.join_next().await {
        let (i, texts, dims, base64, instruct, v) = res.unwrap();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), texts.len());
        let mut tokens = 0;
        for (j, (item, text)) in data.iter().zip(&texts).enumerate() {
            assert_eq!(item["index"], json!(j));
            let got = if base64 {
                decode_base64(item["embedding"].as_str().unwrap())
            } else {
                serde_json::from_value(item["embedding"].clone()).unwrap()
            };
            let input = Input {
                text,
                instruction: instruct.then_some(task),
            };
            let out = OutputOptions {
                dimensions: dims,
                normalize: true,
            };
            let (want, n) = offline.embed(&[input], false, out).unwrap().remove(0);
            tokens += n;
            let cos = cosine(&got, &want);
            assert!(cos >= 0.99999, "request {i} input {j}: cosine {cos}");
        }
        assert_eq!(v["usage"]["prompt_tokens"], json!(tokens));
        answered += 1;
    }
    assert_eq!(answered, 240);

    // The batcher did combine requests: more requests than batches.
    let m = t.get("/metrics").await.text;
    let sum = metric(&m, "qembed_batch_requests_sum").expect("batch requests sum");
    let count = metric(&m, "qembed_batch_requests_count").expect("batch requests count");
    assert_eq!(sum, 240.0, "every request ran in exactly one batch");
    assert!(
        count < sum,
        "no batch combined two requests ({count} batches)"
    );
    assert!(m.contains("qembed_requests_total{route=\"/v1/embeddings\",status=\"200\"} 240"));
    assert!(m.contains("qembed_model_info{color=\"green\""));
    // Memory: this process's resident set at the scrape; no GPU series on a CPU server.
    let rss = metric(&m, "qembed_process_resident_memory_bytes").expect("resident memory");
    assert!(rss > 1e7, "resident memory {rss} bytes");
    assert!(!m.contains("qembed_gpu_memory_used_bytes{"), "{m}");
}

/// More requests than the server admits: the excess gets 429 with Retry-After at once;
/// everything admitted completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_429_with_retry_after() {
    let t = Arc::new(
        TestApp::start(
            MODEL,
            &[
                "--max-concurrent-requests",
                "2",
                "--max-batch-requests",
                "1",
            ],
        )
        .await,
    );
    let body = json!({"input": vec![long_text(300); 8], "truncate": true});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (t, body) = (t.clone(), body.clone());
        set.spawn(async move { t.post("/v1/embeddings", &body).await });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(r.headers["retry-after"], "1");
                assert_eq!(
                    assert_error_shape(&r.body)["code"],
                    json!("rate_limit_exceeded")
                );
            }
            other => panic!("unexpected status {other}: {}", r.text),
        }
    }
    assert!(ok >= 2 && refused >= 1, "ok {ok}, refused {refused}");
    assert_eq!(ok + refused, 40);
}

/// The queued-token budget: a request larger than all of it gets 413 naming the flag (in
/// the route's error shape), and the server goes on serving requests that fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_queued_token_budget_gets_413() {
    let t = TestApp::start(MODEL, &["--max-queued-tokens", "500"]).await;
    let body = json!({"input": vec![long_text(300); 3], "truncate": true});
    let r = t.post("/v1/embeddings", &body).await;
    assert_eq!(r.status, 413, "{}", r.text);
    let e = assert_error_shape(&r.body);
    assert_eq!(e["code"], json!("too_many_tokens"));
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--max-queued-tokens"),
        "{e:?}"
    );
    let r = t.post("/v1/embeddings", &json!({"input": ["short"]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = t.get("/metrics").await.text;
    assert_eq!(metric(&m, "qembed_queued_tokens"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_on_api_routes_only() {
    let t = TestApp::start(MODEL, &["--api-key", "s3cret"]).await;
    let url = "/v1/embeddings";
    let body = json!({"input": "hello"});
    let r = t.post(url, &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        assert_error_shape(&r.body)["code"],
        json!("invalid_api_key")
    );
    let r = t
        .post_with(url, &[("authorization", "Bearer wrong")], &body)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(t.get("/v1/models").await.status, 401);
    let r = t
        .post_with(url, &[("authorization", "Bearer s3cret")], &body)
        .await;
    assert_eq!(r.status, 200);
    let models = t
        .get_with("/v1/models", &[("authorization", "Bearer s3cret")])
        .await;
    assert_eq!(models.body["data"][0]["id"], json!(MODEL));
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(t.get(open).await.status, 200, "{open}");
    }
}

/// /info, /v1/models and /tokenize describe what is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_models_and_tokenize() {
    let t = TestApp::start(
        MODEL,
        &[
            "--color",
            "blue",
            "--served-model-name",
            "qwen3-embed",
            "--served-model-name",
            "alias",
        ],
    )
    .await;
    let info = t.get("/info").await.body;
    assert_eq!(info["color"], json!("blue"));
    assert_eq!(info["model_id"], json!("qwen3-embed"));
    assert_eq!(info["hidden_size"], json!(64));
    // TEI's names for the same facts, and the CPU kernel the load chose.
    assert_eq!(info["max_input_length"], info["max_input_tokens"]);
    assert_eq!(info["model_dtype"], info["dtype"]);
    assert_eq!(
        info["model_type"]["embedding"]["pooling"],
        json!("last_token")
    );
    let kernel = info["cpu_kernel"].as_str().unwrap();
    assert!(
        ["amx", "mkl", "avx512", "avx2", "portable"].contains(&kernel),
        "{kernel}"
    );
    assert!(info["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let r = t.get("/health").await;
    assert_eq!(
        r.headers["x-qembed-fingerprint"],
        info["fingerprint"].as_str().unwrap()
    );
    let models = t.get("/v1/models").await.body;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["qwen3-embed", "alias"]);
    let r = t
        .post("/v1/embeddings", &json!({"input": "x", "model": "alias"}))
        .await;
    assert_eq!((r.status, &r.body["model"]), (200, &json!("alias")));

    let reference = Reference::load(MODEL);
    let case = reference
        .cases
        .iter()
        .find(|c| c.instruction.is_some())
        .expect("an instructed case");
    let tok = t
        .post(
            "/tokenize",
            &json!({"input": [case.text], "instruction": case.instruction}),
        )
        .await;
    assert_eq!(tok.status, 200, "{}", tok.text);
    assert_eq!(tok.body["data"][0]["tokens"], json!(case.input_ids));
}

/// `--tensor-parallel 2` (on CPU: two ranks on threads, in-process all-reduce) serves
/// the same vectors as the single-rank embedder, and says so in /info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_parallel_server_serves_the_same_vectors() {
    let t = TestApp::start(MODEL, &["--tensor-parallel", "2"]).await;
    let offline = Embedder::load(&fixture(MODEL), &LoadOptions::default()).unwrap();
    let info = t.get("/info").await.body;
    assert_eq!(info["tensor_parallel"], json!(2));
    assert_eq!(info["device"], json!("cpu"));
    let texts = vec![long_text(40), "short".to_string(), long_text(200)];
    let r = t.post("/v1/embeddings", &json!({"input": texts})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let inputs: Vec<Input> = texts
        .iter()
        .map(|t| Input {
            text: t,
            instruction: None,
        })
        .collect();
    let want = offline
        .embed(&inputs, true, OutputOptions::default())
        .unwrap();
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len(), "one vector per input");
    for (i, (item, (w, _))) in data.iter().zip(&want).enumerate() {
        assert_eq!(item["index"], json!(i));
        let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(got.len(), w.len(), "input {i}: length");
        let norm = got.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "input {i}: norm {norm}");
        let cos = cosine(&got, w);
        assert!(cos >= 0.99999, "input {i}: cosine {cos}");
    }
}
