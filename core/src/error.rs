//! The one error type of the queue layer. Its variants decide what a caller does next.

/// What went wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run is no longer this worker's (requeued, finished, or claimed elsewhere). Abort the
    /// run locally and write nothing more about it. SQLSTATE `RL001`.
    #[error("{0}")]
    LeaseLost(String),
    /// Unknown template, run, worker or session. SQLSTATE `RL404`.
    #[error("{0}")]
    NotFound(String),
    /// Input a person must fix; `problems` lists every violation found. SQLSTATE `RL422`.
    #[error("{message}")]
    Invalid { message: String, problems: Vec<String> },
    /// The request does not fit the run's state (retrying a running run). SQLSTATE `RL409`.
    #[error("{0}")]
    Conflict(String),
    /// The worker was marked gone (silent past the worker timeout): its runs went to others. It must
    /// register again (a fresh id) before it claims. SQLSTATE `RL410`.
    #[error("{0}")]
    WorkerGone(String),
    /// The queue (PostgreSQL, or the executor API) could not be reached or went away mid-call.
    /// Retry after a pause.
    #[error("queue unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database's schema does not match this binary.
    #[error("{0}")]
    Schema(String),
    /// Anything else from the database: a bug or an operator problem, not retried.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// Shorthand for queue results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = db.message().to_owned();
            return match code.as_str() {
                "RL001" => Error::LeaseLost(message),
                "RL404" => Error::NotFound(message),
                "RL409" => Error::Conflict(message),
                "RL410" => Error::WorkerGone(message),
                "RL422" => {
                    let problems = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|pg| pg.detail())
                        .and_then(|d| serde_json::from_str::<Vec<String>>(d).ok())
                        .unwrap_or_else(|| vec![message.clone()]);
                    Error::Invalid { message, problems }
                }
                // data_exception: a value PostgreSQL cannot take (a NUL character, an out-of-range
                // number …): the caller's input, not a fault of ours.
                c if c.starts_with("22") => Error::Invalid {
                    message: format!("a value cannot be stored: {message}"),
                    problems: vec![message.clone()],
                },
                // connection_exception, admin/crash shutdown, cannot_connect_now, too many connections
                c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => Error::Unavailable(Box::new(err)),
                _ => Error::Database(err),
            };
        }
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Error::Unavailable(Box::new(err)),
            other => Error::Database(other),
        }
    }
}
