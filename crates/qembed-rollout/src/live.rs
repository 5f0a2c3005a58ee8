//! Which colour really answers through nginx. The include file says what nginx was
//! told; only a request through nginx says what it does (a failed reload, a hand edit
//! or a restart with an old file all make the two differ). Every qembed response
//! carries `x-qembed-color`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Probes per look: each on a new connection, so each reaches a current nginx worker.
const PROBES: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Every probe was answered by this colour.
    Color(String),
    /// Probes were answered by different colours (a reload in progress?).
    Mixed(BTreeMap<String, usize>),
    /// Answered, but without `x-qembed-color` (instances started without `--color`?).
    NoColor(u16),
    Unreachable(String),
}

impl Live {
    pub fn color(&self) -> Option<&str> {
        match self {
            Self::Color(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Color(c) => write!(f, "{c}"),
            Self::Mixed(m) => write!(f, "mixed {m:?}"),
            Self::NoColor(s) => write!(f, "unknown (HTTP {s} without x-qembed-color)"),
            Self::Unreachable(e) => write!(f, "unreachable ({e})"),
        }
    }
}

/// `GET {nginx_url}/health` a few times; which colour answered.
pub async fn probe(nginx_url: &str, timeout: Duration) -> Live {
    let http = match reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Live::Unreachable(e.to_string()),
    };
    let url = format!("{}/health", nginx_url.trim_end_matches('/'));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut status = 0;
    for _ in 0..PROBES {
        let resp = match http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => return Live::Unreachable(format!("{url}: {e}")),
        };
        status = resp.status().as_u16();
        if let Some(c) = resp
            .headers()
            .get("x-qembed-color")
            .and_then(|v| v.to_str().ok())
        {
            *seen.entry(c.to_string()).or_insert(0) += 1;
        }
    }
    match seen.len() {
        0 => Live::NoColor(status),
        1 if seen.values().sum::<usize>() == PROBES => {
            Live::Color(seen.into_keys().next().unwrap_or_default())
        }
        _ => Live::Mixed(seen),
    }
}
