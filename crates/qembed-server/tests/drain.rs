//! Signals and drain need a real process: `qembed serve` on a loopback port, SIGTERM
//! with requests in flight, and the exit status.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::long_text;
use qembed_testkit::{fixture, Server};
use serde_json::{json, Value};

const MODEL: &str = "qwen3-tiny-gqa";

async fn start(args: &'static [&'static str]) -> Server {
    tokio::task::spawn_blocking(move || {
        Server::start(
            Path::new(env!("CARGO_BIN_EXE_qembed")),
            &fixture(MODEL),
            args,
        )
    })
    .await
    .unwrap()
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
        .expect("in-flight gauge in /metrics")
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

async fn post_status(c: &reqwest::Client, url: &str, body: &Value) -> u16 {
    c.post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// SIGTERM with requests in flight: /ready turns 503, new work gets 503 with
/// Retry-After, every in-flight request is answered, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    // A drain that outlives --shutdown-timeout exits 1 and drops what is left, by design.
    // On a loaded 2-core machine (debug build) these twelve took over 60 s, so the
    // timeout is far above that: this test is about completing every request.
    let mut s = start(&["--max-batch-requests", "1", "--shutdown-timeout", "600"]).await;
    let c = reqwest::Client::new();
    let body = json!({"input": vec![long_text(300); 8], "truncate": true});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (c, url, body) = (c.clone(), s.url("/v1/embeddings"), body.clone());
        set.spawn(async move { post_status(&c, &url, &body).await });
    }
    // SIGTERM only once the server has taken in all twelve: a request still in
    // the client's connect when the drain starts is rightly refused with 503.
    let deadline = Instant::now() + Duration::from_secs(20);
    while embedding_requests_seen(&c, &s).await < 12.0 {
        assert!(Instant::now() < deadline, "requests never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.sigterm();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The listener stays open while draining: these must be answered, with 503.
    let r = c
        .get(s.url("/ready"))
        .send()
        .await
        .expect("/ready answers while draining");
    assert_eq!(r.status(), 503, "ready while draining");
    let r = c
        .post(s.url("/v1/embeddings"))
        .json(&json!({"input": "late"}))
        .send()
        .await
        .expect("new work is answered while draining");
    assert_eq!(r.status(), 503, "new work accepted while draining");
    assert!(r.headers().contains_key("retry-after"));
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

/// Clients that give up mid-request are neither computed for nor counted as in flight,
/// so a later drain is not held up by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_do_not_hold_up_drain() {
    let mut s = start(&["--max-batch-requests", "1", "--shutdown-timeout", "60"]).await;
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
    let deadline = Instant::now() + Duration::from_secs(30);
    // The scrape itself is the one request in flight.
    while in_flight_gauge(&scrape(&c, &s).await) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "abandoned requests still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.sigterm();
    let status = s.wait(Duration::from_secs(20)).expect("did not exit");
    assert!(status.success(), "{status:?}");
}
