//! Token-bucket rate limits, two of them: per client address on every request, before anything
//! else (so a caller with made-up tokens costs no database lookup once over it), and per token once
//! authenticated. Over a limit: 429 with Retry-After.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    per_s: f64,
    burst: f64,
    /// caller key → (tokens left, last refill). A std Mutex: held for a few instructions, never
    /// across an await.
    buckets: Mutex<HashMap<u64, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_s: u32, burst: u32) -> Self {
        RateLimiter { per_s: f64::from(per_s.max(1)), burst: f64::from(burst.max(1)), buckets: Mutex::default() }
    }

    /// Takes one token for `key`; `Err(seconds)` until the next one is there.
    pub fn take(&self, key: u64) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_s).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_s).ceil().max(1.0) as u64)
        }
    }
}

/// The API's two limits.
#[derive(Debug)]
pub struct Limits {
    pub by_address: RateLimiter,
    pub by_token: RateLimiter,
}

impl Limits {
    /// The per-token limit, once the token is known.
    pub fn take_for_token(&self, token_id: uuid::Uuid) -> Result<(), ApiError> {
        self.by_token.take(key(&token_id)).map_err(too_many)
    }

    pub fn new(s: &runlane_core::settings::ApiSettings) -> Self {
        Limits {
            by_address: RateLimiter::new(s.address_rate_per_s, s.address_rate_burst),
            by_token: RateLimiter::new(s.rate_per_s, s.rate_burst),
        }
    }
}

/// 429 with Retry-After.
pub fn too_many(retry_after_s: u64) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down");
    e.retry_after = Some(retry_after_s);
    e
}

fn key(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The per-address limit, before authentication.
pub async fn rate_limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let address = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    match limits.by_address.take(key(&address)) {
        Ok(()) => next.run(request).await,
        Err(secs) => too_many(secs).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_with_a_wait() {
        let l = RateLimiter::new(1, 3);
        assert!(l.take(7).is_ok() && l.take(7).is_ok() && l.take(7).is_ok());
        assert_eq!(l.take(7), Err(1));
        assert!(l.take(8).is_ok(), "buckets are per caller");
    }
}
