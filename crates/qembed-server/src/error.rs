//! Every failure a client can see, in the error shape of the API family the route
//! belongs to: OpenAI's by default, Cohere's on Cohere routes, TEI's on TEI routes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qembed_engine::{EngineError, SubmitError};
use serde::Serialize;
use serde_json::json;

/// Which API's error body a response uses: each client library parses its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// `{"error": {"message", "type", "param", "code"}}` (also vLLM and Jina clients).
    #[default]
    OpenAi,
    /// `{"message": ...}`, as Cohere's API answers.
    Cohere,
    /// `{"error": ..., "error_type": ...}`, as text-embeddings-inference answers.
    Tei,
}

impl Family {
    /// The family of a route path, for errors raised before a handler runs (auth,
    /// unknown routes, body limits).
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/v2/") {
            Family::Cohere
        } else if matches!(path, "/" | "/rerank" | "/embed") {
            Family::Tei
        } else {
            Family::OpenAi
        }
    }
}

/// An error with an HTTP status, rendered in its [`Family`]'s shape, and a Retry-After
/// for the statuses a client should retry.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
    pub family: Family,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
            family: Family::OpenAi,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The same error in `family`'s shape.
    pub fn in_family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::invalid(format!("The model `{model}` does not exist"), Some("model"))
            .with_status(StatusCode::NOT_FOUND)
            .with_code("model_not_found")
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::invalid(message, None)
            .with_status(StatusCode::UNAUTHORIZED)
            .with_code("invalid_api_key")
    }

    pub fn not_found(path: &str) -> Self {
        Self::invalid(format!("Unknown route: {path}"), None)
            .with_status(StatusCode::NOT_FOUND)
            .with_code("unknown_url")
    }

    pub fn method_not_allowed() -> Self {
        Self::invalid("Method not allowed for this route", None)
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .with_code("method_not_allowed")
    }

    /// A route of the other task: an embedding route on a reranker or the reverse.
    pub fn wrong_task(e: &EngineError) -> Self {
        Self::invalid(e.to_string(), None).with_code("unsupported_task")
    }

    pub fn overloaded(message: String) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message,
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
            family: Family::OpenAi,
        }
    }

    pub fn unavailable(message: &str) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.to_string(),
            kind: "server_error",
            param: None,
            code: Some("service_unavailable"),
            retry_after: Some(1),
            family: Family::OpenAi,
        }
    }

    pub fn internal(message: String) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            kind: "server_error",
            param: None,
            code: Some("internal_error"),
            retry_after: None,
            family: Family::OpenAi,
        }
    }

    /// An engine error about the input at `param` (e.g. `input[3]`), or a server fault.
    pub fn from_engine(e: EngineError, param: &str) -> Self {
        match &e {
            EngineError::Dimensions { .. } => {
                Self::invalid(e.to_string(), Some("dimensions")).with_code("invalid_dimensions")
            }
            EngineError::TooLong { .. } | EngineError::PairTooLong { .. } => {
                Self::invalid(format!("{param}: {e}"), Some(param))
                    .with_code("context_length_exceeded")
            }
            EngineError::InvalidToken { .. } => {
                Self::invalid(format!("{param}: {e}"), Some(param)).with_code("invalid_token")
            }
            EngineError::WrongTask { .. } => Self::wrong_task(&e),
            _ if e.is_input_error() => Self::invalid(format!("{param}: {e}"), Some(param)),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Overloaded(_) | SubmitError::QueueFull { .. } => {
                ApiError::overloaded(e.to_string())
            }
            SubmitError::TooManyTokens { .. } => ApiError::invalid(e.to_string(), None)
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
                .with_code("too_many_tokens"),
            SubmitError::WorkerGone => ApiError::unavailable(&e.to_string()),
            SubmitError::Engine(e) => ApiError::from_engine(e, "input"),
            SubmitError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = match self.family {
            Family::OpenAi => {
                let body = Body {
                    error: Inner {
                        message: &self.message,
                        kind: self.kind,
                        param: self.param.as_deref(),
                        code: self.code,
                    },
                };
                (self.status, Json(body)).into_response()
            }
            Family::Cohere => (self.status, Json(json!({"message": self.message}))).into_response(),
            Family::Tei => {
                let kind = match self.status.as_u16() {
                    429 => "overloaded",
                    503 => "unhealthy",
                    s if s >= 500 => "backend",
                    _ => "validation",
                };
                let body = json!({"error": self.message, "error_type": kind});
                (self.status, Json(body)).into_response()
            }
        };
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
