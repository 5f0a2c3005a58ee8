//! `switch` (verify, move traffic, watch, roll back by itself) and `rollback`.
//!
//! Both act on the colour nginx really serves when `nginx.url` lets them see it, and
//! both check that the include and the state can be written before anything moves: a
//! rollback that cannot be written is the one failure that leaves traffic on a broken
//! colour, so it has its own exit code (5) and says so loudly.

use anyhow::{bail, Context};

use crate::instance::Instance;
use crate::state::{now_unix, State};
use crate::traffic::{self, Current};
use crate::watch::{self, Baseline};
use crate::{gate, timeout, Config, Outcome, Stop};
use crate::{EXIT_MISMATCH, EXIT_ROLLBACK_FAILED, EXIT_ROLLED_BACK};

/// A scrape of `inst`'s metrics, or `None` (logged) when it fails.
async fn scrape(inst: &Instance) -> Option<watch::Snapshot> {
    match inst.metrics().await {
        Ok(m) => Some(watch::parse(&m)),
        Err(e) => {
            tracing::warn!(color = %inst.name, "cannot scrape metrics for the watch baseline: {e:#}");
            None
        }
    }
}

pub async fn switch(cfg: &Config, to: &str, allow_reindex: bool) -> Outcome {
    cfg.color(to)?;
    let cur = Current::read(cfg).await?;
    cur.warn();
    let active = cur.active().map(str::to_string);
    if active.as_deref() == Some(to) {
        if cur.include.as_deref() == Some(to) {
            tracing::info!(to, "already active; nothing to do");
            return Ok(Ok(()));
        }
        return Ok(Err(Stop(
            EXIT_MISMATCH,
            format!(
                "nginx already serves {to}, but the upstream include names {}: the next reload \
                 would move traffic away from it. Rewrite the include with `qembed-rollout init \
                 --color {to}` and reload nginx, or switch to the other colour",
                cur.include.as_deref().unwrap_or("nothing")
            ),
        )));
    }
    // A switch is only safe if its rollback can be written: check before anything moves.
    traffic::check_writable(cfg).context(
        "refusing to switch: the include or the state cannot be written, so neither could a rollback",
    )?;

    let old = match &active {
        Some(a) => Some(Instance::new(a, cfg, timeout(cfg))?),
        None => None,
    };
    let early = match &old {
        Some(o) => scrape(o).await,
        None => None,
    };
    if let Err(stop) = gate(cfg, to, active.as_deref(), allow_reindex).await? {
        return Ok(Err(stop));
    }
    let late = match &old {
        Some(o) => scrape(o).await,
        None => None,
    };
    let baseline = Baseline::from_scrapes(
        active.as_deref().unwrap_or("none"),
        early.as_ref(),
        late.as_ref(),
        cfg.watch.min_requests as f64,
    );
    let inst = Instance::new(to, cfg, timeout(cfg))?;
    let start = match inst.metrics().await {
        Ok(m) => watch::parse(&m),
        Err(e) => {
            bail!("cannot scrape {to}'s metrics, so the watch would be blind; not switching: {e:#}")
        }
    };

    let started = std::time::Instant::now();
    traffic::point(cfg, to, active.as_deref(), timeout(cfg))
        .await
        .map_err(|e| anyhow::anyhow!("switch to {to} not done: {e}"))?;
    let mut st = State::load(&cfg.nginx()?.state_file)?;
    st.previous = active.clone();
    st.active = Some(to.to_string());
    st.switched_at = Some(now_unix());
    st.save(&cfg.nginx()?.state_file)?;
    tracing::info!(
        to,
        switch_ms = started.elapsed().as_millis() as u64,
        "switched; watching"
    );

    let Err(why) = watch::watch(&inst, &cfg.watch, start, &baseline).await else {
        tracing::info!(to, window_s = cfg.watch.window_s, "watch window passed");
        return Ok(Ok(()));
    };
    tracing::error!(to, %why, "threshold broken during watch: rolling back");
    let Some(prev) = active else {
        return Ok(Err(Stop(
            EXIT_ROLLBACK_FAILED,
            format!("ROLLBACK NOT DONE: {why}, and there is no previous colour to roll back to; {to} keeps the traffic"),
        )));
    };
    if let Err(stop) = move_back(cfg, &prev, to, &why).await {
        return Ok(Err(stop));
    }
    Ok(Err(Stop(
        EXIT_ROLLED_BACK,
        format!("rolled back to {prev}: {why}"),
    )))
}

/// Sends traffic from `from` back to `to`, or says loudly why it could not.
async fn move_back(cfg: &Config, to: &str, from: &str, why: &str) -> Result<(), Stop> {
    let not_done = |detail: String| {
        Stop(
            EXIT_ROLLBACK_FAILED,
            format!(
                "ROLLBACK NOT DONE ({why}): {detail}. nginx still sends traffic to {from}. Fix \
                 the cause and run `qembed-rollout rollback`"
            ),
        )
    };
    traffic::check_writable(cfg).map_err(|e| {
        not_done(format!(
            "cannot write the upstream include or the state ({e:#}); nothing was changed"
        ))
    })?;
    traffic::point(cfg, to, Some(from), timeout(cfg))
        .await
        .map_err(|e| {
            not_done(if e.include_changed {
                e.to_string()
            } else {
                format!("{e}; the include and the state are unchanged")
            })
        })?;
    let st = State {
        active: Some(to.to_string()),
        previous: Some(from.to_string()),
        switched_at: Some(now_unix()),
        retired: None,
    };
    if let Err(e) = cfg.nginx().and_then(|n| st.save(&n.state_file)) {
        // Traffic did move; only the memory of it is stale.
        tracing::error!("rolled back to {to}, but saving the state failed: {e:#}");
    }
    Ok(())
}

pub async fn rollback(cfg: &Config) -> Outcome {
    let cur = Current::read(cfg).await?;
    cur.warn();
    let active = cur
        .active()
        .map(str::to_string)
        .context("no active colour in the upstream file")?;
    let st = State::load(&cfg.nginx()?.state_file)?;
    let prev = match st.previous {
        Some(p) if p != active => p,
        _ => cfg.other(&active)?,
    };
    if st.retired.as_deref() == Some(prev.as_str()) {
        bail!("{prev} was retired; start it again before rolling back to it");
    }
    let inst = Instance::new(&prev, cfg, timeout(cfg))?;
    if !inst.ready().await {
        bail!("{prev} is not ready; refusing to send traffic to it");
    }
    if let Err(stop) = move_back(cfg, &prev, &active, "rollback requested").await {
        return Ok(Err(stop));
    }
    tracing::info!(to = %prev, "rolled back");
    Ok(Ok(()))
}
