//! The `Broker` over the executor API: a worker holding only a worker token (no database
//! credentials). Every call maps to one route, with the route's own structs (`runlane_core::wire`)
//! as the API's handlers use them; API errors map back to the queue's errors (`409 lease_lost` →
//! `LeaseLost`, 5xx and connection trouble → `Unavailable`).

use reqwest::{Method, StatusCode};
use runlane_core::artifacts::{ArtifactBytes, ArtifactError};
use runlane_core::broker::Broker;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_core::ops::{OpOutcome, RunOps};
use runlane_core::wire::*;
use runlane_core::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
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

    /// One call; the answer read as `T` (`()` for a 204).
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

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }
}

/// The API's error shape back into the queue's errors (a body that is not that shape, say from a
/// proxy, is judged by its status alone).
fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let detail = serde_json::from_slice::<ErrorReply>(body).map(|reply| reply.error).unwrap_or(ErrorDetail {
        code: String::new(),
        message: format!("HTTP {status}"),
        details: serde_json::Value::Null,
    });
    let message = detail.message;
    match (status, detail.code.as_str()) {
        (_, "lease_lost") => Error::LeaseLost(message),
        (_, "worker_gone") => Error::WorkerGone(message),
        (StatusCode::NOT_FOUND, _) => Error::NotFound(message),
        (StatusCode::CONFLICT, _) => Error::Conflict(message),
        (StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST, _) => {
            let problems = serde_json::from_value(detail.details).unwrap_or_else(|_| vec![message.clone()]);
            Error::Invalid { message, problems }
        }
        (s, _) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(message.into()),
        _ => Error::Schema(format!("the executor API refused the call ({status}): {message}")),
    }
}

impl Broker for HttpBroker {
    async fn register_worker(&self, reg: &WorkerRegistration) -> Result<WorkerId> {
        let registered: WorkerRegistered = self.post("/v1/workers", reg).await?;
        Ok(registered.worker_id)
    }

    async fn worker_heartbeat(&self, worker: WorkerId, state: WorkerState, update: &WorkerUpdate) -> Result<()> {
        let beat = WorkerHeartbeat { state, update: update.clone() };
        self.post(&format!("/v1/workers/{worker}/heartbeat"), &beat).await
    }

    async fn claim_runs(
        &self,
        worker: WorkerId,
        lanes: &[Lane],
        limit: u32,
        session: Option<SessionId>,
    ) -> Result<Vec<ClaimedRun>> {
        let claim = ClaimRequest { worker_id: worker, lanes: lanes.to_vec(), limit, session_id: session };
        let claimed: ClaimedRuns = self.post("/v1/claims", &claim).await?;
        Ok(claimed.runs)
    }

    async fn heartbeat_run(&self, lease: Lease) -> Result<HeartbeatReply> {
        self.post(&format!("/v1/runs/{}/heartbeat", lease.run_id), &RunHeartbeat { lease: lease.token }).await
    }

    /// The whole batch is one request; the API answers every item.
    async fn apply_ops(&self, items: &[RunOps]) -> Result<Vec<OpOutcome>> {
        let answers: OpsAnswers = self.post("/v1/ops", &OpsBatch { items: Cow::Borrowed(items) }).await?;
        Ok(answers.outcomes)
    }

    /// The bytes go to the API, which stores them where it keeps artifacts (inline or its object store).
    async fn put_artifact(&self, lease: Lease, a: &ArtifactBytes<'_>) -> Result<ArtifactId, ArtifactError> {
        let queue = |e: Error| ArtifactError::Queue { name: a.name.to_string(), source: e };
        let mut url = reqwest::Url::parse(&format!("{}/v1/runs/{}/artifacts/", self.base, lease.run_id))
            .map_err(|e| queue(Error::Schema(e.to_string())))?;
        url.path_segments_mut().map_err(|_| queue(Error::Schema("bad base URL".into())))?.pop_if_empty().push(a.name);
        let query = ArtifactUploadQuery {
            lease: lease.token,
            id: Some(a.id),
            step: a.step,
            content_type: Some(a.content_type.to_string()),
        };
        let resp = self
            .client
            .put(url)
            .query(&query)
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
        let created: ArtifactCreated =
            serde_json::from_slice(&body).map_err(|e| queue(Error::Unavailable(Box::new(e))))?;
        Ok(created.artifact_id)
    }

    async fn lane_stats(&self) -> Result<Vec<LaneStats>> {
        let list: LaneList = self.get("/v1/lanes").await?;
        Ok(list.lanes)
    }

    async fn fleet_id(&self) -> Result<uuid::Uuid> {
        let fleet: Fleet = self.get("/v1/fleet").await?;
        Ok(fleet.fleet_id)
    }

    async fn running_attempts(&self, runs: &[RunId]) -> Result<Vec<(RunId, i32)>> {
        let answer: RunningAttempts = self.post("/v1/running-attempts", &RunIds { run_ids: runs.to_vec() }).await?;
        Ok(answer.running.into_iter().map(|r| (r.run_id, r.attempt)).collect())
    }

    async fn subscribe(&self, lanes: &[Lane]) -> Result<mpsc::Receiver<Notice>> {
        let (tx, rx) = mpsc::channel(1024);
        let lanes = lanes.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(",");
        let url = format!("{}/v1/notices", self.base);
        tokio::spawn(follow_notices(self.client.clone(), url, NoticesQuery { lanes }, self.token.clone(), tx));
        Ok(rx)
    }
}

/// Reads the notices SSE stream, reconnecting after a failure (then `Resumed`: poll now).
async fn follow_notices(
    client: reqwest::Client,
    url: String,
    query: NoticesQuery,
    token: String,
    tx: mpsc::Sender<Notice>,
) {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    loop {
        if let Ok(resp) = client.get(&url).query(&query).bearer_auth(&token).send().await
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
