//! Where traffic goes: which colour the include file names, which one really answers
//! through nginx, and moving it (rewrite the include, `nginx -t`, reload) so that a
//! failure at any step leaves the include as it was.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::Config;
use crate::instance::Instance;
use crate::live::{self, Live};
use crate::nginx;
use crate::state;

/// The include file's colour and, where `nginx.url` is set, the colour nginx serves.
pub struct Current {
    pub include: Option<String>,
    pub live: Option<Live>,
}

impl Current {
    pub async fn read(cfg: &Config) -> Result<Self> {
        let n = cfg.nginx()?;
        let include = nginx::active(&n.upstream_file)?;
        let live = match &n.url {
            Some(url) => Some(live::probe(url, Duration::from_secs(5)).await),
            None => None,
        };
        Ok(Self { include, live })
    }

    /// The colour taking traffic: the one answering through nginx when that is known,
    /// else the one the include names.
    pub fn active(&self) -> Option<&str> {
        self.live
            .as_ref()
            .and_then(Live::color)
            .or(self.include.as_deref())
    }

    /// A loud sentence when the include and the live traffic name different colours.
    pub fn disagreement(&self) -> Option<String> {
        let (Some(file), Some(live)) = (&self.include, self.live.as_ref().and_then(Live::color))
        else {
            return None;
        };
        (file != live).then(|| {
            format!(
                "MISMATCH: the upstream include names {file} but nginx serves {live}. nginx has \
                 not loaded the include (a failed reload, a hand edit?); its next reload or \
                 restart moves all traffic to {file}"
            )
        })
    }

    /// Logs what a command should know before it acts on `active()`.
    pub fn warn(&self) {
        if let Some(d) = self.disagreement() {
            tracing::warn!("{d}; acting on the colour nginx serves");
        }
        if let Some(l @ (Live::Unreachable(_) | Live::Mixed(_) | Live::NoColor(_))) = &self.live {
            tracing::warn!("nginx live probe: {l}; acting on the include file");
        }
    }
}

/// A switch or rollback must be able to write the include and the state before it
/// moves anything: a rollback that cannot be written leaves traffic on a broken colour.
pub fn check_writable(cfg: &Config) -> Result<()> {
    let n = cfg.nginx()?;
    drop(nginx::stage(
        &n.upstream_file,
        "# qembed-rollout write check\n",
    )?);
    state::check_writable(&n.state_file)
}

/// Why nginx was not moved, and whether the include was left changed regardless.
#[derive(Debug)]
pub struct PointError {
    pub cause: anyhow::Error,
    /// The include names the new colour but nginx did not load it (restoring failed).
    pub include_changed: bool,
}

impl std::fmt::Display for PointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.cause)
    }
}

fn unchanged(cause: anyhow::Error) -> PointError {
    PointError {
        cause,
        include_changed: false,
    }
}

/// Points nginx at `to`, with a retry backup only when both colours serve one model.
/// On any failure the include is restored (or never written): the include always names
/// what nginx loaded, unless restoring itself failed (`include_changed`).
pub async fn point(
    cfg: &Config,
    to: &str,
    from: Option<&str>,
    timeout: Duration,
) -> Result<(), PointError> {
    let n = cfg.nginx().map_err(unchanged)?;
    let addr = cfg
        .color(to)
        .and_then(|c| c.upstream_addr())
        .map_err(unchanged)?;
    let mut backup = None;
    if let Some(from) = from.filter(|f| *f != to) {
        let a = Instance::new(to, cfg, timeout).map_err(unchanged)?;
        let b = Instance::new(from, cfg, timeout).map_err(unchanged)?;
        if let (Ok(a), Ok(b)) = (a.info().await, b.info().await) {
            if !a.fingerprint.is_empty() && a.fingerprint == b.fingerprint {
                backup = Some(
                    cfg.color(from)
                        .and_then(|c| c.upstream_addr())
                        .map_err(unchanged)?,
                );
            }
        }
    }
    let file = &n.upstream_file;
    let old = match std::fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(unchanged(
                anyhow!(e).context(format!("reading {}", file.display())),
            ))
        }
    };
    let content = nginx::render(to, &addr, backup.as_deref(), n.keepalive);
    nginx::stage(file, &content)
        .and_then(nginx::Staged::commit)
        .map_err(unchanged)?;
    let loaded =
        nginx::run(&n.test, "nginx -t").and_then(|()| nginx::run(&n.reload, "nginx reload"));
    if let Err(cause) = loaded {
        // nginx never loaded the new file: put the old one back so the include, the
        // state and a later switch all agree with what nginx serves.
        let restored = match &old {
            Some(old) => nginx::write(file, old),
            None => {
                std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
            }
        };
        return Err(match restored {
            Ok(()) => unchanged(anyhow!(
                "{cause:#}; the previous include is restored, traffic was not moved"
            )),
            Err(e) => PointError {
                cause: anyhow!(
                    "{cause:#}; AND RESTORING THE PREVIOUS INCLUDE FAILED ({e:#}): {} now names \
                     {to}, which nginx has not loaded; put it back by hand",
                    file.display()
                ),
                include_changed: true,
            },
        });
    }
    tracing::info!(to, backup = ?backup, "nginx now sends traffic to {to}");
    Ok(())
}
