//! The `http` step: one request through reqwest, retried with backoff on connection errors, 5xx
//! and 429; the status line and headers go to stdout, the body becomes an artifact. Params are
//! percent-encoded inside a URL (a URL that is one whole `${{ params.x }}` is taken as given),
//! and verbatim in headers and bodies.

use super::{ArtifactData, Executor, ProducedArtifact, StepContext, StepOutcome};
use runlane_core::model::Stream;
use runlane_core::steps::{HttpStep, Quoting, substitute};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Bodies larger than this fail the step rather than fill the worker's memory.
const MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct HttpExecutor {
    /// Shared: one connection pool for every http step of the worker.
    client: reqwest::Client,
}

impl HttpExecutor {
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("runlane/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(HttpExecutor { client })
    }
}

/// A request ready to send (params substituted), reusable across tries.
struct Prepared {
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
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
    async fn send_with_retries(&self, spec: &HttpStep, req: &Prepared, ctx: &StepContext) -> StepOutcome {
        let tries = spec.retries + 1;
        let mut wait = Duration::from_millis(spec.retry_backoff_ms);
        for n in 1..=tries {
            let started = Instant::now();
            let result = self.send(req).await;
            let retry_reason = match &result {
                Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                    Some(status_text(resp.status()))
                }
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            match (result, retry_reason) {
                (Ok(resp), None) => return record(spec, resp, started, ctx).await,
                (result, Some(why)) if n < tries => {
                    let _ = ctx
                        .output
                        .line(Stream::Stderr, &format!("try {n}/{tries}: {why}; retrying in {} ms", wait.as_millis()))
                        .await;
                    drop(result);
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                (Ok(resp), Some(_)) => return record(spec, resp, started, ctx).await,
                (Err(e), _) => {
                    let why = format!("request failed after {tries} tries: {e}");
                    let _ = ctx.output.line(Stream::Stderr, &why).await;
                    return StepOutcome::failed(None, why);
                }
            }
        }
        StepOutcome::failed(None, "no try was made")
    }

    async fn send(&self, req: &Prepared) -> reqwest::Result<reqwest::Response> {
        let mut builder = self.client.request(req.method.clone(), &req.url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some((body, content_type)) = &req.body {
            if let Some(ct) = content_type
                && !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                builder = builder.header("content-type", *ct);
            }
            builder = builder.body(body.clone());
        }
        builder.send().await
    }
}

fn prepare(spec: &HttpStep, params: &Value) -> Result<Prepared, String> {
    let method = reqwest::Method::from_bytes(spec.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("'{}' is not an HTTP method", spec.method))?;
    let url = substitute_url(&spec.url, params)?;
    reqwest::Url::parse(&url).map_err(|e| format!("invalid URL '{url}': {e}"))?;
    let headers = spec
        .headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), substitute(v, params, Quoting::Verbatim)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let body = match &spec.body {
        None => None,
        Some(Value::String(s)) => Some((substitute(s, params, Quoting::Verbatim)?.into_bytes(), None)),
        Some(json) => {
            let filled = fill_json(json, params)?;
            Some((serde_json::to_vec(&filled).map_err(|e| e.to_string())?, Some("application/json")))
        }
    };
    Ok(Prepared { method, url, headers, body })
}

/// A placeholder that opens the URL supplies its scheme and host (`${{ params.base }}/health`) and
/// is taken as given; every other one is percent-encoded.
fn substitute_url(url: &str, params: &Value) -> Result<String, String> {
    let url = url.trim();
    if url.starts_with("${{")
        && let Some(end) = url.find("}}")
    {
        let (base, rest) = url.split_at(end + 2);
        return Ok(substitute(base, params, Quoting::Verbatim)? + &substitute(rest, params, Quoting::Url)?);
    }
    substitute(url, params, Quoting::Url)
}

/// Substitutes params inside every string of a JSON body.
fn fill_json(v: &Value, params: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(s, params, Quoting::Verbatim)?),
        Value::Array(items) => Value::Array(items.iter().map(|i| fill_json(i, params)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), fill_json(v, params)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn status_text(status: reqwest::StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
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
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return StepOutcome::failed(
                        Some(i32::from(status.as_u16())),
                        format!("response body over {MAX_BODY_BYTES} bytes"),
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return StepOutcome::failed(
                    Some(i32::from(status.as_u16())),
                    format!("reading the response body: {e}"),
                );
            }
        }
    }
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
    }
}
