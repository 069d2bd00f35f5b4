//! A run's events: JSON pages (`?after=seq`) and a live SSE stream that resumes from
//! `Last-Event-ID` (the seq of the last event the client has) with no gap and no duplicate.

use crate::auth::Reader;
use crate::error::ApiError;
use crate::hub::HubNotice;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use runlane_core::db;
use runlane_core::model::{Event, RunId, RunStatus};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn page(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 5000"));
    }
    db::get_run(&st.pool, run).await?; // 404 for an unknown run
    let after = q.after.unwrap_or(0).max(0);
    let events = db::read_events(&st.pool, run, after, limit).await?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(Json(json!({"events": events, "next_after": next_after})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    after: Option<i64>,
}

pub async fn stream(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    db::get_run(&st.pool, run).await?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let cursor = resume.or(q.after).unwrap_or(0).max(0);
    let keepalive = Duration::from_millis(st.settings.sse_keepalive_ms);
    // Subscribe before the first read, so nothing written in between is missed.
    let notices = st.hub.subscribe();
    let state = Follow { st, run, cursor, notices, pending: Vec::new(), done: false };
    let stream = futures_util::stream::unfold(state, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive")))
}

struct Follow {
    st: AppState,
    run: RunId,
    cursor: i64,
    notices: broadcast::Receiver<HubNotice>,
    /// Read but not yet sent, in seq order.
    pending: Vec<Event>,
    done: bool,
}

async fn next_event(mut f: Follow) -> Option<(Result<SseEvent, Infallible>, Follow)> {
    loop {
        if let Some(e) = (!f.pending.is_empty()).then(|| f.pending.remove(0)) {
            f.cursor = e.seq;
            let data = serde_json::to_string(&e).unwrap_or_default();
            return Some((Ok(SseEvent::default().id(e.seq.to_string()).event(e.kind.clone()).data(data)), f));
        }
        if f.done {
            return None;
        }
        match db::read_events(&f.st.pool, f.run, f.cursor, 500).await {
            Ok(events) if !events.is_empty() => {
                f.pending = events;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(run_id = %f.run, error = %e, "event stream read failed");
                return None; // the client reconnects with Last-Event-ID
            }
        }
        // Caught up: a finished run ends the stream, else wait for a pointer past the cursor.
        if let Ok(rec) = db::get_run(&f.st.pool, f.run).await
            && rec.status.parse::<RunStatus>().is_ok_and(RunStatus::is_final)
        {
            f.done = true;
            continue;
        }
        wait_for_news(&mut f).await;
    }
}

/// Until a notice about this run past the cursor (or a lag/reconnect, or 5 s to re-check).
async fn wait_for_news(f: &mut Follow) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match f.notices.recv().await {
                Ok(HubNotice::Event { run, seq }) if run == f.run && seq > f.cursor => return,
                Ok(HubNotice::Resumed) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}
