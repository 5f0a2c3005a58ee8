//! The HTTP application: every route, its layers and fallbacks, as one `Router` that
//! tests drive in-process and `serve` binds to a socket.

use std::sync::Arc;

use axum::extract::Request;
use axum::routing::{get, post};
use axum::Router;

use crate::api::{cohere, jina, openai, service, tei, vllm};
use crate::error::{ApiError, Family};
use crate::middleware;
use crate::state::AppState;

/// The router over `state`: API routes behind the key check, probes and metrics open.
/// Embedding and rerank routes are all mounted; the one of the other task answers 400
/// naming `--task`.
pub fn app(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embeddings", post(openai::embeddings))
        .route("/v2/embed", post(cohere::embed))
        .route("/embed", post(tei::embed))
        .route("/", post(tei::embed))
        .route("/v1/rerank", post(jina::rerank))
        .route("/v2/rerank", post(cohere::rerank))
        .route("/rerank", post(tei::rerank))
        .route("/v1/score", post(vllm::score_route))
        .route("/score", post(vllm::score_route))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/info", get(service::info))
        .route("/tokenize", post(service::tokenize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(service::health))
        .route("/ready", get(service::ready))
        .route("/metrics", get(service::metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_declared_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .with_state(state)
}

async fn unknown_route(req: Request) -> ApiError {
    let path = req.uri().path();
    ApiError::not_found(path).in_family(Family::of_path(path))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::method_not_allowed().in_family(Family::of_path(req.uri().path()))
}
