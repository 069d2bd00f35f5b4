//! A token-bucket rate limit per caller (the bearer token, or the peer without one). Over the
//! limit: 429 with Retry-After.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
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

pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match request.headers().get(axum::http::header::AUTHORIZATION) {
        Some(auth) => auth.as_bytes().hash(&mut h),
        None => request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .hash(&mut h),
    }
    match state.limiter.take(h.finish()) {
        Ok(()) => next.run(request).await,
        Err(secs) => {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down");
            e.retry_after = Some(secs);
            e.into_response()
        }
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
