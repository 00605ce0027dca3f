//! The HTTP client instant-acme sends through, wrapped to bound every exchange in time
//! (`acme.request_timeout`) and size ([`MAX_RESPONSE_BYTES`]), to log each request
//! (operators count them when judging whether we hammer a CA), and to remember the last
//! answer of the running ACME call: instant-acme 0.8 drops the status, the headers (and so
//! Retry-After) and the body from its errors, and [`super::error::classify`] needs them.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode, response::Parts};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use instant_acme::{BodyWrapper, BytesResponse, Error as AcmeLibError, HttpClient, Problem};
use time::OffsetDateTime;
use tracing::debug;

/// At most this much of one answer is read: a certificate chain is a few KiB, so 4 MiB
/// leaves room for long chains and is still harmless to hold in memory.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How many characters of an unexpected answer an error quotes.
pub(super) const EXCERPT_CHARS: usize = 160;

/// What one HTTP exchange with the CA returned, kept for classifying the error that
/// instant-acme reports afterwards (it drops the status, the headers and the body).
#[derive(Debug, Clone)]
pub(super) struct Exchange {
    pub(super) method: Method,
    pub(super) url: String,
    /// `None` when no answer came.
    pub(super) status: Option<StatusCode>,
    pub(super) retry_after: Option<SystemTime>,
    /// The start of the body, bounded.
    pub(super) excerpt: String,
    /// The problem document of an error answer, if it had one.
    pub(super) problem: Option<Problem>,
}

impl Exchange {
    /// A request that got no answer (yet).
    fn unanswered(method: Method, url: String) -> Self {
        Self {
            method,
            url,
            status: None,
            retry_after: None,
            excerpt: String::new(),
            problem: None,
        }
    }

    /// The answer `parts`/`body` to `method url`.
    fn answered(method: Method, url: String, parts: &Parts, body: &[u8]) -> Self {
        let status = parts.status;
        let failed = !(status.is_success() || status.is_informational() || status.is_redirection());
        Self {
            retry_after: parts
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(parse_retry_after),
            problem: if failed {
                serde_json::from_slice::<Problem>(body)
                    .ok()
                    .filter(|p| p.r#type.is_some())
            } else {
                None
            },
            excerpt: excerpt(body),
            status: Some(status),
            method,
            url,
        }
    }

    /// The Retry-After of this answer, as the time it names.
    pub(super) fn retry_after_time(&self) -> Option<OffsetDateTime> {
        self.retry_after.map(OffsetDateTime::from)
    }
}

tokio::task_local! {
    /// The last exchange of the ACME call running in this task: one per order (or connect,
    /// or ARI look-up), so concurrent orders never see each other's Retry-After.
    static LAST: RefCell<Option<Exchange>>;
}

/// Runs an ACME call with its own exchange record.
pub(super) fn scoped<F: Future>(f: F) -> impl Future<Output = F::Output> {
    LAST.scope(RefCell::new(None), f)
}

pub(super) fn record(x: Option<Exchange>) {
    let _ = LAST.try_with(|c| *c.borrow_mut() = x);
}

pub(super) fn take_last() -> Option<Exchange> {
    LAST.try_with(|c| c.borrow_mut().take()).ok().flatten()
}

/// What the wrapper itself can go wrong with, beyond hyper's errors.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fault {
    #[error("no answer to {method} {url} within acme.request_timeout")]
    TimedOut {
        method: Method,
        url: String,
        after: Duration,
    },
    #[error("the answer to {method} {url} is larger than {limit} bytes")]
    TooLarge {
        method: Method,
        url: String,
        status: StatusCode,
        limit: usize,
    },
    #[error("reading the answer to {method} {url} failed: {message}")]
    Body {
        method: Method,
        url: String,
        message: String,
    },
}

/// instant-acme's HTTP client, wrapped to bound every exchange in time and size, to
/// remember each answer for error messages and Retry-After, and to log every request.
#[derive(Clone)]
pub(super) struct Http {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// Wraps `inner`; `timeout` bounds each exchange, headers and body together.
    pub(super) fn new(
        inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
        timeout: Duration,
    ) -> Self {
        Self { inner, timeout }
    }
}

pub(super) fn parse_retry_after(v: &http::HeaderValue) -> Option<SystemTime> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822).ok()?;
    Some(t.into())
}

pub(super) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(EXCERPT_CHARS * 4)])
        .chars()
        .take(EXCERPT_CHARS)
        .collect()
}

/// The cause chain of `e` on one line, without repeating what an outer error already says.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

type Answer = (Parts, Bytes);

/// Sends the request and reads the answer, at most [`MAX_RESPONSE_BYTES`] of it.
async fn exchange(
    fut: hyper_util::client::legacy::ResponseFuture,
    method: &Method,
    url: &str,
) -> Result<Answer, AcmeLibError> {
    let rsp = fut.await.map_err(|e| AcmeLibError::Other(Box::new(e)))?;
    let (parts, body) = rsp.into_parts();
    match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(b) => Ok((parts, b.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(AcmeLibError::Other(Box::new(Fault::TooLarge {
                method: method.clone(),
                url: url.to_string(),
                status: parts.status,
                limit: MAX_RESPONSE_BYTES,
            })))
        }
        Err(e) => Err(AcmeLibError::Other(Box::new(Fault::Body {
            method: method.clone(),
            url: url.to_string(),
            message: error_chain(e.as_ref()),
        }))),
    }
}

/// [`exchange`] within `after`, logging the outcome.
async fn bounded(
    fut: hyper_util::client::legacy::ResponseFuture,
    method: Method,
    url: String,
    after: Duration,
) -> Result<BytesResponse, AcmeLibError> {
    record(Some(Exchange::unanswered(method.clone(), url.clone())));
    let (parts, body) = match tokio::time::timeout(after, exchange(fut, &method, &url)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            debug!(%method, %url, "ACME request failed: {e}");
            return Err(e);
        }
        Err(_) => {
            debug!(%method, %url, "ACME request timed out");
            return Err(AcmeLibError::Other(Box::new(Fault::TimedOut {
                method,
                url,
                after,
            })));
        }
    };
    debug!(%method, %url, status = parts.status.as_u16(), "ACME request");
    record(Some(Exchange::answered(method, url, &parts, &body)));
    Ok(BytesResponse {
        parts,
        body: Box::new(body),
    })
}

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, AcmeLibError>> + Send>> {
        let method = req.method().clone();
        let url = req.uri().to_string();
        Box::pin(bounded(self.inner.request(req), method, url, self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_both_forms() {
        let v = http::HeaderValue::from_static("120");
        let t = parse_retry_after(&v).unwrap();
        let d = t.duration_since(SystemTime::now()).unwrap().as_secs();
        assert!((118..=120).contains(&d));
        let v = http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert!(parse_retry_after(&v).is_some());
    }
}
