//! The client-contract gate: one small request per model name the clients send, with
//! their key, on the route they call for the colour's task (`/v1/embeddings`, or
//! `[clients] rerank_route` for a reranker), to the new colour and to the active one.
//! The new colour must answer 2xx; where it does not, the active colour's answer to
//! the same request says whose fault it is: 2xx there means the switch would break
//! clients (another `--served-model-name`, a key the clients do not have), a 4xx there
//! too means `[clients]` does not describe what the clients send, and any verdict
//! drawn from it would be about the wrong requests.

use qembed_loadgen::Api;

use crate::config::Config;
use crate::instance::{Answer, Caller, EmbedRequest, Instance, RerankRequest};
use crate::task::Task;

const PROBE: &str = "qembed-rollout client contract probe";

/// `Ok(answer)`, or the transport error as text.
async fn probe(
    cfg: &Config,
    task: Task,
    inst: &Instance,
    caller: &Caller,
) -> Result<Answer, String> {
    let texts = [PROBE.to_string()];
    let answer = match task.client_route(cfg) {
        (route, Api::Rerank(api)) => {
            let req = RerankRequest {
                query: PROBE,
                documents: &texts,
                instruction: None,
            };
            inst.rerank(caller, &route, api, &req).await
        }
        (_, Api::Embeddings) => {
            let req = EmbedRequest {
                texts: &texts,
                ..EmbedRequest::default()
            };
            inst.embed(caller, &req).await
        }
    };
    answer.map_err(|e| format!("{e:#}"))
}

fn show(r: &Result<Answer, String>) -> String {
    match r {
        Ok(a) if a.success() => a.status.to_string(),
        Ok(a) => format!("{} ({})", a.status, a.error_text()),
        Err(e) => format!("no answer ({e})"),
    }
}

/// Whether `new` serves every model name clients use, as they call it for `task`
/// (the task both colours serve; a change of task is refused before this gate).
pub async fn check(cfg: &Config, task: Task, new: &Instance, active: Option<&Instance>) -> bool {
    let mut passed = true;
    let (route, _) = task.client_route(cfg);
    for model in cfg.clients.models() {
        let caller = Caller::client(cfg, model);
        let got = probe(cfg, task, new, &caller).await;
        if matches!(&got, Ok(a) if a.success()) {
            tracing::info!(color = %new.name, "gate client contract: ok (POST {route}, {})", caller.describe());
            continue;
        }
        passed = false;
        let Some(old) = active else {
            tracing::error!(
                "gate client contract: FAIL ({} answers {} to POST {route} {})",
                new.name,
                show(&got),
                caller.describe()
            );
            continue;
        };
        let before = probe(cfg, task, old, &caller).await;
        if matches!(&before, Ok(a) if a.success()) {
            tracing::error!(
                "gate client contract: FAIL ({} answers {} where {} answers {} to the same \
                 request, POST {route} {}): clients would get that after the switch",
                new.name,
                show(&got),
                old.name,
                show(&before),
                caller.describe()
            );
        } else {
            tracing::error!(
                "gate client contract: FAIL (both colours reject POST {route} {}: {} answers {}, \
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
