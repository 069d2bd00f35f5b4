//! Storing what steps produce. Small artifacts go inline into PostgreSQL; larger ones into the
//! object store (a local directory by default; S3 or DigitalOcean Spaces by config), and the
//! database keeps their key. Either way the record has the size, sha256 and content type.

use crate::db::{self, NewArtifact};
use crate::model::{ArtifactId, Lease};
use crate::settings::ArtifactSettings;
use object_store::path::Path as StorePath;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;

/// The largest artifact accepted (it is held in memory while stored).
pub const MAX_ARTIFACT_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact '{name}': {source}")]
    Read { name: String, source: std::io::Error },
    #[error("artifact '{name}' is {size} bytes, over the {MAX_ARTIFACT_BYTES}-byte limit")]
    TooLarge { name: String, size: u64 },
    #[error("artifact '{name}': object store: {source}")]
    Store { name: String, source: object_store::Error },
    #[error("artifact '{name}': {source}")]
    Queue { name: String, source: crate::Error },
}

impl ArtifactError {
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, ArtifactError::Queue { source: crate::Error::LeaseLost(_), .. })
    }
}

/// One artifact's bytes and what to record about them.
#[derive(Debug, Clone)]
pub struct ArtifactBytes<'a> {
    /// Chosen by the writer before the first try, so a retried upload is recognised as the same one.
    pub id: ArtifactId,
    pub step: Option<i32>,
    pub name: &'a str,
    pub content_type: &'a str,
    pub bytes: Vec<u8>,
}

/// Where artifacts go.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    inline_max_bytes: u64,
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (from an `s3://bucket/prefix` URL).
    prefix: String,
    /// S3 / Spaces sign their own download URLs; the local store has none (the API signs those).
    signer: Option<Arc<dyn Signer>>,
}

impl ArtifactStore {
    pub fn from_settings(s: &ArtifactSettings) -> Result<Self, String> {
        let (store, prefix, signer): (Arc<dyn ObjectStore>, String, Option<Arc<dyn Signer>>) = match &s.s3_url {
            Some(url) => {
                let rest = url
                    .strip_prefix("s3://")
                    .ok_or_else(|| format!("artifacts.s3_url must be s3://bucket[/prefix], got {url}"))?;
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = &s.s3_endpoint {
                    b = b.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &s.s3_region {
                    b = b.with_region(region);
                }
                if let Some(key) = &s.s3_access_key_id {
                    b = b.with_access_key_id(key);
                }
                if let Some(secret) = &s.s3_secret_access_key {
                    b = b.with_secret_access_key(secret.expose_secret());
                }
                let s3 = Arc::new(b.build().map_err(|e| format!("artifact store: {e}"))?);
                (s3.clone(), prefix.trim_matches('/').to_string(), Some(s3))
            }
            None => {
                std::fs::create_dir_all(&s.local_dir)
                    .map_err(|e| format!("artifacts.local_dir {}: {e}", s.local_dir.display()))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&s.local_dir)
                    .map_err(|e| format!("artifacts.local_dir {}: {e}", s.local_dir.display()))?;
                (Arc::new(local), String::new(), None)
            }
        };
        Ok(ArtifactStore { inline_max_bytes: s.inline_max_bytes, store, prefix, signer })
    }

    /// The object store (readers fetch large artifacts by their key).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Stores one artifact for the lease holder's run: the lease and the name are checked before
    /// a byte is stored; large bytes go under a key no other upload can have (run, attempt, step and
    /// the artifact's own id), small ones inline; then the record. A refused record takes its stored
    /// bytes with it. Safe to repeat after a lost reply (same id: same key, same record).
    pub async fn save(
        &self,
        pool: &PgPool,
        lease: Lease,
        artifact: &ArtifactBytes<'_>,
    ) -> Result<ArtifactId, ArtifactError> {
        let ArtifactBytes { id, step, name, content_type, bytes } = artifact;
        let queue = |e: crate::Error| ArtifactError::Queue { name: name.to_string(), source: e };
        let size = bytes.len() as u64;
        if size > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge { name: name.to_string(), size });
        }
        let attempt = db::check_artifact_upload(pool, lease, name).await.map_err(queue)?;
        let sha256 = hex(&Sha256::digest(bytes));
        let key = (size > self.inline_max_bytes).then(|| self.key_for(lease, attempt, *step, *id, name));
        if let Some(key) = &key {
            self.store
                .put(&StorePath::from(key.as_str()), PutPayload::from(bytes.clone()))
                .await
                .map_err(|e| ArtifactError::Store { name: name.to_string(), source: e })?;
        }
        let record = NewArtifact {
            id: *id,
            step: *step,
            name,
            content_type,
            size_bytes: size as i64,
            sha256: &sha256,
            inline_data: key.is_none().then_some(bytes.as_slice()),
            store_key: key.as_deref(),
        };
        match db::put_artifact(pool, lease, &record).await {
            Ok(id) => Ok(id),
            Err(e) => {
                // Refused for good: nothing refers to the bytes. (After a connection error the record
                // may have committed; the bytes stay, and a retry finds them under the same key.)
                if let Some(key) = &key
                    && !e.is_retryable()
                {
                    let _ = self.delete(key).await;
                }
                Err(queue(e))
            }
        }
    }

    /// Deletes stored bytes; deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the stored bytes of pruned artifacts (up to `limit`); returns how many keys were done.
    pub async fn delete_doomed(&self, pool: &PgPool, limit: i32) -> Result<usize, crate::Error> {
        let keys = db::doomed_objects(pool, limit).await?;
        let mut done = Vec::with_capacity(keys.len());
        for key in keys {
            match self.delete(&key).await {
                Ok(()) => done.push(key),
                Err(e) => tracing::warn!(%key, error = %e, "could not delete a pruned artifact's bytes; will retry"),
            }
        }
        if !done.is_empty() {
            db::forget_objects(pool, &done).await?;
        }
        Ok(done.len())
    }

    /// A download URL the store signs itself (S3 / Spaces), valid for `ttl`; None for the local store.
    pub async fn presigned_get(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> Option<Result<String, object_store::Error>> {
        let signer = self.signer.as_ref()?;
        Some(signer.signed_url(Method::GET, &StorePath::from(key), ttl).await.map(|u| u.to_string()))
    }

    /// The bytes of a stored (large) artifact.
    pub async fn fetch(&self, key: &str) -> Result<Vec<u8>, object_store::Error> {
        Ok(self.store.get(&StorePath::from(key)).await?.bytes().await?.to_vec())
    }

    /// `runs/{run}/{attempt}/{step}/{artifact id}/{name}`: two uploads never share a key.
    fn key_for(&self, lease: Lease, attempt: i32, step: Option<i32>, id: ArtifactId, name: &str) -> String {
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-/".contains(c) { c } else { '_' }).collect();
        let step = step.map_or_else(|| "run".to_string(), |s| s.to_string());
        let key = format!("runs/{}/{attempt}/{step}/{id}/{}", lease.run_id, safe.trim_start_matches('/'));
        if self.prefix.is_empty() { key } else { format!("{}/{key}", self.prefix) }
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
