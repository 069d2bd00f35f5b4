//! Retention: a finished run is kept for its template version's retention, or the fleet's where the
//! template sets none; pruning then deletes it with its events, steps and artifacts, and hands the
//! keys of its stored artifacts to whoever holds the object store. The SQL decides what has expired
//! (`prune_at`, `prune_preview`; `db::prune_until_done` runs a prune to its end); this module
//! describes a preview.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What pruning would delete, written nowhere (`prune_preview`): the totals, then per template and
/// retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunePreview {
    /// The time the retentions were counted back from.
    pub as_of: DateTime<Utc>,
    /// The retention of runs whose template sets none.
    pub fleet_retention_s: i64,
    pub runs: u64,
    pub events: u64,
    pub steps: u64,
    pub artifacts: u64,
    /// Artifacts whose bytes are in the object store, and how many bytes would leave it.
    pub stored_objects: u64,
    pub stored_bytes: u64,
    /// Workers gone for longer than the fleet's retention.
    pub workers: u64,
    /// Sessions older than the fleet's retention that no run would refer to any more.
    pub sessions: u64,
    /// One entry per template and retention (oldest versions may keep runs for another time).
    pub templates: Vec<TemplatePrune>,
}

/// The expired runs of one template kept for one retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplatePrune {
    pub template: String,
    /// The versions of the template whose runs these are.
    pub versions: Vec<i32>,
    pub retention_s: i64,
    /// Where the retention comes from: `template` (the versions' own) or `fleet`.
    pub retention_from: String,
    pub runs: u64,
    pub events: u64,
    pub steps: u64,
    pub artifacts: u64,
    pub stored_objects: u64,
    pub stored_bytes: u64,
    pub oldest_finished_at: DateTime<Utc>,
}
