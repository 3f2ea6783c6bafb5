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

/// The error [`Capped`] refuses with, told apart from a decoding error however it comes back
/// (the decoders hand the writer's error through, also from their final flush).
#[derive(Debug, thiserror::Error)]
#[error("the decoded body is over the limit")]
struct OverLimit;

fn is_over(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<OverLimit>())
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other(OverLimit));
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
        if self.sink().over || is_over(e) {
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
    payload: &mut web::Payload,
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
        // The decoders flush their last buffered output here: the limit can be passed now too.
        Err(e) if over || is_over(&e) => Err(ApiError::PayloadTooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body cannot be decoded: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoder: &mut Decoder, limit: usize, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        for chunk in body.chunks(7) {
            if let Err(e) = decoder.write(chunk) {
                return Err(decoder.error(limit, &e));
            }
        }
        let placeholder = Decoder::Identity(Capped {
            buf: Vec::new(),
            limit,
            over: false,
        });
        let d = std::mem::replace(decoder, placeholder);
        let over = d.sink().over;
        match d.finish() {
            Ok(s) => Ok(s.buf),
            Err(e) if over || is_over(&e) => Err(ApiError::PayloadTooLarge(limit)),
            Err(e) => Err(ApiError::BadRequest(e.to_string())),
        }
    }

    fn sink(limit: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            limit,
            over: false,
        }
    }

    #[test]
    fn decoded_size_is_capped_also_in_the_final_flush() {
        let data = vec![b'x'; 20_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        // Under the limit: decoded whole.
        let mut d = Decoder::Gzip(flate2::write::GzDecoder::new(sink(20_000)));
        assert_eq!(decode(&mut d, 20_000, &gz).unwrap(), data);
        // One byte over, whichever write or flush passes it: 413, never 400.
        for limit in [19_999, 1_000, 10] {
            let mut d = Decoder::Gzip(flate2::write::GzDecoder::new(sink(limit)));
            assert!(
                matches!(
                    decode(&mut d, limit, &gz),
                    Err(ApiError::PayloadTooLarge(_))
                ),
                "{limit}"
            );
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&data).unwrap();
        let z = z.finish().unwrap();
        let mut d = Decoder::Deflate(flate2::write::ZlibDecoder::new(sink(19_999)));
        assert!(matches!(
            decode(&mut d, 19_999, &z),
            Err(ApiError::PayloadTooLarge(_))
        ));
        // Corrupt: 400.
        let mut d = Decoder::Gzip(flate2::write::GzDecoder::new(sink(100)));
        assert!(matches!(
            decode(&mut d, 100, b"\x1f\x8b\x08\x00garbage garbage"),
            Err(ApiError::BadRequest(_))
        ));
    }
}
