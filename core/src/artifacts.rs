//! Storing what steps produce. Small artifacts go inline into PostgreSQL; larger ones into the
//! object store (a local directory by default; S3 or DigitalOcean Spaces by config), and the
//! database keeps their key. Either way the record has the size, sha256 and content type.

use crate::broker::Broker;
use crate::db::NewArtifact;
use crate::model::{ArtifactId, Lease};
use crate::settings::ArtifactSettings;
use object_store::path::Path as StorePath;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
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

    /// Stores one artifact's bytes (inline or in the store, by size) and records it for the lease
    /// holder's run.
    pub async fn save<B: Broker>(
        &self,
        broker: &B,
        lease: Lease,
        attempt: i32,
        artifact: ArtifactBytes<'_>,
    ) -> Result<ArtifactId, ArtifactError> {
        let ArtifactBytes { step, name, content_type, bytes } = artifact;
        let size = bytes.len() as u64;
        if size > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge { name: name.to_string(), size });
        }
        let sha256 = hex(&Sha256::digest(&bytes));
        let key = (size > self.inline_max_bytes).then(|| self.key_for(lease, attempt, name));
        if let Some(key) = &key {
            self.store
                .put(&StorePath::from(key.as_str()), PutPayload::from(bytes.clone()))
                .await
                .map_err(|e| ArtifactError::Store { name: name.to_string(), source: e })?;
        }
        let record = NewArtifact {
            step,
            name,
            content_type,
            size_bytes: size as i64,
            sha256: &sha256,
            inline_data: key.is_none().then_some(bytes.as_slice()),
            store_key: key.as_deref(),
        };
        broker
            .put_artifact(lease, &record)
            .await
            .map_err(|e| ArtifactError::Queue { name: name.to_string(), source: e })
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

    fn key_for(&self, lease: Lease, attempt: i32, name: &str) -> String {
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-/".contains(c) { c } else { '_' }).collect();
        let key = format!("runs/{}/{attempt}/{}", lease.run_id, safe.trim_start_matches('/'));
        if self.prefix.is_empty() { key } else { format!("{}/{key}", self.prefix) }
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
