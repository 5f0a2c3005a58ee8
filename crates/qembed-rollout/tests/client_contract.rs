//! The client contract (`[clients]`): a green that answers what clients send with 404
//! (another `--served-model-name`) or 401 (a key the clients do not send) is refused by
//! verify, and 4xx that only live traffic reveals roll the switch back.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{rollout, rollout_env, serial, setup_with, Cfg, Spec};
use qembed_loadgen::{Lengths, LoadConfig};

const MODEL: &str = "qwen3-tiny-gqa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_serving_another_model_name_is_refused_by_verify() {
    let _serial = serial().await;
    let blue = Spec::model(MODEL).args(&["--served-model-name", "qembed-embed"]);
    let green = Spec::model(MODEL).args(&["--served-model-name", "renamed-embed"]);
    let Some(env) = setup_with(blue, green).await else {
        return;
    };
    let cfg = env.config(
        "clients.toml",
        Cfg {
            tail: "[clients]\nmodel_names = [\"qembed-embed\"]",
            ..Cfg::default()
        },
    );
    // Blue passes with the clients' model name (the gate is not failing everything).
    let (code, log) = rollout(&cfg, &["verify", "--color", "blue"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("gate client contract: ok"), "{log}");

    let before = env.files();
    let (code, log) = rollout(&cfg, &["switch", "--to", "green"]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("gate client contract: FAIL (green answers 404")
            && log.contains("where blue answers 200"),
        "{log}"
    );
    // The golden-free load gate saw the same 404s.
    assert!(log.contains("\"404\": 200"), "{log}");
    assert_eq!(env.files(), before);
    assert_eq!(env.active(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_requiring_a_key_clients_do_not_send_is_refused_by_verify() {
    let _serial = serial().await;
    let green = Spec::model(MODEL).args(&["--api-key", "green-key"]);
    let Some(env) = setup_with(Spec::model(MODEL), green).await else {
        return;
    };
    // The controller itself knows green's key (for /info); the clients send none.
    std::fs::write(env.path("green.key"), "green-key\n").unwrap();
    let green_key = format!(
        "api_key_file = {:?}",
        env.path("green.key").display().to_string()
    );
    let cfg = env.config(
        "nokey.toml",
        Cfg {
            green: &green_key,
            ..Cfg::default()
        },
    );
    let before = env.files();
    let (code, log) = rollout(&cfg, &["switch", "--to", "green"]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("gate client contract: FAIL (green answers 401")
            && log.contains("where blue answers 200")
            && log.contains("without an API key"),
        "{log}"
    );
    assert_eq!(env.files(), before);

    // Clients that do send green's key (from an environment variable): green passes,
    // so the key really travels with the golden set, the contract probe and the load.
    let cfg = env.config(
        "key.toml",
        Cfg {
            green: &green_key,
            tail: "[clients]\napi_key_env = \"QEMBED_TEST_CLIENT_KEY\"",
            ..Cfg::default()
        },
    );
    let key = [("QEMBED_TEST_CLIENT_KEY", "green-key")];
    let (code, log) = rollout_env(&cfg, &["verify", "--color", "green"], &key);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("with the clients' API key"), "{log}");
    // A configured key source that is missing is a config error, not "no key".
    let (code, log) = rollout_env(
        &cfg,
        &["verify", "--color", "green"],
        &[("QEMBED_TEST_CLIENT_KEY", "")],
    );
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("QEMBED_TEST_CLIENT_KEY"), "{log}");
    // A key written into the config is refused outright.
    let inline = env.config(
        "inline.toml",
        Cfg {
            green: "api_key = \"green-key\"",
            ..Cfg::default()
        },
    );
    let (code, log) = rollout(&inline, &["status"]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("is not accepted"), "{log}");
    assert_eq!(env.files(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_404s_after_the_switch_are_rolled_back_by_the_watch() {
    let _serial = serial().await;
    // Live clients use a second name only blue serves; the rollout config forgot it, so
    // verify passes and only the watch can see the 404s.
    let blue = Spec::model(MODEL).args(&["--served-model-name", "qembed-embed,legacy-embed"]);
    let green = Spec::model(MODEL).args(&["--served-model-name", "qembed-embed"]);
    let Some(env) = setup_with(blue, green).await else {
        return;
    };
    let cfg = env.config(
        "forgot.toml",
        Cfg {
            watch: "window_s = 30.0\ninterval_s = 0.3",
            tail: "[clients]\nmodel_names = [\"qembed-embed\"]",
            ..Cfg::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = LoadConfig {
        url: format!("{}/v1/embeddings", env.nginx_url),
        model: Some("legacy-embed".into()),
        concurrency: 4,
        rate: Some(40.0),
        max_requests: 5_000,
        max_duration: Duration::from_secs(90),
        lengths: Lengths::Uniform(4, 32),
        timeout: Duration::from_secs(10),
        stop: Some(stop.clone()),
        ..LoadConfig::default()
    };
    // The load's clock starts at or after `load_start`, so `sent_at` > (t - load_start)
    // means sent after t.
    let load_start = Instant::now();
    let load_task = tokio::spawn(async move { qembed_loadgen::run(&load).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cfg_c = cfg.clone();
    let t0 = Instant::now();
    let (code, log) =
        tokio::task::spawn_blocking(move || rollout(&cfg_c, &["switch", "--to", "green"]))
            .await
            .unwrap();
    let took = t0.elapsed();
    let returned = (t0 + took).duration_since(load_start).as_secs_f64() + 0.5;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (report, samples) = load_task.await.unwrap();

    assert_eq!(code, 3, "{log}");
    assert!(
        log.contains("404 share") && log.contains("clients are being refused"),
        "{log}"
    );
    assert!(log.contains("gate client contract: ok"), "{log}");
    assert_eq!(env.active(), "blue");
    // The 404s were real (green answered them), and stopped with the rollback: every
    // request sent half a second after the command returned was served by blue.
    let green_404 = samples
        .iter()
        .filter(|s| s.status == 404 && s.color.as_deref() == Some("green"))
        .count();
    assert!(green_404 > 0, "{:?}", report.by_status);
    let after: Vec<_> = samples.iter().filter(|s| s.sent_at > returned).collect();
    assert!(!after.is_empty());
    for s in after {
        assert!(s.ok() && s.color.as_deref() == Some("blue"), "{s:?}");
    }
    println!(
        "404s after the switch: {green_404} of {} requests, rolled back in {:.2}s (switch command incl. verify)",
        report.requests,
        took.as_secs_f64()
    );
}
