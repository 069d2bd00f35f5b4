//! PostgreSQL: connecting, the embedded migrations, and one small function per SQL call.
//!
//! Every SQL statement of the queue lives in this module (`queries` for the queue functions,
//! `reads` for what operators read, `templates` for checking, applying and showing templates, `lanes`
//! for pausing lanes, stopping the fleet and lane aging, `schedules` for recurring runs); only `runlane
//! bench` runs its own, on its measuring tables. Functions take `impl PgExecutor` so the caller decides
//! the transaction.

mod lanes;
mod queries;
mod reads;
mod schedules;
mod templates;

pub use lanes::*;
pub use queries::*;
pub use reads::*;
pub use schedules::*;
pub use templates::*;

use crate::error::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, migrate::Migrator};
use std::str::FromStr;
use std::time::Duration;

/// The migrations under sql/migrations, embedded in the binary.
fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../sql/migrations");
    m.create_schema("runlane");
    m.dangerous_set_table_name("runlane.schema_migrations");
    m
}

/// The newest schema version this binary knows.
pub fn schema_version() -> i64 {
    migrator().iter().map(|m| m.version).max().unwrap_or(0)
}

/// Opens a pool. `application_name` shows in `pg_stat_activity`. sqlx's own statement logging is
/// off: it would print whole migrations (and batches' parameters) as "slow statements".
pub async fn connect(url: &str, max_connections: u32, application_name: &str) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Schema(format!("invalid database URL: {e}")))?
        .application_name(application_name)
        .disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// The schema version a database is at (0: never migrated).
pub async fn database_schema_version(pool: &PgPool) -> Result<i64> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('runlane.schema_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM runlane.schema_migrations WHERE success").fetch_one(pool).await?;
    Ok(v.unwrap_or(0))
}

/// Applies the embedded migrations that are missing. Idempotent. Refuses a database whose schema
/// is newer than this binary (an older binary must not touch it). Returns (before, after).
pub async fn migrate(pool: &PgPool) -> Result<(i64, i64)> {
    let before = database_schema_version(pool).await?;
    let known = schema_version();
    if before > known {
        return Err(Error::Schema(format!(
            "the database schema is at version {before}, newer than this runlane binary knows ({known}): \
             upgrade runlane instead of migrating"
        )));
    }
    migrator().run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(err) => Error::from(err),
        other => Error::Schema(format!("migration failed: {other}")),
    })?;
    Ok((before, database_schema_version(pool).await?))
}

/// Checks that a database is at exactly this binary's schema (workers and the API never migrate).
pub async fn check_schema(pool: &PgPool) -> Result<()> {
    let have = database_schema_version(pool).await?;
    let want = schema_version();
    match have.cmp(&want) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(Error::Schema(format!(
            "the database schema is at version {have}, this runlane needs {want}: run `runlane migrate`"
        ))),
        std::cmp::Ordering::Greater => Err(Error::Schema(format!(
            "the database schema is at version {have}, newer than this runlane ({want}): upgrade runlane"
        ))),
    }
}
