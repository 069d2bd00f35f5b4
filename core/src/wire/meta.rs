//! Workers, lanes and templates as operators list them, a template applied; lanes paused, resumed
//! and the fleet stopped, and the history of those; health and readiness.

use crate::db::{TemplateRecord, WorkerRecord};
use crate::lanes::LaneEvent;
use crate::model::{Lane, LaneStats, WorkerId, WorkerState};
use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// `GET /v1/workers`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerSummary>,
}

/// A worker as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkerSummary {
    pub id: WorkerId,
    pub host: String,
    pub version: String,
    pub lanes: Vec<String>,
    pub slots: i32,
    pub capabilities: Vec<String>,
    #[schemars(with = "WorkerState")]
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl From<WorkerRecord> for WorkerSummary {
    fn from(w: WorkerRecord) -> Self {
        let WorkerRecord { id, host, version, lanes, slots, capabilities, state, started_at, last_seen_at } = w;
        WorkerSummary { id, host, version, lanes, slots, capabilities, state, started_at, last_seen_at }
    }
}

/// `GET /v1/lanes`: each lane's figures, and whether it is paused (since when, by whom, why).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LaneList {
    pub lanes: Vec<LaneStats>,
}

/// `POST /v1/lanes/{lane}/pause` and `POST /v1/lanes/{lane}/resume`: why. It is recorded with the
/// token's name. The answer is the lane's pause state (`LanePause`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaneChange {
    #[schemars(length(min = 1, max = 4096))]
    pub reason: String,
}

/// `POST /v1/lanes/{lane}/aging`: how fast the lane's waiting runs gain priority, one point per
/// `ms_per_point` milliseconds of waiting (1 to 86400000, a day); 0 turns aging off (strict priority,
/// then first come). It applies at once to the lane's runs. The answer is a `LaneAging`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaneAgingChange {
    #[schemars(range(min = 0, max = 86_400_000))]
    pub ms_per_point: i32,
}

/// `POST /v1/lanes/stop`: the emergency stop. Every lane is paused; with `cancel_running`, every
/// running run is asked to cancel. Queued runs stay queued. The answer is a `FleetStop`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetStopRequest {
    #[schemars(length(min = 1, max = 4096))]
    pub reason: String,
    #[serde(default)]
    pub cancel_running: bool,
}

/// `GET /v1/lanes/history`: newest first; with `lane`, that lane's entries and the fleet's stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaneHistoryQuery {
    #[schemars(with = "Option<Lane>")]
    pub lane: Option<String>,
    /// 1–500, 50 if not given.
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<i64>,
}

/// Pauses, resumes and stops, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LaneHistory {
    pub events: Vec<LaneEvent>,
}

/// `GET /v1/templates`: the newest version of every template.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateSummary>,
}

/// A template's newest version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TemplateSummary {
    pub name: String,
    pub version: i32,
    pub description: String,
    pub default_lane: String,
    pub params_schema: Value,
    pub steps: Value,
    pub created_at: DateTime<Utc>,
}

impl From<TemplateRecord> for TemplateSummary {
    fn from(t: TemplateRecord) -> Self {
        let TemplateRecord { name, version, description, default_lane, params_schema, steps, created_at } = t;
        TemplateSummary { name, version, description, default_lane, params_schema, steps, created_at }
    }
}

/// `PUT /v1/templates/{name}`: a template as JSON (what a templates/*.yaml file holds, without
/// `name`), checked by `apply_template` in SQL like every other way in: kept as it came.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TemplateSpec(pub Value);

impl JsonSchema for TemplateSpec {
    fn schema_name() -> Cow<'static, str> {
        "TemplateSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A template as JSON: what a templates/*.yaml file holds, without `name`.",
            "type": "object",
            "required": ["steps"],
            "properties": {"steps": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
        })
    }
}

/// The version an applied template got.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TemplateApplied {
    pub name: String,
    pub version: i32,
}

/// `/healthz`: live while the database answered within the bound (200, else 503).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Live {
    pub live: bool,
    pub database_age_ms: u64,
    pub bound_ms: u64,
}

/// `/readyz`: the database answers and its schema is this binary's (200, else 503 with a reason).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Ready {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_a_reason_only_when_not_ready() {
        let ready = Ready { ready: true, reason: None };
        assert_eq!(serde_json::to_value(&ready).expect("json"), serde_json::json!({"ready": true}));
    }
}
