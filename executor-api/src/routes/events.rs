//! A run's events: JSON pages (`?after=seq`) and a live SSE stream that resumes from
//! `Last-Event-ID` (the seq of the last event the client has) with no gap and no duplicate.

use crate::auth::Reader;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use runlane_core::db;
use runlane_core::follow::Follow;
use runlane_core::model::{Event, RunId};
use runlane_core::notices::Notice;
use runlane_core::wire::{EventPage, EventPageQuery, EventStreamQuery};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;

pub async fn page(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
    Query(q): Query<EventPageQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 5000"));
    }
    db::get_run(&st.pool, run).await?; // 404 for an unknown run
    let after = q.after.unwrap_or(0).max(0);
    let events = db::read_events(&st.pool, run, after, limit).await?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(Json(EventPage { events, next_after }))
}

pub async fn stream(
    State(st): State<AppState>,
    _reader: Reader,
    Path(run): Path<RunId>,
    Query(q): Query<EventStreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    db::get_run(&st.pool, run).await?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let cursor = resume.or(q.after).unwrap_or(0).max(0);
    let keepalive = Duration::from_millis(st.settings.sse_keepalive_ms);
    // Subscribed before the first read, so nothing written in between is missed.
    let follow = Follow::new(st.pool.clone(), run, cursor, st.hub.subscribe(), Duration::from_secs(5));
    let stream = futures_util::stream::unfold((follow, Vec::new()), next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive")))
}

type Pending = Vec<Event>;

/// The next event as an SSE message (`id:` is its seq); the stream ends once the run finished.
async fn next_event(
    (mut follow, mut pending): (Follow<broadcast::Receiver<Notice>>, Pending),
) -> Option<(Result<SseEvent, Infallible>, (Follow<broadcast::Receiver<Notice>>, Pending))> {
    if pending.is_empty() {
        match follow.next().await {
            Ok(Some(events)) => pending = events,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "event stream read failed");
                return None; // the client reconnects with Last-Event-ID
            }
        }
    }
    let e = pending.remove(0);
    let data = serde_json::to_string(&e).unwrap_or_default();
    Some((Ok(SseEvent::default().id(e.seq.to_string()).event(e.kind.clone()).data(data)), (follow, pending)))
}
