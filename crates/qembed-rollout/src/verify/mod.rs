//! The gates a colour must pass before it takes traffic: ready and identity, the
//! client contract, the golden set, load, and vector-space compatibility. Every gate
//! that sends API requests sends them as the clients do (`[clients]`), so a colour that
//! would reject them is caught here rather than by the clients after the switch.

mod compat;
mod contract;
mod golden;
mod load;

use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::instance::{Caller, Instance};

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
    tracing::info!(color, model = %info.model_id, fingerprint = %info.fingerprint, "gate ready: ok");
    if !info.color.is_empty() && info.color != color {
        tracing::error!(color, reports = %info.color, "gate identity: FAIL (instance reports another colour)");
        passed = false;
    }

    passed &= contract::check(cfg, &inst, old.as_ref()).await;

    let caller = Caller::client(cfg, cfg.clients.primary_model());
    if let Some(path) = &v.golden_set {
        let set = golden::GoldenSet::load(path)?;
        passed &= set.check(&inst, &caller, v).await;
    }

    passed &= load::check(cfg, &inst, &caller, timeout).await?;

    let compat = match &old {
        None => Compat::NoActive,
        Some(old) => compat::check(cfg, &inst, &info.fingerprint, old, &caller).await,
    };
    match &compat {
        Compat::Incompatible(why) => tracing::warn!(
            "gate vector space: INCOMPATIBLE with the active colour ({why}). Vectors stored from \
             the active colour cannot be compared with this colour's: RE-INDEX stored vectors \
             before or with this switch."
        ),
        c => tracing::info!(result = ?c, "gate vector space: ok"),
    }
    Ok(Outcome { passed, compat })
}
