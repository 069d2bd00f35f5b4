//! The executor API served in-process on a free loopback port, over a test's database.

use runlane_core::artifacts::ArtifactStore;
use runlane_core::db;

use runlane_core::model::Lane;
use runlane_core::settings::{ArtifactSettings, Settings};
use runlane_executor_api::auth::{new_token, token_hash};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The key test servers sign artifact URLs with, so tests can forge expired ones.
pub const TEST_SIGNING_KEY: &str = "runlane-test-signing-key";

#[derive(Debug)]
pub struct TestApi {
    pub addr: SocketAddr,
    pub base: String,
    stop: CancellationToken,
    /// The local artifact store, removed with the server.
    artifacts_dir: std::path::PathBuf,
}

impl TestApi {
    /// Serves the API over `pool`; `tune` adjusts the settings first.
    pub async fn start(pool: sqlx::PgPool, tune: impl FnOnce(&mut Settings)) -> TestApi {
        let mut settings = Settings::default();
        settings.api.listen = "127.0.0.1:0".into();
        settings.api.signing_key = Some(TEST_SIGNING_KEY.to_string().into());
        settings.artifacts.local_dir =
            std::env::temp_dir().join(format!("runlane-api-artifacts-{}", uuid::Uuid::new_v4().simple()));
        tune(&mut settings);
        let stop = CancellationToken::new();
        let state = runlane_executor_api::state(&settings, pool, stop.clone()).await.expect("api state");
        let (addr, _task) =
            runlane_executor_api::serve(state, &settings.api.listen, stop.clone()).await.expect("serve");
        TestApi { addr, base: format!("http://{addr}"), stop, artifacts_dir: settings.artifacts.local_dir.clone() }
    }

    /// The API's artifact store (a local directory).
    pub fn artifact_store(&self) -> ArtifactStore {
        let settings = ArtifactSettings { local_dir: self.artifacts_dir.clone(), ..Default::default() };
        ArtifactStore::from_settings(&settings).expect("artifact store")
    }

    /// Every file in the API's artifact store.
    pub fn stored_files(&self) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.artifacts_dir.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() { pending.push(path) } else { found.push(path) }
            }
        }
        found
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path` with a bearer token; the JSON answer.
    pub async fn get_json(&self, path: &str, token: &str) -> serde_json::Value {
        let resp = reqwest::Client::new().get(self.url(path)).bearer_auth(token).send().await.expect("request");
        resp.json().await.expect("a JSON answer")
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.artifacts_dir);
    }
}

/// Creates a token as the database owner would; returns (id, token).
pub async fn token(pool: &sqlx::PgPool, role: &str, lanes: Option<&[Lane]>) -> (uuid::Uuid, String) {
    let token = new_token();
    let id = db::create_token(pool, "test", role, lanes, None, &token_hash(&token)).await.expect("create token");
    (id, token)
}
