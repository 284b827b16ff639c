//! Errors returned to clients, in OpenAI's shape: `{"error":{"message","type","code","param"}}`.

use http::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message; never carries a secret.
    pub message: String,
    /// OpenAI error `type` (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// Machine-readable code.
    pub code: Option<String>,
    /// The request field at fault.
    pub param: Option<String>,
    /// Seconds the client should wait before retrying (sets `Retry-After`).
    pub retry_after: Option<Duration>,
    /// The policy rule whose decision refused the request (no deployment could serve it): set
    /// as `x-llmgw-rule` and logged with the policy revision. (One pointer wide: errors are
    /// returned by value on every path and stay small.)
    pub rule: Option<Arc<String>>,
}

impl ApiError {
    /// An error with a status, type, code and message.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            code: Some(code.to_owned()),
            param: None,
            retry_after: None,
            rule: None,
        }
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Names the policy rule whose decision refused the request.
    pub fn with_rule(mut self, rule: &str) -> Self {
        self.rule = Some(Arc::new(rule.to_owned()));
        self
    }

    /// Sets the `Retry-After` the client sees.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// 400 for a request that cannot be understood.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// 400 naming a missing or invalid field.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        ApiError::bad_request("invalid_value", message).with_param(param)
    }

    /// 401 for a missing or unknown gateway key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 404 for a route that does not exist.
    pub fn route_not_found(method: &http::Method, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("unknown route `{method} {path}`"),
        )
    }

    /// 404 for a model the policy does not declare.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the model `{model}` does not exist"),
        )
        .with_param("model")
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 500 for a failure of the gateway itself.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message,
        )
    }

    /// 503 when nothing can serve the request.
    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            code,
            message,
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "param": self.param,
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_openai_shape() {
        let e = ApiError::invalid_field("messages", "`messages` is required");
        let body = e.body();
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_value");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
