//! Reading a webhook body: bounded in size after decoding its `Content-Encoding` (gzip,
//! deflate), bounded in time, and never pre-allocated from the sender's `Content-Length`.

use std::io::Write;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures::StreamExt;

use crate::ApiError;

/// Where decoded bytes go: refuses to grow past the limit, so a small compressed body that
/// expands without end (a "zip bomb") stops at the limit instead of filling memory.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("the decoded body is over the limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Identity(Capped),
    Gzip(flate2::write::GzDecoder<Capped>),
    /// HTTP's `deflate` is the zlib format (RFC 9110).
    Deflate(flate2::write::ZlibDecoder<Capped>),
}

impl Decoder {
    fn for_request(req: &HttpRequest, limit: usize) -> Result<Self, ApiError> {
        let sink = Capped {
            // Grows with what arrives: a Content-Length is the sender's claim, not a budget.
            buf: Vec::with_capacity(8 * 1024),
            limit,
            over: false,
        };
        let codings: Vec<String> = req
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != "identity")
            .collect();
        match codings.as_slice() {
            [] => Ok(Self::Identity(sink)),
            [c] if c == "gzip" || c == "x-gzip" => {
                Ok(Self::Gzip(flate2::write::GzDecoder::new(sink)))
            }
            [c] if c == "deflate" => Ok(Self::Deflate(flate2::write::ZlibDecoder::new(sink))),
            _ => Err(ApiError::UnsupportedEncoding(codings.join(", "))),
        }
    }

    fn sink(&self) -> &Capped {
        match self {
            Self::Identity(s) => s,
            Self::Gzip(d) => d.get_ref(),
            Self::Deflate(d) => d.get_ref(),
        }
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Identity(s) => s.write_all(chunk),
            Self::Gzip(d) => d.write_all(chunk),
            Self::Deflate(d) => d.write_all(chunk),
        }
    }

    fn finish(self) -> std::io::Result<Capped> {
        match self {
            Self::Identity(s) => Ok(s),
            Self::Gzip(d) => d.finish(),
            Self::Deflate(d) => d.finish(),
        }
    }

    fn error(&self, limit: usize, e: &std::io::Error) -> ApiError {
        if self.sink().over {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("the body cannot be decoded: {e}"))
        }
    }
}

/// The decoded body: 413 past `limit` (before or after decoding), 415 for a coding other than
/// gzip or deflate, 400 for a corrupt one, [`ApiError::RequestTimeout`] when it has not all
/// arrived within `timeout`.
pub(crate) async fn read(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut decoder = Decoder::for_request(req, limit)?;
    let mut received = 0usize;
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
            received += chunk.len();
            if received > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            if let Err(e) = decoder.write(&chunk) {
                return Err(decoder.error(limit, &e));
            }
        }
        Ok(decoder)
    };
    let decoder =
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ApiError::RequestTimeout {
                after: timeout,
                retry_after: 1,
            })??;
    let over = decoder.sink().over;
    match decoder.finish() {
        Ok(sink) => Ok(sink.buf),
        Err(_) if over => Err(ApiError::PayloadTooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body cannot be decoded: {e}"
        ))),
    }
}
