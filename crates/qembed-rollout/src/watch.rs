//! After a switch: watch the new colour's own metrics and say when it breaks. Every
//! API route clients send work to is counted: embeddings and all five rerank routes
//! (whichever a colour serves; the other task's stay at zero). 5xx share and p99 are
//! judged per interval. Client errors (401, 403, 404, 422 by default) are
//! judged since the switch against the old colour's share of the same statuses before
//! it: a colour that rejects what clients send (another served model name, a key they
//! lack) answers 4xx, never 5xx, and would pass a 5xx-only watch with every client
//! failing.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::config::Watch;
use crate::instance::Instance;

/// The API routes whose requests are watched: qembed's `route` label values.
const ROUTES: &[&str] = &[
    "/v1/embeddings",
    "/embeddings",
    "/v2/embed",
    "/embed",
    "/",
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/score",
    "/score",
];

/// Totals from one scrape of the watched routes' metrics.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub requests: f64,
    pub by_status: BTreeMap<u16, f64>,
    /// Cumulative latency histogram buckets: upper bound -> count.
    pub buckets: Vec<(f64, f64)>,
}

impl Snapshot {
    pub fn count(&self, status: u16) -> f64 {
        self.by_status.get(&status).copied().unwrap_or(0.0)
    }

    pub fn server_errors(&self) -> f64 {
        self.by_status.range(500..600).fold(0.0, |n, (_, c)| n + c)
    }

    /// Requests and statuses counted after `before` (a counter reset counts as zero).
    pub fn since(&self, before: &Snapshot) -> Snapshot {
        Snapshot {
            requests: (self.requests - before.requests).max(0.0),
            by_status: self
                .by_status
                .iter()
                .map(|(s, c)| (*s, (c - before.count(*s)).max(0.0)))
                .collect(),
            buckets: Vec::new(),
        }
    }

    /// `status`'s share of the requests.
    pub fn share(&self, status: u16) -> f64 {
        if self.requests > 0.0 {
            self.count(status) / self.requests
        } else {
            0.0
        }
    }
}

/// `name{k="v",...}` -> (`name`, labels). Values hold no quotes or commas here.
fn split_labels(series: &str) -> (&str, HashMap<&str, &str>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, HashMap::new());
    };
    let labels = rest
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim_matches('"')))
        .collect();
    (name, labels)
}

pub fn parse(metrics: &str) -> Snapshot {
    let mut s = Snapshot::default();
    let mut buckets: HashMap<String, f64> = HashMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = split_labels(series);
        if !labels.get("route").is_some_and(|r| ROUTES.contains(r)) {
            continue;
        }
        match name {
            "qembed_requests_total" => {
                s.requests += value;
                if let Some(status) = labels.get("status").and_then(|v| v.parse().ok()) {
                    *s.by_status.entry(status).or_insert(0.0) += value;
                }
            }
            "qembed_request_duration_seconds_bucket" => {
                if let Some(le) = labels.get("le") {
                    *buckets.entry(le.to_string()).or_insert(0.0) += value;
                }
            }
            _ => {}
        }
    }
    s.buckets = buckets
        .into_iter()
        .map(|(le, c)| {
            let bound = match le.as_str() {
                "+Inf" => f64::INFINITY,
                b => b.parse().unwrap_or(f64::INFINITY),
            };
            (bound, c)
        })
        .collect();
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// p99 (upper bucket bound, ms) of the requests between two scrapes.
pub fn p99_ms(before: &Snapshot, after: &Snapshot) -> Option<f64> {
    let prior: HashMap<u64, f64> = before
        .buckets
        .iter()
        .map(|(le, c)| (le.to_bits(), *c))
        .collect();
    let delta: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, c)| (*le, c - prior.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map(|(le, _)| le * 1000.0)
}

/// The old colour's traffic, as the yardstick for the new colour's client errors.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub color: String,
    pub counts: Snapshot,
    /// Where the counts come from, for the log.
    pub window: &'static str,
}

impl Baseline {
    /// From two scrapes of the old colour, before verify and just before the switch:
    /// the requests between them when there are at least `min_requests` (its traffic
    /// right now), else its lifetime totals, else nothing (every share judged against
    /// zero).
    pub fn from_scrapes(
        color: &str,
        early: Option<&Snapshot>,
        late: Option<&Snapshot>,
        min_requests: f64,
    ) -> Self {
        let (counts, window) = match (early, late) {
            (Some(e), Some(l)) if l.since(e).requests >= min_requests => {
                (l.since(e), "during verify")
            }
            (_, Some(l)) => (l.clone(), "lifetime"),
            (_, None) => (Snapshot::default(), "none (not scraped)"),
        };
        Self {
            color: color.to_string(),
            counts,
            window,
        }
    }
}

/// A watched client-error status whose share since the switch rose more than allowed
/// above the baseline's, once enough requests came in to judge.
pub fn client_error_breach(since: &Snapshot, base: &Baseline, w: &Watch) -> Option<String> {
    if since.requests < w.min_requests.max(1) as f64 {
        return None;
    }
    w.client_error_statuses.iter().find_map(|&status| {
        let share = since.share(status);
        let before = base.counts.share(status);
        (share > before + w.max_client_error_increase).then(|| {
            format!(
                "{status} share {share:.3} of {} requests since the switch, against {before:.3} \
                 on {} ({}), more than +{} allowed: clients are being refused",
                since.requests, base.color, base.window, w.max_client_error_increase
            )
        })
    })
}

