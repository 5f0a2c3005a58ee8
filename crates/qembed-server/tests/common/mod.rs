//! The server's HTTP application built in-process (`app(state)` over a loaded fixture
//! model) and driven with `tower::ServiceExt::oneshot`: no process, no socket, so these
//! tests are fast and need no ports. Tests of signals and drain start a real process
//! with `qembed_testkit::Server` instead.

#![allow(dead_code, unused_imports)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request};
use axum::Router;
use qembed_server::{app, serve::load_and_warm, AppState, ServeArgs};
use serde_json::Value;
use tower::ServiceExt;

pub use qembed_testkit::{cosine, fixture, Reference};

pub struct TestApp {
    pub app: Router,
    pub state: Arc<AppState>,
}

/// A response: status, headers and the body parsed as JSON (`Value::Null` if it is not).
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestApp {
    /// `qembed serve --model-path models/MODEL ARGS...`, loaded and warmed, not bound.
    pub async fn start(model: &str, args: &[&str]) -> TestApp {
        let mut argv = vec![
            "--model-path".to_string(),
            fixture(model).display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let args = ServeArgs::parse_from(argv).unwrap();
        let state = Arc::new(AppState::new(args).unwrap());
        let loading = state.clone();
        tokio::task::spawn_blocking(move || load_and_warm(&loading))
            .await
            .unwrap()
            .unwrap();
        TestApp {
            app: app(state.clone()),
            state,
        }
    }

    /// Sends one request through the whole router (layers and fallbacks included).
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(body.into()).unwrap()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_with(path, &[], body).await
    }

    pub async fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(Method::POST, path, &all, body.to_string())
            .await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<Body>) -> Reply {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Body::empty()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, path, headers, Body::empty())
            .await
    }
}

/// Decodes an OpenAI base64 embedding (little-endian f32).
pub fn decode_base64(s: &str) -> Vec<f32> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Asserts OpenAI's error shape and returns the error object.
pub fn assert_error_shape(body: &Value) -> &serde_json::Map<String, Value> {
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].as_str().is_some(), "{body}");
    assert!(
        err.contains_key("param") && err.contains_key("code"),
        "{body}"
    );
    err
}

/// Words of the fixture vocabulary, `words` of them: a text of a predictable length.
pub fn long_text(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{}", i * 7919 % 1000))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A metric's value in a Prometheus text scrape (the first line starting with `name `).
pub fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')
            .and_then(|r| r.trim().parse().ok())
    })
}
