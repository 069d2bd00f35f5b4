//! Templates: the database's check of a spec, applying with a report, and the stored policy as
//! `runlane templates list|show` read it. (`apply_template` and the API's `list_templates` are in
//! `queries` and `reads`.)

use crate::error::{Error, Result};
use serde::Serialize;
use sqlx::PgExecutor;

/// One problem `template_problems` found: the top-level field it is about (`""` for the template as a
/// whole) and what is wrong, naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TemplateProblem {
    pub field: String,
    pub problem: String,
}

/// Every problem of a template spec, in the database's order; empty when it would apply. Writes
/// nothing: a viewer may ask.
pub async fn template_problems(
    ex: impl PgExecutor<'_>,
    name: &str,
    spec: &serde_json::Value,
) -> Result<Vec<TemplateProblem>> {
    Ok(sqlx::query_as(
        "SELECT p.field, p.problem FROM runlane.template_problems($1, $2) WITH ORDINALITY AS p(field, problem, n)
         ORDER BY p.n",
    )
    .bind(name)
    .bind(spec)
    .fetch_all(ex)
    .await?)
}

/// What applying a template did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppliedTemplate {
    pub version: i32,
    /// False when the spec equals the newest stored version (nothing was written).
    pub changed: bool,
}

/// `apply_template`, telling a new version from an unchanged one. One statement: the newest version
/// before is read with the statement's snapshot, which never sees the row the function inserts.
pub async fn apply_template_reporting(
    ex: impl PgExecutor<'_>,
    name: &str,
    spec: &serde_json::Value,
) -> Result<AppliedTemplate> {
    let (version, before): (i32, Option<i32>) = sqlx::query_as(
        "SELECT runlane.apply_template($1, $2),
                (SELECT max(version) FROM runlane.run_templates WHERE name = $1)",
    )
    .bind(name)
    .bind(spec)
    .fetch_one(ex)
    .await?;
    Ok(AppliedTemplate { version, changed: before != Some(version) })
}

/// A template version's policy: every field with its default filled in, as runs of it get it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TemplatePolicy {
    pub lane: String,
    pub priority: i32,
    pub timeout_ms: i32,
    pub max_attempts: i32,
    pub backoff_base_ms: i32,
    pub backoff_multiplier: f64,
    pub backoff_max_ms: i32,
    pub backoff_jitter: f64,
    pub max_crashes: i32,
    /// Declared capabilities, and `docker` when a step needs it.
    pub requires: Vec<String>,
    /// None: the fleet's retention.
    pub retention_s: Option<i64>,
}

/// A stored template version with its policy; `spec` is the template as applied.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TemplateVersion {
    pub name: String,
    pub version: i32,
    pub newest_version: i32,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[sqlx(flatten)]
    pub policy: TemplatePolicy,
    pub spec: serde_json::Value,
}

const VERSION_COLUMNS: &str = "t.name, t.version, max(t.version) OVER (PARTITION BY t.name) AS newest_version,
    t.description, t.created_at, t.default_lane AS lane, t.default_priority AS priority, t.timeout_ms,
    t.max_attempts, t.backoff_base_ms, t.backoff_multiplier, t.backoff_max_ms, t.backoff_jitter, t.max_crashes,
    t.requires, extract(epoch FROM t.retention)::bigint AS retention_s, t.spec";

/// The newest version of every template, by name.
pub async fn list_template_versions(ex: impl PgExecutor<'_>) -> Result<Vec<TemplateVersion>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM (SELECT {VERSION_COLUMNS} FROM runlane.run_templates t) v
         WHERE v.version = v.newest_version ORDER BY v.name"
    )))
    .fetch_all(ex)
    .await?)
}

/// One version of a template (the newest when `version` is None).
pub async fn get_template_version(
    ex: impl PgExecutor<'_>,
    name: &str,
    version: Option<i32>,
) -> Result<TemplateVersion> {
    let found: Option<TemplateVersion> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM (SELECT {VERSION_COLUMNS} FROM runlane.run_templates t WHERE t.name = $1) v
         WHERE v.version = coalesce($2, v.newest_version)"
    )))
    .bind(name)
    .bind(version)
    .fetch_optional(ex)
    .await?;
    found.ok_or_else(|| {
        Error::NotFound(match version {
            Some(v) => format!("template '{name}' has no version {v}"),
            None => format!("unknown template '{name}'"),
        })
    })
}
