//! Layers every request passes: counting and stamping responses, the drain's arrival
//! mark, and the API key check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Family};
use crate::state::AppState;

/// Counts, times and labels every response, and stamps it with colour and fingerprint
/// so a client or a load balancer can tell which instance answered.
pub async fn observe(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let in_flight = InFlight::enter(&state.metrics.in_flight);
    // Counted first, then stamped: drain sets its flag before it reads the gauge, so
    // a request stamped as arriving before the signal is one drain waits for.
    // The gauge is a relaxed atomic: the fence orders its increment before the flag's
    // load, as drain's fence orders the flag's store before its reads of the gauge.
    std::sync::atomic::fence(Ordering::SeqCst);
    req.extensions_mut()
        .insert(Arrival::new(state.draining.load(Ordering::SeqCst)));
    let mut resp = next.run(req).await;
    drop(in_flight);
    let m = &state.metrics;
    m.latency
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.color) {
        headers.insert("x-qembed-color", v);
    }
    if let Some(fp) = state.loaded.get().map(|l| l.fingerprint.as_str()) {
        if let Ok(v) = HeaderValue::from_str(fp) {
            headers.insert("x-qembed-fingerprint", v);
        }
    }
    resp
}

/// Whether a request arrived before the shutdown signal. Such a request is served to
/// the end even if draining starts while its body is still being read; only requests
/// that arrive after the signal are refused.
#[derive(Clone, Copy)]
pub struct Arrival {
    pub while_draining: bool,
}

impl Arrival {
    fn new(while_draining: bool) -> Self {
        Self { while_draining }
    }
}

/// Counts a request as in flight until dropped, including when the client disconnects
/// and axum drops the handler mid-way: drain waits on this gauge reaching zero.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = state.args.api_key.as_deref() else {
        return next.run(req).await;
    };
    let family = Family::of_path(req.uri().path());
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        None => ApiError::unauthorized("Missing API key: send it as `Authorization: Bearer KEY`")
            .in_family(family)
            .into_response(),
        Some(g) if !constant_time_eq(g.as_bytes(), key.as_bytes()) => {
            ApiError::unauthorized("Incorrect API key provided")
                .in_family(family)
                .into_response()
        }
        Some(_) => next.run(req).await,
    }
}

/// The credentials of a `Bearer` authorization header. The scheme name is
/// case-insensitive (RFC 9110 §11.1): `bearer KEY` is as good as `Bearer KEY`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer k1", "bearer k1", "BEARER  k1 ", "  Bearer k1"] {
            assert_eq!(bearer_token(v), Some("k1"), "{v:?}");
        }
        for v in ["Basic k1", "Bearer", "Bearer ", "Bearerk1", ""] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
