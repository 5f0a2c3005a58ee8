//! The client-contract gate: one small request per model name the clients send, with
//! their key, to the new colour and to the active one. The new colour must answer 2xx;
//! where it does not, the active colour's answer to the same request says whose fault
//! it is: 2xx there means the switch would break clients (another `--served-model-name`,
//! a key the clients do not have), a 4xx there too means `[clients]` does not describe
//! what the clients send, and any verdict drawn from it would be about the wrong requests.

use crate::config::Config;
use crate::instance::{Answer, Caller, EmbedRequest, Instance};

const PROBE: &str = "qembed-rollout client contract probe";

/// `Ok(answer)`, or the transport error as text.
async fn probe(inst: &Instance, caller: &Caller) -> Result<Answer, String> {
    let texts = [PROBE.to_string()];
    let req = EmbedRequest {
        texts: &texts,
        ..EmbedRequest::default()
    };
    inst.embed(caller, &req).await.map_err(|e| format!("{e:#}"))
}

fn show(r: &Result<Answer, String>) -> String {
    match r {
        Ok(a) if a.success() => a.status.to_string(),
        Ok(a) => format!("{} ({})", a.status, a.error_text()),
        Err(e) => format!("no answer ({e})"),
    }
}

/// Whether `new` serves every model name clients use, as they call it.
pub async fn check(cfg: &Config, new: &Instance, active: Option<&Instance>) -> bool {
    let mut passed = true;
    for model in cfg.clients.models() {
        let caller = Caller::client(cfg, model);
        let got = probe(new, &caller).await;
        if matches!(&got, Ok(a) if a.success()) {
            tracing::info!(color = %new.name, "gate client contract: ok ({})", caller.describe());
            continue;
        }
        passed = false;
        let Some(old) = active else {
            tracing::error!(
                "gate client contract: FAIL ({} answers {} to a request {})",
                new.name,
                show(&got),
                caller.describe()
            );
            continue;
        };
        let before = probe(old, &caller).await;
        if matches!(&before, Ok(a) if a.success()) {
            tracing::error!(
                "gate client contract: FAIL ({} answers {} where {} answers {} to the same \
                 request, {}): clients would get that after the switch",
                new.name,
                show(&got),
                old.name,
                show(&before),
                caller.describe()
            );
        } else {
            tracing::error!(
                "gate client contract: FAIL (both colours reject a request {}: {} answers {}, \
                 {} answers {}); [clients] in the rollout config does not match what clients \
                 send, so no verdict about them can be drawn",
                caller.describe(),
                new.name,
                show(&got),
                old.name,
                show(&before)
            );
        }
    }
    passed
}
