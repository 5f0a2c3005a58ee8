//! An int8 colour beside an unquantized one of the same checkpoint (`--quantize int8`):
//! a build of its own, so verify cannot go by the fingerprint and decides from the probe
//! texts' cosines between the two colours, through real nginx.

mod common;

use common::{rollout, serial, setup_with, Cfg, Spec};

const MODEL: &str = "qwen3-tiny-gqa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_colour_is_judged_by_its_probe_cosines() {
    let _serial = serial().await;
    let blue = Spec::model(MODEL).args(&["--dtype", "bf16"]);
    let green = Spec::model(MODEL).args(&["--quantize", "int8"]);
    let Some(env) = setup_with(blue, green).await else {
        return;
    };

    // A gate stricter than what int8 keeps: the vectors are called incompatible, the
    // switch is refused (re-index) and nothing changes.
    let strict = env.config(
        "strict.toml",
        Cfg {
            verify: "compat_min_cosine = 0.999999",
            ..Cfg::default()
        },
    );
    let before = env.files();
    let (code, log) = rollout(&strict, &["switch", "--to", "green"]);
    assert_eq!(code, 4, "{log}");
    assert!(
        log.contains("gate vector space: INCOMPATIBLE") && log.contains("probe cosine 0.99"),
        "{log}"
    );
    if let Some(line) = log.lines().find(|l| l.contains("probe cosine")) {
        println!("{line}");
    }
    assert_eq!(env.files(), before);
    assert_eq!(env.active(), "blue");

    // The default gate (0.999): on this fixture int8's probe vectors stay within it
    // (docs/quantization.md), so the switch goes ahead without a re-index.
    let default = env.config("default.toml", Cfg::default());
    let (code, log) = rollout(&default, &["switch", "--to", "green"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("SameVectors"), "{log}");
    assert_eq!(env.active(), "green");
}
