//! Bearer tokens. A token is shown once when created; the database keeps only its sha256. Each
//! token has a role (worker, operator, viewer) and optionally a list of lanes it is limited to.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use runlane_core::model::Lane;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Operator,
    Viewer,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: uuid::Uuid,
    pub role: Role,
    /// None: every lane.
    pub lanes: Option<Vec<Lane>>,
}

impl Caller {
    /// Viewer and operator read; workers do not read the queue.
    pub fn may_read(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Viewer | Role::Operator => Ok(()),
            Role::Worker => Err(ApiError::forbidden("worker tokens cannot read runs")),
        }
    }

    pub fn must_be(&self, role: Role) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs a {} token", role_name(role))))
        }
    }

    /// Whether the token's lanes cover `lane`.
    pub fn may_use_lane(&self, lane: Lane) -> Result<(), ApiError> {
        match &self.lanes {
            Some(lanes) if !lanes.contains(&lane) => {
                Err(ApiError::forbidden(format!("this token is limited to lanes {}", lane_list(lanes))))
            }
            _ => Ok(()),
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Worker => "worker",
        Role::Operator => "operator",
        Role::Viewer => "viewer",
    }
}

fn lane_list(lanes: &[Lane]) -> String {
    lanes.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", ")
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new random token: `rlt_` and 64 hex digits (two v4 uuids' worth of randomness).
pub fn new_token() -> String {
    format!("rlt_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be: Bearer <token>"))?;
        let Some(found) = runlane_core::db::authenticate(&state.pool, &token_hash(token)).await? else {
            return Err(ApiError::unauthorized("unknown token"));
        };
        if found.state != "ok" {
            return Err(ApiError::unauthorized(format!("this token is {}", found.state)));
        }
        let (token_id, lanes) = (found.id, found.lanes);
        let role = match found.role.as_str() {
            "worker" => Role::Worker,
            "operator" => Role::Operator,
            _ => Role::Viewer,
        };
        let lanes = lanes.map(|ls| ls.iter().filter_map(|l| l.parse().ok()).collect());
        state.limiter.take_for_token(token_id)?;
        Ok(Caller { token_id, role, lanes })
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Caller);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                let caller = Caller::from_request_parts(parts, state).await?;
                let check: fn(&Caller) -> Result<(), ApiError> = $check;
                check(&caller)?;
                Ok($name(caller))
            }
        }
    };
}

role_extractor!(
    /// An operator token (checked before the body is read, so a wrong role is 403, not 422).
    Operator,
    |c| c.must_be(Role::Operator)
);
role_extractor!(
    /// A worker token.
    Worker,
    |c| c.must_be(Role::Worker)
);
role_extractor!(
    /// A token that may read runs: viewer or operator.
    Reader,
    |c| c.may_read()
);
