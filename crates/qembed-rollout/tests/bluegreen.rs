//! Blue/green end to end: real nginx, two real `qembed serve` processes (blue serving
//! one fixture model, green another), the real `qembed-rollout` binary, and a bounded
//! load generator on loopback running throughout (bench in `common`).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{rollout, root, serial, setup, wait_ready, Cfg};
use qembed_loadgen::{Lengths, LoadConfig, Sample};

fn load(url: &str, stop: Arc<AtomicBool>) -> LoadConfig {
    LoadConfig {
        url: format!("{url}/v1/embeddings"),
        concurrency: 4,
        rate: Some(80.0),
        max_requests: 20_000,
        max_duration: Duration::from_secs(120),
        inputs_per_request: 2,
        lengths: Lengths::Uniform(4, 64),
        timeout: Duration::from_secs(10),
        stop: Some(stop),
        ..LoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_and_rollback_under_load() {
    let _serial = serial().await;
    let Some(env) = setup().await else { return };
    let base = env.config("base.toml", Cfg::default());

    // status shows both colours, the include's colour and the one nginx really serves.
    let (code, log) = rollout(&base, &["status"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("active (nginx upstream): blue"), "{log}");
    assert!(
        log.contains(&format!("live (through nginx at {}): blue", env.nginx_url)),
        "{log}"
    );

    // Green serves another model: without --allow-reindex the switch is refused.
    let (code, log) = rollout(&base, &["switch", "--to", "green"]);
    assert_eq!(code, 4, "{log}");
    assert!(log.contains("re-index"), "{log}");
    assert_eq!(env.active(), "blue");

    // A golden set made of blue's reference vectors: blue passes it, green fails it
    // and is never switched to, even with --allow-reindex.
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/qwen3-tiny-gqa/reference.json")).unwrap(),
    )
    .unwrap();
    let golden: String = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["max_length"].is_null())
        .map(|c| {
            serde_json::json!({"text": c["text"], "instruction": c["instruction"],
                               "dimensions": c["dimensions"], "embedding": c["embedding"]})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(env.path("golden.jsonl"), golden).unwrap();
    let golden_line = format!(
        "golden_set = {:?}",
        env.path("golden.jsonl").display().to_string()
    );
    let golden_cfg = env.config(
        "golden.toml",
        Cfg {
            verify: &golden_line,
            ..Cfg::default()
        },
    );
    let (code, log) = rollout(&golden_cfg, &["verify", "--color", "blue"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = rollout(&golden_cfg, &["verify", "--color", "green"]);
    assert_eq!(code, 2, "{log}");
    let (code, log) = rollout(&golden_cfg, &["switch", "--to", "green", "--allow-reindex"]);
    assert_eq!(code, 2, "{log}");
    assert_eq!(env.active(), "blue");

    // Switch blue -> green, then roll back, with load through nginx all along.
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = load(&env.nginx_url, stop.clone());
    let load_task = tokio::spawn(async move { qembed_loadgen::run(&cfg).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let base_c = base.clone();
    let (code, log) = tokio::task::spawn_blocking(move || {
        rollout(&base_c, &["switch", "--to", "green", "--allow-reindex"])
    })
    .await
    .unwrap();
    let switched = t0.elapsed();
    assert_eq!(code, 0, "{log}");
    assert_eq!(env.active(), "green");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t1 = Instant::now();
    let base_c = base.clone();
    let (code, log) = tokio::task::spawn_blocking(move || rollout(&base_c, &["rollback"]))
        .await
        .unwrap();
    let rolled = t1.elapsed();
    assert_eq!(code, 0, "{log}");
    assert_eq!(env.active(), "blue");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (report, samples) = load_task.await.unwrap();

    // Times relative to the load's start (its first sample is sent at ~0).
    let load_start = t0 - Duration::from_millis(1500);
    let rel = |t: Instant| t.saturating_duration_since(load_start).as_secs_f64();
    let (switch_start, switch_end) = (rel(t0), rel(t0 + switched));
    let (rb_start, rb_end) = (rel(t1), rel(t1 + rolled));
    let grace = 0.5;
    let expect = |s: &Sample| -> Option<&'static str> {
        if s.done_at() < switch_start {
            Some("blue")
        } else if s.sent_at > switch_end + grace && s.done_at() < rb_start {
            Some("green")
        } else if s.sent_at > rb_end + grace {
            Some("blue")
        } else {
            None
        }
    };
    let mut checked = 0;
    for s in &samples {
        assert!(s.ok(), "failed request during switch: {s:?}");
        if let Some(c) = expect(s) {
            assert_eq!(s.color.as_deref(), Some(c), "{s:?} (switch {switch_start:.2}-{switch_end:.2}, rollback {rb_start:.2}-{rb_end:.2})");
            checked += 1;
        }
    }
    println!(
        "blue/green under load: {} requests sent, {} failed, {} retried on a fresh connection, \
         {} colour-checked; by colour {:?}; \
         switch command {:.2}s (incl. verify and {}s watch), rollback command {:.2}s; p99 {:.1} ms",
        report.requests,
        report.failed,
        report.retried,
        checked,
        report.by_color,
        switched.as_secs_f64(),
        2,
        rolled.as_secs_f64(),
        report.p99_ms
    );
    assert_eq!(report.failed, 0);
    assert!(
        report.requests >= 300,
        "too little load: {}",
        report.requests
    );
    assert!(
        report.by_color.get("green").copied().unwrap_or(0) > 20,
        "{:?}",
        report.by_color
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_failing_during_watch_is_rolled_back() {
    let _serial = serial().await;
    let Some(mut env) = setup().await else { return };
    let cfg = env.config(
        "watch.toml",
        Cfg {
            watch: "window_s = 30.0\ninterval_s = 0.3",
            ..Cfg::default()
        },
    );
    let switch = Command::new(env!("CARGO_BIN_EXE_qembed-rollout"))
        .arg("--config")
        .arg(&cfg)
        .args(["switch", "--to", "green", "--allow-reindex"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once nginx points at green, green dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.active() != "green" {
        assert!(Instant::now() < deadline, "switch never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = env.green.0 .0.kill();
    let status = tokio::task::spawn_blocking(move || switch.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&status.stderr).to_string();
    assert_eq!(status.status.code(), Some(3), "{log}");
    assert!(log.contains("rolling back"), "{log}");
    assert_eq!(env.active(), "blue");
    wait_ready(&env.nginx_url, Some("blue")).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", env.nginx_url))
        .json(&serde_json::json!({"input": "after rollback"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-qembed-color"], "blue");
    drop(env.nginx.take());
}
