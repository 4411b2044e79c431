//! Requests actix-http refuses before any handler runs — a request line too long for a
//! URI (over 64 KiB), a head over 128 KiB or with over 96 headers, bytes that are not
//! HTTP — are answered by its dispatcher with a bodiless 400 or 431. [`JsonRejections`]
//! wraps each connection and rewrites those answers in the API's error form:
//! `{"error": "..."}`, with 414 for a request line (a query string) too long, 431 for
//! other heads too large, 400 otherwise.
//!
//! It tells the dispatcher's answers apart from the application's by their shape: every
//! error the application gives has a JSON body, so a 400 or 431 with `content-length: 0`
//! can only be the dispatcher's (and a JSON body cannot hold the CRLFs of that prefix).
//! It tells a long URI from the length of the first line read since the last answer (a
//! `100 Continue` is not an answer). With pipelined requests that line may be a later
//! request's, so the reason given may be off; the status of a refusal stays a 4xx.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ErrorCode;

/// The dispatcher's own refusals, as it writes them.
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n";
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n";
/// A line this long cannot be read as a URI (`http`'s limit is 65,534 bytes).
const LONG_LINE: usize = 60 << 10;

/// A connection whose pre-handler refusals come out as JSON errors.
pub struct JsonRejections<T> {
    io: T,
    /// Length of the line being read, and whether it is the first line since the last
    /// answer (the request line).
    line: usize,
    first_line: bool,
    /// The length of the request line read since the last answer.
    request_line: usize,
    /// A rewritten answer still to be written.
    pending: Vec<u8>,
    /// The length of the refusal the rewritten answer replaces, to report once the
    /// answer is written whole (the dispatcher closes the connection when it thinks
    /// its own is).
    replaced: Option<usize>,
}

impl<T> JsonRejections<T> {
    pub fn new(io: T) -> Self {
        Self { io, line: 0, first_line: true, request_line: 0, pending: Vec::new(), replaced: None }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn saw(&mut self, bytes: &[u8]) {
        for b in bytes {
            if *b == b'\n' {
                self.end_line();
            } else {
                self.line += 1;
            }
        }
        // A request line still being read counts with what it has so far.
        if self.first_line {
            self.request_line = self.request_line.max(self.line);
        }
    }

    fn end_line(&mut self) {
        if self.first_line {
            self.request_line = self.request_line.max(self.line);
            self.first_line = false;
        }
        self.line = 0;
    }

    /// The JSON answer for a refusal, if `buf` starts one.
    fn rewrite(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let (status, reason, message) = if buf.starts_with(HEAD_TOO_LARGE) || buf.starts_with(BAD_REQUEST) {
            if self.request_line >= LONG_LINE {
                (
                    ErrorCode::UriTooLong,
                    "URI Too Long",
                    format!(
                        "the request line is over {} KiB (a query string too long?): send a long query as the JSON body of POST /api/v1/query",
                        LONG_LINE >> 10
                    ),
                )
            } else if buf.starts_with(HEAD_TOO_LARGE) {
                (ErrorCode::HeadersTooLarge, "Request Header Fields Too Large", "the request's headers are too large (over 128 KiB, or over 96 headers)".to_string())
            } else {
                (ErrorCode::BadRequest, "Bad Request", "the request is not valid HTTP/1.1".to_string())
            }
        } else {
            return None;
        };
        let body = serde_json::json!({ "error": message }).to_string();
        Some(
            format!(
                "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                status.http_status(),
                body.len()
            )
            .into_bytes(),
        )
    }
}

impl<T: AsyncWrite + Unpin> JsonRejections<T> {
    /// Writes what is pending; ready once it is all written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRejections<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRejections<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        if let Some(n) = this.replaced.take() {
            // The rewritten answer is out whole: the refusal it replaced is written.
            return Poll::Ready(Ok(n));
        }
        if buf.starts_with(b"HTTP/1.") {
            if let Some(answer) = this.rewrite(buf) {
                // The refusal is the last thing on this connection: it closes after it.
                this.pending = answer;
                this.replaced = Some(buf.len());
                std::task::ready!(this.poll_pending(cx))?;
                this.replaced = None;
                return Poll::Ready(Ok(buf.len()));
            }
            if !buf.get(8..).is_some_and(|rest| rest.starts_with(b" 100 ")) {
                // An answer: what comes next is a new request.
                this.first_line = true;
                this.line = 0;
                this.request_line = 0;
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(request: &[u8]) -> JsonRejections<()> {
        let mut c = JsonRejections::new(());
        c.saw(request);
        c
    }

    #[test]
    fn a_long_request_line_is_a_414_and_other_refusals_keep_their_status() {
        let long = format!("GET /api/v1/search?q={} HTTP/1.1\r\nHost: x\r\n", "a".repeat(120_000));
        let answer = String::from_utf8(seen(long.as_bytes()).rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{answer}");
        assert!(answer.contains("\"error\":\"the request line is over 60 KiB"), "{answer}");
        let headers = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "b".repeat(140_000));
        let answer =
            String::from_utf8(seen(headers.as_bytes()).rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n").unwrap())
                .unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        let answer = String::from_utf8(seen(b"NOT HTTP\r\n\r\n").rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json"), "{answer}");
        // The application's own answers pass as they are.
        assert!(seen(long.as_bytes()).rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 107\r\n").is_none());
        assert!(seen(b"").rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n").is_none());
    }
    /// Through a connection that takes 16 bytes at a time, the JSON answer arrives whole
    /// and the dispatcher is told its refusal was written only then.
    #[tokio::test]
    async fn a_rewritten_answer_is_written_whole_through_a_narrow_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut conn = JsonRejections::new(ours);
        conn.saw(format!("GET /?q={} HTTP/1.1\r\n", "a".repeat(70_000)).as_bytes());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
        conn.shutdown().await.unwrap();
        drop(conn);
        let got = reader.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{got}");
        let body = got.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("POST /api/v1/query"), "{got}");
    }
}
