//! Artifacts: a run's list with signed, expiring download URLs — presigned by S3 / Spaces for
//! artifacts stored there, HMAC-signed by this API otherwise — and the download of the latter (which
//! needs the signature, not a bearer token, so a URL can be handed to a browser or curl).

use crate::auth::Reader;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use runlane_core::db;
use runlane_core::model::{ArtifactId, RunId};
use runlane_core::wire::{ArtifactLink, ArtifactList, SignedUrlQuery};

pub async fn list(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
) -> Result<Json<ArtifactList>, ApiError> {
    db::get_run(&st.pool, run).await?;
    let expires = chrono::Utc::now().timestamp() + st.settings.url_ttl_s as i64;
    let ttl = std::time::Duration::from_secs(st.settings.url_ttl_s);
    let mut items = Vec::new();
    for a in db::list_artifacts(&st.pool, run).await? {
        // Large artifacts in S3 / Spaces: a URL the store signs. The rest: one this API signs.
        let presigned = match &a.store_key {
            Some(key) => st.artifacts.presigned_get(key, ttl).await.transpose().map_err(|e| {
                tracing::error!(artifact = %a.id, error = %e, "could not presign an artifact URL");
                ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            })?,
            None => None,
        };
        let url = presigned.unwrap_or_else(|| {
            format!("/v1/artifacts/{}?expires={expires}&signature={}", a.id, st.signer.sign(a.id.0, expires))
        });
        items.push(ArtifactLink {
            id: a.id,
            attempt: a.attempt,
            step: a.step,
            name: a.name,
            content_type: a.content_type,
            size_bytes: a.size_bytes,
            sha256: a.sha256,
            created_at: a.created_at,
            url,
            expires_at: expires,
        });
    }
    Ok(Json(ArtifactList { artifacts: items }))
}

pub async fn download(
    State(st): State<AppState>,
    Path(id): Path<ArtifactId>,
    Query(q): Query<SignedUrlQuery>,
) -> Result<Response, ApiError> {
    let now = chrono::Utc::now().timestamp();
    if !st.signer.verify(id.0, q.expires, &q.signature, now) {
        return Err(ApiError::forbidden("the link is invalid or has expired"));
    }
    let a = db::get_artifact(&st.pool, id).await?;
    let bytes = match (a.inline_data, a.store_key) {
        (Some(b), _) => b,
        (None, Some(key)) => st.artifacts.fetch(&key).await.map_err(|e| {
            tracing::error!(artifact = %id, error = %e, "artifact missing from the object store");
            ApiError::not_found("the artifact's bytes are missing from the store")
        })?,
        (None, None) => return Err(ApiError::not_found("the artifact has no bytes")),
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let file = a.name.rsplit('/').next().unwrap_or("artifact").replace(['"', '\\'], "_");
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&a.sha256) {
        headers.insert("x-sha256", v);
    }
    Ok(response)
}
