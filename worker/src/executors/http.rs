//! The `http` step: one request through reqwest, retried with backoff on connection errors, 5xx
//! and 429; the status line and headers go to stdout, the body becomes an artifact. Params are
//! percent-encoded inside a URL (a URL that is one whole `${{ params.x }}` is taken as given),
//! and verbatim in headers and bodies.

use super::{ArtifactData, Executor, ProducedArtifact, StepContext, StepOutcome};
use runlane_core::model::Stream;
use runlane_core::steps::HttpStep;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Bodies larger than this fail the step rather than fill the worker's memory.
const MAX_BODY_BYTES: usize = 64 << 20;

/// A host that drops SYNs would otherwise hold a try for the kernel's ~2 minutes; past this, the
/// try counts as a connection error and is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `http` steps. Holds one client so every http step of the worker shares its connection
/// pool and TLS set-up.
#[derive(Debug, Clone)]
pub struct HttpExecutor {
    /// Shared: one connection pool for every http step of the worker.
    client: reqwest::Client,
}

impl HttpExecutor {
    /// Builds the shared client (rustls). Fails only when TLS cannot be set up, which the worker
    /// reports at start rather than at its first http step.
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("runlane/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(HttpExecutor { client })
    }
}

/// A request ready to send (params substituted), reusable across tries.
struct Prepared {
    method: reqwest::Method,
    url: String,
    headers: reqwest::header::HeaderMap,
    body: Option<(Vec<u8>, Option<&'static str>)>,
}

impl Executor for HttpExecutor {
    type Spec = HttpStep;

    async fn run(&self, spec: &HttpStep, ctx: &StepContext) -> StepOutcome {
        let prepared = match prepare(spec, &ctx.params) {
            Ok(p) => p,
            Err(e) => {
                let _ = ctx.output.line(Stream::Stderr, &format!("runlane: {e}")).await;
                return StepOutcome::failed(None, e);
            }
        };
        tokio::select! {
            outcome = self.send_with_retries(spec, &prepared, ctx) => outcome,
            _ = ctx.cancel.cancelled() => StepOutcome::cancelled(),
            _ = tokio::time::sleep(ctx.timeout) => StepOutcome::timed_out(ctx.timeout),
        }
    }
}

impl HttpExecutor {
    /// Every try runs inside the step's deadline (the caller's `select!`), so a try never outlives it.
    async fn send_with_retries(&self, spec: &HttpStep, req: &Prepared, ctx: &StepContext) -> StepOutcome {
        let tries = spec.retries.saturating_add(1);
        let mut wait = Duration::from_millis(spec.retry_backoff_ms);
        for n in 1..=tries {
            let started = Instant::now();
            let why = match self.send(req).await {
                Ok(resp) if n < tries && retryable_status(resp.status()) => status_text(resp.status()),
                Ok(resp) => return record(spec, resp, started, ctx).await,
                Err(e) if n < tries && retryable_error(&e) => error_chain(&e),
                Err(e) => {
                    let why = format!("request failed on try {n}/{tries}: {}", error_chain(&e));
                    let _ = ctx.output.line(Stream::Stderr, &why).await;
                    return StepOutcome::failed(None, why);
                }
            };
            let note = format!("try {n}/{tries}: {why}; retrying in {} ms", wait.as_millis());
            let _ = ctx.output.line(Stream::Stderr, &note).await;
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
        StepOutcome::failed(None, "no try was made")
    }

    async fn send(&self, req: &Prepared) -> reqwest::Result<reqwest::Response> {
        let mut builder = self.client.request(req.method.clone(), &req.url).headers(req.headers.clone());
        if let Some((body, content_type)) = &req.body {
            if let Some(ct) = content_type
                && !req.headers.contains_key(reqwest::header::CONTENT_TYPE)
            {
                builder = builder.header(reqwest::header::CONTENT_TYPE, *ct);
            }
            builder = builder.body(body.clone());
        }
        builder.send().await
    }
}

/// A server that is overloaded or failing may answer the next try.
fn retryable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Connection refused or reset, a connect timeout, a connection closed mid-answer: worth another
/// try. A request that could not even be built is not.
fn retryable_error(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request()
}

/// An error with its causes: reqwest's own message alone rarely says what went wrong.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn prepare(spec: &HttpStep, params: &Value) -> Result<Prepared, String> {
    let method = reqwest::Method::from_bytes(spec.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("'{}' is not an HTTP method", spec.method))?;
    let spec = spec.render(params)?;
    reqwest::Url::parse(&spec.url).map_err(|e| format!("invalid URL '{}': {e}", spec.url))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &spec.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("'{k}' is not a valid header name"))?;
        let value = reqwest::header::HeaderValue::try_from(v.as_str())
            .map_err(|_| format!("the value of header '{k}' is not a valid header value"))?;
        headers.append(name, value);
    }
    let body = match spec.body {
        None => None,
        Some(Value::String(s)) => Some((s.into_bytes(), None)),
        Some(json) => Some((serde_json::to_vec(&json).map_err(|e| e.to_string())?, Some("application/json"))),
    };
    Ok(Prepared { method, url: spec.url, headers, body })
}

