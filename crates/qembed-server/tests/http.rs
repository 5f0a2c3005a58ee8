//! `qembed serve` over real HTTP on loopback: bad input, concurrency, overload, drain
//! and auth, each against a real server process serving a fixture model.

mod common;

use std::time::Duration;

use common::{assert_error_shape, cosine, decode_base64, fixture, Server};
use qembed_engine::{DTypeChoice, Embedder, Input, LoadOptions, OutputOptions};
use serde_json::{json, Value};

const MODEL: &str = "qwen3-tiny-gqa";

fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{}", i * 7919 % 1000))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn scrape(c: &reqwest::Client, s: &Server) -> String {
    c.get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `qembed_in_flight_requests` in a scrape of /metrics (the scrape itself included).
fn in_flight_gauge(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("qembed_in_flight_requests ")?.parse().ok())
        .unwrap_or(0.0)
}

async fn in_flight(c: &reqwest::Client, s: &Server) -> f64 {
    in_flight_gauge(&scrape(c, s).await)
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Embedding requests the server has taken in: those in flight (less the scrape
/// itself) plus those already answered.
async fn embedding_requests_seen(c: &reqwest::Client, s: &Server) -> f64 {
    let m = scrape(c, s).await;
    let answered: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("qembed_requests_total{") && l.contains("route=\"/v1/embeddings\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    in_flight_gauge(&m) - 1.0 + answered
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_openai_errors_and_the_server_keeps_serving() {
    let s = Server::start(
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
    let c = reqwest::Client::new();
    let url = s.url("/v1/embeddings");
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
    let mut checked = 0;
    for (body, status, param, code) in &json_cases {
        let (got, _, resp) = post(&c, &url, body).await;
        assert_eq!(got, *status, "{body}: {resp}");
        let err = assert_error_shape(&resp);
        if let Some(p) = param {
            assert_eq!(err["param"], json!(p), "{body}: {resp}");
        }
        if let Some(code) = code {
            assert_eq!(err["code"], json!(code), "{body}: {resp}");
        }
        checked += 1;
    }
    // Raw bodies and routes.
    let r = c.post(&url).body("{\"input\": ").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error_shape(&r.json().await.unwrap());
    let r = c
        .post(&url)
        .body(format!("{{\"input\": \"{}\"}}", "x".repeat(10_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_error_shape(&r.json().await.unwrap());
    let r = c.get(s.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_error_shape(&r.json().await.unwrap());
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_error_shape(&r.json().await.unwrap());
    let r = c.get(s.url("/v1/models/gpt-4")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_error_shape(&r.json().await.unwrap());
    checked += 5;
    assert!(checked >= 30);

    // Still serving, and the valid forms work: truncation on request, a named prompt.
    let (st, _, ok) = post(&c, &url, &json!({"input": ["ok", long], "truncate": true})).await;
    assert_eq!(st, 200, "{ok}");
    assert_eq!(ok["data"].as_array().unwrap().len(), 2);
    let (st, _, ok) = post(&c, &url, &json!({"input": "a", "prompt_name": "query"})).await;
    assert_eq!(st, 200, "{ok}");
    let (st, _, ok) = post(
        &c,
        &url,
        &json!({"input": [[1, 2, 3], [4]], "model": MODEL}),
    )
    .await;
    assert_eq!(st, 200, "{ok}");
    assert_eq!(
        ok["usage"]["prompt_tokens"],
        json!(6),
        "EOS appended to each token array"
    );
}

/// 240 concurrent requests, each with its own texts, each answer checked against the
/// vector of its own text computed alone, offline: nothing lost, nothing mixed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_vectors() {
    let s = Server::start(MODEL, &["--color", "green", "--batch-wait-ms", "5"]).await;
    let offline = Embedder::load(
        &fixture(MODEL),
        &LoadOptions {
            dtype: DTypeChoice::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let task = "Given a web search query, retrieve relevant passages";
    let c = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..240usize {
        let c = c.clone();
        let url = s.url("/v1/embeddings");
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
            let r = c.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-qembed-color"], "green");
            let v: Value = r.json().await.unwrap();
            (i, texts, dims, base64, instruct, v)
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
    let m = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (sum, count) = (
        metric("qembed_batch_requests_sum "),
        metric("qembed_batch_requests_count "),
    );
    assert_eq!(sum, 240.0, "every request ran in exactly one batch");
    assert!(
        count < sum,
        "no batch combined two requests ({count} batches)"
    );
    assert!(m.contains("qembed_requests_total{route=\"/v1/embeddings\",status=\"200\"} 240"));
    assert!(m.contains("qembed_model_info{color=\"green\""));
}

/// More requests than the server admits: the excess gets 429 with Retry-After at once;
/// everything admitted completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_429_with_retry_after() {
    let s = Server::start(
        MODEL,
        &[
            "--max-concurrent-requests",
            "2",
            "--max-batch-requests",
            "1",
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let body = json!({"input": vec![long_text(300); 8], "truncate": true});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (c, url, body) = (c.clone(), s.url("/v1/embeddings"), body.clone());
        set.spawn(async move { post(&c, &url, &body).await });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (status, headers, body) = r.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(headers["retry-after"], "1");
                assert_eq!(
                    assert_error_shape(&body)["code"],
                    json!("rate_limit_exceeded")
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 2 && refused >= 1, "ok {ok}, refused {refused}");
    assert_eq!(ok + refused, 40);
}

/// SIGTERM with requests in flight: /ready turns 503, every in-flight request is
/// answered, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    // A drain that outlives --shutdown-timeout exits 1 and drops what is left, by design.
    // On a loaded 2-core machine (debug build) these twelve took over 60 s, so the
    // timeout is far above that: this test is about completing every request.
    let mut s = Server::start(
        MODEL,
        &["--max-batch-requests", "1", "--shutdown-timeout", "600"],
    )
    .await;
    let c = reqwest::Client::new();
    let body = json!({"input": vec![long_text(300); 8], "truncate": true});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (c, url, body) = (c.clone(), s.url("/v1/embeddings"), body.clone());
        set.spawn(async move { post(&c, &url, &body).await.0 });
    }
    // SIGTERM only once the server has taken in all twelve: a request still in
    // the client's connect when the drain starts is rightly refused with 503.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while embedding_requests_seen(&c, &s).await < 12.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.sigterm();
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Ok(r) = c.get(s.url("/ready")).send().await {
        assert_eq!(r.status(), 503, "ready while draining");
    }
    if let Ok(r) = c
        .post(s.url("/v1/embeddings"))
        .json(&json!({"input": "late"}))
        .send()
        .await
    {
        assert_eq!(r.status(), 503, "new work accepted while draining");
        assert!(r.headers().contains_key("retry-after"));
    }
    let mut statuses = Vec::new();
    while let Some(r) = set.join_next().await {
        statuses.push(r.unwrap());
    }
    assert_eq!(
        statuses,
        vec![200; 12],
        "in-flight requests must all complete"
    );
    let status = s
        .wait(Duration::from_secs(30))
        .expect("did not exit after drain");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_on_api_routes_only() {
    let s = Server::start(MODEL, &["--api-key", "s3cret"]).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/embeddings");
    let body = json!({"input": "hello"});
    let r = c.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        assert_error_shape(&r.json().await.unwrap())["code"],
        json!("invalid_api_key")
    );
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let models: Value = c
        .get(s.url("/v1/models"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], json!(MODEL));
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            c.get(s.url(open)).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }
}

/// /info, /v1/models and /tokenize describe what is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_models_and_tokenize() {
    let s = Server::start(
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
    let c = reqwest::Client::new();
    let info: Value = get_json(&c, &s.url("/info")).await;
    assert_eq!(info["color"], json!("blue"));
    assert_eq!(info["model_id"], json!("qwen3-embed"));
    assert_eq!(info["hidden_size"], json!(64));
    assert!(info["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let r = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(
        r.headers()["x-qembed-fingerprint"],
        info["fingerprint"].as_str().unwrap()
    );
    let models: Value = get_json(&c, &s.url("/v1/models")).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["qwen3-embed", "alias"]);
    let (st, _, v) = post(
        &c,
        &s.url("/v1/embeddings"),
        &json!({"input": "x", "model": "alias"}),
    )
    .await;
    assert_eq!((st, &v["model"]), (200, &json!("alias")));

    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(MODEL).join("reference.json")).unwrap(),
    )
    .unwrap();
    let case = &reference["cases"][1];
    let (st, _, tok) = post(
        &c,
        &s.url("/tokenize"),
        &json!({"input": [case["text"]], "instruction": case["instruction"]}),
    )
    .await;
    assert_eq!(st, 200, "{tok}");
    assert_eq!(tok["data"][0]["tokens"], case["input_ids"]);
}

/// Clients that give up mid-request are neither computed for nor counted as in flight,
/// so a later drain is not held up by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_do_not_hold_up_drain() {
    let mut s = Server::start(
        MODEL,
        &["--max-batch-requests", "1", "--shutdown-timeout", "60"],
    )
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let body = json!({"input": vec![long_text(300); 8], "truncate": true});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (c, url, body) = (impatient.clone(), s.url("/v1/embeddings"), body.clone());
        set.spawn(async move { c.post(&url).json(&body).send().await.is_err() });
    }
    while let Some(timed_out) = set.join_next().await {
        assert!(
            timed_out.unwrap(),
            "request finished within 30 ms; make it heavier"
        );
    }
    let c = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The scrape itself is the one request in flight.
    while in_flight(&c, &s).await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "abandoned requests still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.sigterm();
    let status = s.wait(Duration::from_secs(20)).expect("did not exit");
    assert!(status.success(), "{status:?}");
}

/// `--tensor-parallel 2` (on CPU: two ranks on threads, in-process all-reduce) serves
/// the same vectors as the single-rank embedder, and says so in /info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_parallel_server_serves_the_same_vectors() {
    let s = Server::start(MODEL, &["--tensor-parallel", "2"]).await;
    let offline = Embedder::load(&fixture(MODEL), &LoadOptions::default()).unwrap();
    let c = reqwest::Client::new();
    let info: Value = get_json(&c, &s.url("/info")).await;
    assert_eq!(info["tensor_parallel"], json!(2));
    assert_eq!(info["device"], json!("cpu"));
    let texts = vec![long_text(40), "short".to_string(), long_text(200)];
    let (status, _, body) = post(&c, &s.url("/v1/embeddings"), &json!({"input": texts})).await;
    assert_eq!(status, 200, "{body}");
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
    for (item, (w, _)) in body["data"].as_array().unwrap().iter().zip(&want) {
        let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        let dot: f32 = got.iter().zip(w).map(|(a, b)| a * b).sum();
        assert!(dot >= 0.99999, "cosine {dot}");
    }
}
