//! Reading a client's request body: within a size limit and a deadline for the whole body, so
//! a body dribbled a byte at a time cannot hold a connection open.

use crate::error::ApiError;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::time::Duration;

/// The whole body of a request, or 413 past `limit` bytes, 408 past `deadline`, 400 when the
/// framing is broken.
pub async fn read(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(timed_out(deadline)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// 408 for a body not received in time.
fn timed_out(deadline: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "invalid_request_error",
        "request_timeout",
        format!(
            "the request body was not received within {} s",
            deadline.as_secs_f64()
        ),
    )
}
