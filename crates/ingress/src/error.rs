//! The ingress's HTTP errors: each a status and a short JSON body `{"error": ..., "message": ...}`.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `WWW-Authenticate` challenges go with the 401; the reason is logged (the body says
    /// no more than this message).
    #[error("missing or wrong credentials")]
    Unauthorized {
        challenges: Vec<String>,
        reason: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("no such path")]
    NotFound,
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("Content-Encoding {0} is not supported: send identity, gzip or deflate")]
    UnsupportedEncoding(String),
    /// The body did not arrive in time: cut off with 503 and `Retry-After` (Tradecloud retries a
    /// 503; a 408 would be a 4xx it drops).
    #[error("the request body did not arrive within {after:?}")]
    RequestTimeout {
        after: std::time::Duration,
        retry_after: u32,
    },
    #[error("the message bus does not accept a trigger this large")]
    TooLargeForBroker,
    #[error(
        "content type must be JSON (application/json, *+json) or tXML (application/xml, text/xml, *+xml), got {0:?}"
    )]
    UnsupportedMediaType(String),
    /// Transient: the trigger was not stored; Tradecloud retries on 503.
    #[error("{reason}")]
    Unavailable { reason: String, retry_after: u32 },
}

impl ApiError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) | ApiError::TooLargeForBroker => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) | ApiError::TooLargeForBroker => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::RequestTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized { challenges, .. } => {
                for c in challenges {
                    res.append_header((header::WWW_AUTHENTICATE, c.as_str()));
                }
            }
            ApiError::MethodNotAllowed(allow) => {
                res.insert_header((header::ALLOW, *allow));
            }
            ApiError::Unavailable { retry_after, .. }
            | ApiError::RequestTimeout { retry_after, .. } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        // A refused request's body may not have been read (or not to its end): the connection is
        // closed instead of drained, so a slow or endless body holds nothing open. (Setting a
        // `Connection` header does not do this in actix; `force_close` does.)
        if !matches!(self, ApiError::Unavailable { .. }) {
            res.force_close();
        }
        res.json(json!({ "error": self.code(), "message": self.to_string() }))
    }
}
