//! When nginx or the disk does not cooperate: a reload that fails leaves the include
//! and the state as they were; `status` sees the colour nginx really serves and says
//! when the include disagrees; a rollback that cannot write the include exits 5 and
//! changes nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{answering, rollout, serial, setup, wait_ready, Cfg, ReadOnly};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reload_leaves_include_and_state_unchanged() {
    let _serial = serial().await;
    let Some(mut env) = setup().await else { return };
    let cfg = env.config("base.toml", Cfg::default());
    // nginx stops (crash, operator): `nginx -t` still passes, `nginx -s reload` fails.
    drop(env.nginx.take());
    assert!(
        common::answering(&env.nginx_url).await.is_none(),
        "nginx still answers"
    );
    let before = env.files();
    for attempt in 0..2 {
        let (code, log) = rollout(&cfg, &["switch", "--to", "green", "--allow-reindex"]);
        assert_eq!(code, 1, "attempt {attempt}: {log}");
        assert!(
            log.contains("nginx reload failed") && log.contains("previous include is restored"),
            "{log}"
        );
        // The second attempt verifies again: it does not believe green is active.
        assert!(
            !log.contains("already active") && log.contains("verify: PASSED"),
            "{log}"
        );
        assert_eq!(env.files(), before, "attempt {attempt}");
        assert!(!env.upstream_dir().join("active.tmp").exists());
    }
    let (code, log) = rollout(&cfg, &["status"]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("active (nginx upstream): blue") && log.contains("unreachable"),
        "{log}"
    );
    // Restarted, nginx serves what the include and the state say.
    env.start_nginx();
    wait_ready(&env.nginx_url, Some("blue")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_an_include_nginx_has_not_loaded() {
    let _serial = serial().await;
    let Some(env) = setup().await else { return };
    let cfg = env.config("base.toml", Cfg::default());
    // The include names green, but nginx was never reloaded: it still serves blue.
    let (code, log) = rollout(&cfg, &["init", "--color", "green"]);
    assert_eq!(code, 0, "{log}");
    let (code, log) = rollout(&cfg, &["status"]);
    assert_eq!(code, 6, "{log}");
    assert!(
        log.contains("active (nginx upstream): green")
            && log.contains(&format!("live (through nginx at {}): blue", env.nginx_url))
            && log.contains("MISMATCH: the upstream include names green but nginx serves blue"),
        "{log}"
    );
    // `switch --to green` acts on what nginx serves: not "already active", but the
    // whole verify, switch and watch, after which all three agree.
    let (code, log) = rollout(&cfg, &["switch", "--to", "green", "--allow-reindex"]);
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("already active") && log.contains("watch window passed"),
        "{log}"
    );
    assert_eq!(answering(&env.nginx_url).await.as_deref(), Some("green"));
    let (code, log) = rollout(&cfg, &["status"]);
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("MISMATCH"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_upstream_dir_during_rollback_exits_5_and_changes_nothing() {
    let _serial = serial().await;
    let Some(mut env) = setup().await else { return };
    let cfg = env.config(
        "watch.toml",
        Cfg {
            watch: "window_s = 30.0\ninterval_s = 0.3",
            ..Cfg::default()
        },
    );
    // The watch's own rollback: once nginx points at green, the include's directory
    // turns read-only and green dies.
    let switch = Command::new(env!("CARGO_BIN_EXE_qembed-rollout"))
        .arg("--config")
        .arg(&cfg)
        .args(["switch", "--to", "green", "--allow-reindex"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answering(&env.nginx_url).await.as_deref() != Some("green") {
        assert!(Instant::now() < deadline, "switch never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(read_only) = ReadOnly::new(&env.upstream_dir()) else {
        let mut switch = switch;
        let _ = switch.kill();
        let _ = switch.wait();
        return;
    };
    // The state is written once the switch is done; wait for it before comparing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(env.path("state.json"))
        .unwrap()
        .contains("\"active\": \"green\"")
    {
        assert!(Instant::now() < deadline, "switch never saved its state");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = env.files();
    let _ = env.green.0 .0.kill();
    let out = tokio::task::spawn_blocking(move || switch.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(5), "{log}");
    assert!(
        log.contains("ROLLBACK NOT DONE (green is not ready)")
            && log.contains("nginx still sends traffic to green"),
        "{log}"
    );
    assert_eq!(env.files(), before);

    // A rollback asked for by hand, still read-only: same code, nothing changed, and
    // nginx still proxies to green (dead now: 502 without a colour).
    let (code, log) = rollout(&cfg, &["rollback"]);
    assert_eq!(code, 5, "{log}");
    assert!(
        log.contains("ROLLBACK NOT DONE (rollback requested): cannot write"),
        "{log}"
    );
    assert_eq!(env.files(), before);
    assert_eq!(env.active(), "green");
    let r = reqwest::get(format!("{}/health", env.nginx_url))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    // Writable again, the same command recovers.
    drop(read_only);
    let (code, log) = rollout(&cfg, &["rollback"]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(env.active(), "blue");
    wait_ready(&env.nginx_url, Some("blue")).await;
    drop(env.nginx.take());
}
