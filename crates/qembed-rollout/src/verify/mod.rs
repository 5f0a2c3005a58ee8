//! The gates a colour must pass before it takes traffic: ready and identity, the
//! task (the same as the active colour's), the client contract, the golden set, load,
//! and vector-space compatibility (embedding colours only). Every gate that sends API
//! requests sends them as the clients do (`[clients]`: their model names, their key,
//! and for a reranker their rerank route), so a colour that would reject them is
//! caught here rather than by the clients after the switch.

mod compat;
mod contract;
mod golden;
mod load;

use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::instance::{Caller, Info, Instance};
use crate::task::Task;

pub use compat::Compat;

pub struct Outcome {
    pub passed: bool,
    pub compat: Compat,
}

impl Outcome {
    fn failed() -> Self {
        Self {
            passed: false,
            compat: Compat::NoActive,
        }
    }
}

/// Runs every gate on `color`, logging each; `active` is the colour serving now.
pub async fn verify(cfg: &Config, color: &str, active: Option<&str>) -> Result<Outcome> {
    let v = &cfg.verify;
    let timeout = Duration::from_secs_f64(v.timeout_s);
    let inst = Instance::new(color, cfg, timeout)?;
    let old = match active.filter(|a| *a != color) {
        Some(a) => Some(Instance::new(a, cfg, timeout)?),
        None => None,
    };
    let mut passed = true;

    if !inst.ready().await {
        tracing::error!(color, url = %inst.base, "gate ready: FAIL (not ready)");
        return Ok(Outcome::failed());
    }
    let info = match inst.info().await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(color, "gate identity: FAIL ({e:#})");
            return Ok(Outcome::failed());
        }
    };
    tracing::info!(color, task = %info.task, model = %info.model_id, fingerprint = %info.fingerprint, "gate ready: ok");
    if !info.color.is_empty() && info.color != color {
        tracing::error!(color, reports = %info.color, "gate identity: FAIL (instance reports another colour)");
        passed = false;
    }

    let old_info = match &old {
        Some(o) => Some((o, o.info().await)),
        None => None,
    };
    if let Some((o, Ok(oi))) = &old_info {
        if oi.task != info.task {
            tracing::error!(
                "gate task: REFUSED ({color} serves {}, the active colour {} serves {}). Its \
                 clients call {} routes, which {color} answers with 400 unsupported_task: a \
                 change of task is a new service, not a rollout. Remaining gates skipped",
                info.task,
                o.name,
                oi.task,
                oi.task
            );
            return Ok(Outcome {
                passed: false,
                compat: Compat::TaskChange {
                    from: oi.task,
                    to: info.task,
                },
            });
        }
        tracing::info!("gate task: ok ({}, as {} serves)", info.task, o.name);
    }

    passed &= contract::check(cfg, info.task, &inst, old.as_ref()).await;

    let caller = Caller::client(cfg, cfg.clients.primary_model());
    if let Some(path) = &v.golden_set {
        let set = golden::GoldenSet::load(path)?;
        passed &= set.check(&inst, &caller, cfg, info.task).await;
    }

    passed &= load::check(cfg, info.task, &inst, &caller, timeout).await?;

    let compat = match old_info {
        None => Compat::NoActive,
        Some((o, Err(e))) => {
            let why = format!("active colour {} unreachable: {e:#}", o.name);
            match info.task {
                Task::Embed => Compat::Incompatible(why),
                Task::Rerank => Compat::Unverified(why),
            }
        }
        Some((o, Ok(oi))) => match info.task {
            Task::Embed => compat::check(cfg, &inst, &info.fingerprint, o, &oi, &caller).await,
            Task::Rerank => Compat::NotApplicable {
                model_change: info.fingerprint.is_empty() || oi.fingerprint != info.fingerprint,
            },
        },
    };
    log_compat(cfg, &compat, &info, color);
    Ok(Outcome { passed, compat })
}

fn log_compat(cfg: &Config, compat: &Compat, info: &Info, color: &str) {
    match compat {
        Compat::Incompatible(why) => tracing::warn!(
            "gate vector space: INCOMPATIBLE with the active colour ({why}). Vectors stored from \
             the active colour cannot be compared with this colour's: RE-INDEX stored vectors \
             before or with this switch."
        ),
        Compat::NotApplicable { model_change } => {
            tracing::info!(
                "gate vector space: not applicable ({color} is a reranker: its scores are \
                 computed per request and never stored, so a model change needs no re-index)"
            );
            if *model_change {
                let vouched = if cfg.verify.golden_set.is_some() {
                    "the golden set above is what vouches for the new scores"
                } else {
                    "NO golden_set is configured, so nothing has checked its scores"
                };
                tracing::warn!(
                    fingerprint = %info.fingerprint,
                    "{color} serves another model than the active colour: rankings will \
                     change; {vouched}"
                );
            }
        }
        Compat::Unverified(why) => tracing::warn!(
            "gate task: UNVERIFIED ({why}): cannot tell whether {color} serves the active \
             colour's task"
        ),
        c => tracing::info!(result = ?c, "gate vector space: ok"),
    }
}
