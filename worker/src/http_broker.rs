//! The `Broker` over the executor API: a worker holding only a worker token (no database
//! credentials). Every call maps to one route; API errors map back to the queue's errors
//! (`409 lease_lost` → `LeaseLost`, 5xx and connection trouble → `Unavailable`).

use reqwest::{Method, StatusCode};
use runlane_core::artifacts::{ArtifactBytes, ArtifactError};
use runlane_core::broker::Broker;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::{OpOutcome, RunOps};
use runlane_core::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct HttpBroker {
    base: String,
    /// The worker token; sent as a bearer token, never logged.
    token: String,
    client: reqwest::Client,
}

impl HttpBroker {
    pub fn new(base: &str, token: &str) -> std::result::Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("runlane-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(HttpBroker { base: base.trim_end_matches('/').to_string(), token: token.to_string(), client })
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).map_err(|e| Error::Unavailable(Box::new(e)))?);
        }
        let resp = req.send().await.map_err(|e| Error::Unavailable(Box::new(e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Unavailable(Box::new(e)))?;
        if status.is_success() {
            let text = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            return serde_json::from_slice(text).map_err(|e| Error::Unavailable(Box::new(e)));
        }
        Err(api_error(status, &bytes))
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T> {
        self.call(Method::POST, path, Some(&body)).await
    }
}

/// The API's error shape back into the queue's errors.
fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
    let message = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}"));
    match (status, code.as_str()) {
        (_, "lease_lost") => Error::LeaseLost(message),
        (_, "worker_gone") => Error::WorkerGone(message),
        (StatusCode::NOT_FOUND, _) => Error::NotFound(message),
        (StatusCode::CONFLICT, _) => Error::Conflict(message),
        (StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST, _) => {
            let problems =
                serde_json::from_value(v["error"]["details"].clone()).unwrap_or_else(|_| vec![message.clone()]);
            Error::Invalid { message, problems }
        }
        (s, _) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(message.into()),
        _ => Error::Schema(format!("the executor API refused the call ({status}): {message}")),
    }
}

fn lane_names(lanes: &[Lane]) -> Vec<&'static str> {
    lanes.iter().map(|l| l.as_str()).collect()
}

impl Broker for HttpBroker {
    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<WorkerId> {
        let v: Value = self
            .post(
                "/v1/workers",
                json!({"host": reg.host, "lanes": lane_names(&reg.lanes), "slots": reg.slots,
                "version": reg.version, "capabilities": reg.capabilities, "lease_ms": reg.lease_ms,
                "kill_grace_ms": reg.kill_grace_ms}),
            )
            .await?;
        serde_json::from_value(v["worker_id"].clone()).map_err(|e| Error::Unavailable(Box::new(e)))
    }

    async fn worker_heartbeat(&self, worker: WorkerId, state: WorkerState, update: &WorkerUpdate) -> Result<()> {
        let body = json!({"state": state, "lanes": update.lanes.as_deref().map(lane_names), "slots": update.slots,
                          "capabilities": update.capabilities});
        self.post::<Value>(&format!("/v1/workers/{worker}/heartbeat"), strip_nulls(body)).await.map(|_| ())
    }

    async fn claim_runs(
        &self,
        worker: WorkerId,
        lanes: &[Lane],
        limit: u32,
        session: Option<SessionId>,
    ) -> Result<Vec<ClaimedRun>> {
        let body = strip_nulls(
            json!({"worker_id": worker, "lanes": lane_names(lanes), "limit": limit, "session_id": session}),
        );
        let v: Value = self.post("/v1/claims", body).await?;
        serde_json::from_value(v["runs"].clone()).map_err(|e| Error::Unavailable(Box::new(e)))
    }

    async fn heartbeat_run(&self, lease: Lease) -> Result<HeartbeatReply> {
        let v: Value =
            self.post(&format!("/v1/runs/{}/heartbeat", lease.run_id), json!({"lease": lease.token})).await?;
        Ok(HeartbeatReply { cancel_requested: v["cancel_requested"].as_bool().unwrap_or(false) })
    }

