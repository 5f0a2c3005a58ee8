//! Blue/green end to end: real nginx, two real `qembed serve` processes (blue serving
//! one fixture model, green another), the real `qembed-rollout` binary, and a bounded
//! load generator on loopback running throughout.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use qembed_loadgen::{Lengths, LoadConfig, Sample};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `qembed` binary beside ours, built if this package's tests ran alone.
fn qembed_bin() -> PathBuf {
    let rollout = PathBuf::from(env!("CARGO_BIN_EXE_qembed-rollout"));
    let bin = rollout.with_file_name("qembed");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "qembed-server"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(ok.success(), "building qembed failed");
    }
    bin
}

fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `qembed serve` on a free loopback port; returns the process and its base URL.
fn start_qembed(model: &str, color: &str) -> (Proc, String) {
    let mut child = Command::new(qembed_bin())
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--color",
            color,
            "--model-path",
        ])
        .arg(root().join("models").join(model))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("qembed listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("qembed did not start");
    (Proc(child), format!("http://{addr}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(url: &str, color: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = reqwest::Client::new();
    loop {
        if let Ok(r) = c.get(format!("{url}/ready")).send().await {
            let got = r
                .headers()
                .get("x-qembed-color")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if r.status() == 200 && (color.is_none() || got.as_deref() == color) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Env {
    dir: tempfile::TempDir,
    blue: (Proc, String),
    green: (Proc, String),
    nginx: Option<Proc>,
    nginx_url: String,
    nginx_args: Vec<String>,
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a rollout config; `extra` is appended (more [verify]/[watch] keys).
    fn config(&self, name: &str, verify_extra: &str, watch: &str) -> PathBuf {
        let cmd = |extra: &[&str]| -> String {
            let mut all: Vec<String> = self.nginx_args.clone();
            all.extend(extra.iter().map(|s| s.to_string()));
            format!(
                "[{}]",
                all.iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let text = format!(
            r#"[colors.blue]
url = "{blue}"
stop = ["true"]

[colors.green]
url = "{green}"
stop = ["true"]

[nginx]
upstream_file = "{upstream}"
state_file = "{state}"
test = {test}
reload = {reload}
keepalive = 8

[verify]
load_requests = 200
load_duration_s = 10.0
load_concurrency = 4
load_words = 64
max_p99_ms = 500.0
max_error_rate = 0.001
min_qps = 50.0
{verify_extra}

[watch]
{watch}
"#,
            blue = self.blue.1,
            green = self.green.1,
            upstream = self.path("active.conf").display(),
            state = self.path("state.json").display(),
            test = cmd(&["-t"]),
            reload = cmd(&["-s", "reload"]),
        );
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn active(&self) -> String {
        let text = std::fs::read_to_string(self.path("active.conf")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("# qembed-rollout active colour: "))
            .unwrap()
            .to_string()
    }
}

fn rollout(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qembed-rollout"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), log)
}

async fn setup() -> Option<Env> {
    let Some(nginx) = nginx_bin() else {
        assert!(std::env::var_os("CI").is_none(), "CI must install nginx");
        eprintln!("skipped: nginx is not installed");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let blue = start_qembed("qwen3-tiny-gqa", "blue");
    let green = start_qembed("qwen3-tiny-mqa", "green");
    wait_ready(&blue.1, Some("blue")).await;
    wait_ready(&green.1, Some("green")).await;

    let port = free_port();
    let site = std::fs::read_to_string(root().join("deploy/nginx/qembed-site.conf"))
        .unwrap()
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.path();
    std::fs::write(d.join("qembed-site.conf"), site).unwrap();
    let conf = format!(
        "user root;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         include {d}/active.conf;\n  include {d}/qembed-site.conf;\n}}\n",
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let nginx_args = vec![
        nginx.display().to_string(),
        "-p".into(),
        d.display().to_string(),
        "-c".into(),
        d.join("nginx.conf").display().to_string(),
        "-e".into(),
        d.join("error.log").display().to_string(),
    ];
    let mut env = Env {
        dir,
        blue,
        green,
        nginx: None,
        nginx_url: format!("http://127.0.0.1:{port}"),
        nginx_args,
    };
    let base = env.config("base.toml", "", "window_s = 2.0\ninterval_s = 0.5");
    let (code, log) = rollout(&base, &["init", "--color", "blue"]);
    assert_eq!(code, 0, "{log}");
    let child = Command::new(&env.nginx_args[0])
        .args(&env.nginx_args[1..])
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.nginx = Some(Proc(child));
    wait_ready(&env.nginx_url, Some("blue")).await;
    Some(env)
}

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
    let Some(env) = setup().await else { return };
    let base = env.config("base.toml", "", "window_s = 2.0\ninterval_s = 0.5");

    // status shows both colours and the active one.
    let (code, log) = rollout(&base, &["status"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("active (nginx upstream): blue"), "{log}");

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
    let golden_cfg = env.config(
        "golden.toml",
        &format!(
            "golden_set = {:?}",
            env.path("golden.jsonl").display().to_string()
        ),
        "window_s = 2.0\ninterval_s = 0.5",
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
        "blue/green under load: {} requests sent, {} failed, {} colour-checked; by colour {:?}; \
         switch command {:.2}s (incl. verify and {}s watch), rollback command {:.2}s; p99 {:.1} ms",
        report.requests,
        report.failed,
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
    let Some(mut env) = setup().await else { return };
    let cfg = env.config("watch.toml", "", "window_s = 30.0\ninterval_s = 0.3");
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