fn status_text(status: reqwest::StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Writes the status line and headers, keeps the body as an artifact, judges the status.
async fn record(spec: &HttpStep, mut resp: reqwest::Response, started: Instant, ctx: &StepContext) -> StepOutcome {
    let status = resp.status();
    let out = &ctx.output;
    let _ =
        out.line(Stream::Stdout, &format!("HTTP {} ({} ms)", status_text(status), started.elapsed().as_millis())).await;
    for (name, value) in resp.headers() {
        let _ = out.line(Stream::Stdout, &format!("< {name}: {}", String::from_utf8_lossy(value.as_bytes()))).await;
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let body = match read_body(&mut resp).await {
        Ok(body) => body,
        Err(why) => {
            let _ = out.line(Stream::Stderr, &format!("runlane: {why}")).await;
            return StepOutcome::failed(Some(i32::from(status.as_u16())), why);
        }
    };
    let _ = out.line(Stream::Stdout, &format!("body: {} bytes saved as artifact '{}'", body.len(), spec.save_as)).await;
    let code = Some(i32::from(status.as_u16()));
    let ok =
        if spec.expect_status.is_empty() { status.is_success() } else { spec.expect_status.contains(&status.as_u16()) };
    let mut outcome = if ok {
        StepOutcome::succeeded(code)
    } else {
        let expected = if spec.expect_status.is_empty() {
            "any 2xx".to_string()
        } else {
            spec.expect_status.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        };
        StepOutcome::failed(code, format!("unexpected status {} (expected {expected})", status_text(status)))
    };
    outcome.artifacts.push(ProducedArtifact {
        name: spec.save_as.clone(),
        content_type,
        data: ArtifactData::Bytes(body),
    });
    outcome
}

/// The whole body, refused past [`MAX_BODY_BYTES`] (before reading it when the length is announced).
async fn read_body(resp: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let too_large = || format!("response body over {MAX_BODY_BYTES} bytes");
    if resp.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the response body: {}", error_chain(&e)))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(v: Value) -> HttpStep {
        serde_json::from_value(v).expect("http step")
    }

    #[test]
    fn urls_encode_params_unless_the_whole_url_is_one() {
        let params = json!({"q": "a b", "url": "http://127.0.0.1:9/x?y=1"});
        let p = prepare(&step(json!({"url": "http://h/search?q=${{ params.q }}"})), &params).expect("prepared");
        assert_eq!(p.url, "http://h/search?q=a%20b");
        let p = prepare(&step(json!({"url": "${{ params.url }}"})), &params).expect("prepared");
        assert_eq!(p.url, "http://127.0.0.1:9/x?y=1");
        let p = prepare(&step(json!({"url": "${{ params.url }}&q=${{ params.q }}"})), &params).expect("prepared");
        assert_eq!(p.url, "http://127.0.0.1:9/x?y=1&q=a%20b");
    }

    #[test]
    fn json_bodies_are_filled_and_bad_methods_refused() {
        let params = json!({"name": "api"});
        let p = prepare(
            &step(json!({"url": "http://h/", "method": "post", "body": {"svc": "${{ params.name }}", "n": 1}})),
            &params,
        )
        .expect("prepared");
        assert_eq!(p.method, reqwest::Method::POST);
        let (body, ct) = p.body.expect("body");
        assert_eq!(serde_json::from_slice::<Value>(&body).expect("json"), json!({"svc": "api", "n": 1}));
        assert_eq!(ct, Some("application/json"));
        assert!(prepare(&step(json!({"url": "http://h/", "method": "GE T"})), &params).is_err());
        assert!(prepare(&step(json!({"url": "not a url"})), &params).is_err());
        let bad_header = prepare(&step(json!({"url": "http://h/", "headers": {"bad name": "x"}})), &params);
        assert!(bad_header.err().is_some_and(|e| e.contains("'bad name'")));
        let bad_value =
            prepare(&step(json!({"url": "http://h/", "headers": {"x-a": "${{ params.nl }}"}})), &json!({"nl": "a\nb"}));
        assert!(bad_value.err().is_some_and(|e| e.contains("'x-a'")));
    }
}