    /// The whole batch is one request; the API answers every item.
    async fn apply_ops(&self, items: &[RunOps]) -> Result<Vec<OpOutcome>> {
        let v: Value = self.post("/v1/ops", json!({"items": items})).await?;
        serde_json::from_value(v["outcomes"].clone()).map_err(|e| Error::Unavailable(Box::new(e)))
    }

    /// The bytes go to the API, which stores them where it keeps artifacts (inline or its object store).
    async fn put_artifact(&self, lease: Lease, a: &ArtifactBytes<'_>) -> Result<ArtifactId, ArtifactError> {
        let queue = |e: Error| ArtifactError::Queue { name: a.name.to_string(), source: e };
        let mut url = reqwest::Url::parse(&format!("{}/v1/runs/{}/artifacts/", self.base, lease.run_id))
            .map_err(|e| queue(Error::Schema(e.to_string())))?;
        url.path_segments_mut().map_err(|_| queue(Error::Schema("bad base URL".into())))?.pop_if_empty().push(a.name);
        url.query_pairs_mut()
            .append_pair("lease", &lease.token.to_string())
            .append_pair("id", &a.id.to_string())
            .append_pair("content_type", a.content_type);
        if let Some(step) = a.step {
            url.query_pairs_mut().append_pair("step", &step.to_string());
        }
        let resp = self
            .client
            .put(url)
            .bearer_auth(&self.token)
            .body(a.bytes.clone())
            .send()
            .await
            .map_err(|e| queue(Error::Unavailable(Box::new(e))))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| queue(Error::Unavailable(Box::new(e))))?;
        if !status.is_success() {
            return Err(queue(api_error(status, &body)));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| queue(Error::Unavailable(Box::new(e))))?;
        serde_json::from_value(v["artifact_id"].clone()).map_err(|e| queue(Error::Unavailable(Box::new(e))))
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        let v: Value = self.call(Method::GET, "/v1/lanes", None::<&Value>).await?;
        serde_json::from_value(v["lanes"].clone()).map_err(|e| Error::Unavailable(Box::new(e)))
    }

    async fn fleet_id(&self) -> Result<uuid::Uuid> {
        let v: Value = self.call(Method::GET, "/v1/fleet", None::<&Value>).await?;
        serde_json::from_value(v["fleet_id"].clone()).map_err(|e| Error::Unavailable(Box::new(e)))
    }

    async fn running_attempts(&self, runs: &[RunId]) -> Result<Vec<(RunId, i32)>> {
        let v: Value = self.post("/v1/running-attempts", json!({"run_ids": runs})).await?;
        let list = v["running"].as_array().cloned().unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|r| Some((r["run_id"].as_str()?.parse().ok()?, i32::try_from(r["attempt"].as_i64()?).ok()?)))
            .collect())
    }

    async fn subscribe(&self, lanes: &[Lane]) -> Result<mpsc::Receiver<Notice>> {
        let (tx, rx) = mpsc::channel(1024);
        let url = format!("{}/v1/notices?lanes={}", self.base, lane_names(lanes).join(","));
        tokio::spawn(follow_notices(self.client.clone(), url, self.token.clone(), tx));
        Ok(rx)
    }
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    v
}

/// Reads the notices SSE stream, reconnecting after a failure (then `Resumed`: poll now).
async fn follow_notices(client: reqwest::Client, url: String, token: String, tx: mpsc::Sender<Notice>) {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    loop {
        if let Ok(resp) = client.get(&url).bearer_auth(&token).send().await
            && resp.status().is_success()
        {
            if tx.send(Notice::Resumed).await.is_err() {
                return;
            }
            let mut events = resp.bytes_stream().eventsource();
            while let Some(Ok(e)) = events.next().await {
                let notice = match e.event.as_str() {
                    "lane" => e.data.trim().parse().ok().map(Notice::LaneReady),
                    "cancel" => e.data.trim().parse().ok().map(Notice::Cancel),
                    "resumed" => Some(Notice::Resumed),
                    _ => None,
                };
                if let Some(n) = notice
                    && tx.send(n).await.is_err()
                {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