/// Watches for `window` from `start` (a scrape taken just before the switch); returns
/// `Err(reason)` on the first breach.
pub async fn watch(
    inst: &Instance,
    w: &Watch,
    start: Snapshot,
    base: &Baseline,
) -> std::result::Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs_f64(w.window_s);
    let interval = Duration::from_secs_f64(w.interval_s.max(0.05));
    tracing::info!(
        color = %inst.name, baseline = %base.color, window = base.window,
        requests = base.counts.requests, by_status = ?base.counts.by_status,
        "watch: client-error baseline"
    );
    let mut last = start.clone();
    while Instant::now() < deadline {
        tokio::time::sleep(interval).await;
        if !inst.ready().await {
            return Err(format!("{} is not ready", inst.name));
        }
        let now = match inst.metrics().await {
            Ok(m) => parse(&m),
            Err(e) => return Err(format!("cannot scrape {}: {e:#}", inst.name)),
        };
        let step = now.since(&last);
        let rate = if step.requests > 0.0 {
            step.server_errors() / step.requests
        } else {
            0.0
        };
        let p99 = p99_ms(&last, &now);
        let since = now.since(&start);
        tracing::info!(
            color = %inst.name, requests = step.requests, error_rate = rate, p99_ms = ?p99,
            since_switch = ?since.by_status, "watch"
        );
        if rate > w.max_error_rate {
            return Err(format!("5xx rate {rate:.4} > {}", w.max_error_rate));
        }
        if let Some(p) = p99.filter(|p| *p > w.max_p99_ms) {
            return Err(format!("p99 {p:.0} ms > {} ms", w.max_p99_ms));
        }
        if let Some(why) = client_error_breach(&since, base, w) {
            return Err(why);
        }
        last = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP qembed_requests_total HTTP requests by route and status
qembed_requests_total{route="/v1/embeddings",status="200"} 10
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="0.1"} 10
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="1"} 10
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"} 10
"#;
    const AFTER: &str = r#"qembed_requests_total{route="/v1/embeddings",status="200"} 108
qembed_requests_total{route="/v1/embeddings",status="503"} 2
qembed_requests_total{route="/health",status="500"} 7
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="0.1"} 98
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="1"} 110
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"} 110
"#;

    #[test]
    fn deltas_between_scrapes() {
        let (a, b) = (parse(BEFORE), parse(AFTER));
        let d = b.since(&a);
        assert_eq!((d.requests, d.server_errors()), (100.0, 2.0));
        // 88 of 100 new requests under 100 ms, all under 1 s: p99 bucket is 1 s.
        assert_eq!(p99_ms(&a, &b), Some(1000.0));
        assert_eq!(p99_ms(&b, &b), None);
    }

    fn snap(ok: f64, not_found: f64) -> Snapshot {
        parse(&format!(
            "qembed_requests_total{{route=\"/v1/embeddings\",status=\"200\"}} {ok}\n\
             qembed_requests_total{{route=\"/embeddings\",status=\"404\"}} {not_found}\n"
        ))
    }

    /// A reranker's routes are all counted, summed together; others are not.
    #[test]
    fn rerank_routes_are_watched() {
        let m = r#"qembed_requests_total{route="/v1/rerank",status="200"} 10
qembed_requests_total{route="/v2/rerank",status="200"} 5
qembed_requests_total{route="/rerank",status="422"} 1
qembed_requests_total{route="/v1/score",status="404"} 3
qembed_requests_total{route="/score",status="500"} 1
qembed_requests_total{route="/info",status="200"} 9
qembed_request_duration_seconds_bucket{route="/v1/rerank",le="0.1"} 10
qembed_request_duration_seconds_bucket{route="/v1/score",le="0.1"} 2
qembed_request_duration_seconds_bucket{route="/v1/score",le="+Inf"} 4
qembed_request_duration_seconds_bucket{route="/v1/rerank",le="+Inf"} 10
"#;
        let s = parse(m);
        assert_eq!((s.requests, s.server_errors()), (20.0, 1.0));
        assert_eq!((s.count(404), s.count(422)), (3.0, 1.0));
        assert_eq!(s.buckets, vec![(0.1, 12.0), (f64::INFINITY, 14.0)]);
        assert_eq!(
            p99_ms(&Snapshot::default(), &s),
            Some(f64::INFINITY),
            "2 of 14 above 100 ms"
        );
    }

    #[test]
    fn client_errors_against_the_old_colours_share() {
        let w = Watch::default();
        // Blue: 2 % 404s during verify (100 requests), none before.
        let base = Baseline::from_scrapes(
            "blue",
            Some(&snap(50.0, 0.0)),
            Some(&snap(148.0, 2.0)),
            20.0,
        );
        assert_eq!(base.window, "during verify");
        assert!((base.counts.share(404) - 0.02).abs() < 1e-12);
        // Green at 2.5 %: within +1 %. At 4 %: refused. Too few requests: not judged.
        assert_eq!(client_error_breach(&snap(195.0, 5.0), &base, &w), None);
        let why = client_error_breach(&snap(192.0, 8.0), &base, &w).unwrap();
        assert!(why.starts_with("404 share 0.040"), "{why}");
        assert_eq!(client_error_breach(&snap(5.0, 5.0), &base, &w), None);
        // Too little traffic on blue during verify: its lifetime counts serve.
        let quiet = Baseline::from_scrapes(
            "blue",
            Some(&snap(140.0, 10.0)),
            Some(&snap(145.0, 10.0)),
            20.0,
        );
        assert_eq!((quiet.window, quiet.counts.requests), ("lifetime", 155.0));
        let none = Baseline::from_scrapes("blue", None, None, 20.0);
        // No baseline: judged against zero (1.5 % > +1 %).
        assert!(client_error_breach(&snap(197.0, 3.0), &none, &w).is_some());
    }
}
