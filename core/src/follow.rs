//! Following one run's events by cursor, live: read every event after the cursor in seq order,
//! wait for news when caught up, end once the run finished and all of it was read. `runlane tail`
//! and the API's SSE stream both follow this way; they differ only in where news comes from (a
//! LISTEN connection of its own, or the API's shared hub).

use crate::db;
use crate::error::Result;
use crate::model::{Event, RunId, RunStatus};
use crate::notices::Notice;
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Events read per page.
const PAGE: i64 = 1000;

/// Where news of new events comes from.
pub trait News: Send {
    /// Returns once `run` may have events after `after` — or after `poll` at most (notices can be
    /// missed).
    fn wait(&mut self, run: RunId, after: i64, poll: Duration) -> impl Future<Output = ()> + Send;
}

/// Notices from a listener of one's own (`notices::listen`).
impl News for mpsc::Receiver<Notice> {
    async fn wait(&mut self, run: RunId, after: i64, poll: Duration) {
        let _ = tokio::time::timeout(poll, async {
            while let Some(n) = self.recv().await {
                match n {
                    Notice::Events(p) if p.concerns(run, after) => return,
                    Notice::Resumed => return,
                    _ => {}
                }
            }
        })
        .await;
    }
}

/// Notices fanned out to many followers (the API's hub); a follower that lagged re-reads.
impl News for broadcast::Receiver<Notice> {
    async fn wait(&mut self, run: RunId, after: i64, poll: Duration) {
        let _ = tokio::time::timeout(poll, async {
            loop {
                match self.recv().await {
                    Ok(Notice::Events(p)) if p.concerns(run, after) => return,
                    Ok(Notice::Resumed) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// One run being followed.
#[derive(Debug)]
pub struct Follow<N> {
    pool: PgPool,
    run: RunId,
    cursor: i64,
    news: N,
    poll: Duration,
    ended: Option<RunStatus>,
}

impl<N: News> Follow<N> {
    /// Follows `run` from after `cursor`; `news` must be listening already, so nothing written
    /// between now and the first read is missed. `poll`: the longest wait without news.
    pub fn new(pool: PgPool, run: RunId, cursor: i64, news: N, poll: Duration) -> Self {
        Follow { pool, run, cursor, news, poll, ended: None }
    }

    /// The seq of the last event handed out.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// The run's final status, once `next` has returned None.
    pub fn ended(&self) -> Option<RunStatus> {
        self.ended
    }

    /// The next events after the cursor, in seq order (waiting for them when caught up); None once
    /// the run has finished and every event was handed out.
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>> {
        loop {
            let page = db::read_events(&self.pool, self.run, self.cursor, PAGE).await?;
            if let Some(last) = page.last() {
                self.cursor = last.seq;
                return Ok(Some(page));
            }
            if self.ended.is_some() {
                return Ok(None);
            }
            // Caught up: a run that has finished has nothing more to come (read once more, in case
            // its last events landed after this page was read).
            if let Ok(status) = db::get_run(&self.pool, self.run).await?.status.parse::<RunStatus>()
                && status.is_final()
            {
                self.ended = Some(status);
                continue;
            }
            self.news.wait(self.run, self.cursor, self.poll).await;
        }
    }
}
