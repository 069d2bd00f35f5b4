//! What operators send and read about schedules: one added, listed, shown with its next slots,
//! paused, resumed, removed. A schedule travels as [`ScheduleRecord`] (secret params masked).

use crate::db::ScheduleRecord;
use crate::model::Lane;
use chrono::{DateTime, FixedOffset};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/schedules`: a template enqueued at every slot of a cron expression read in a time zone.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreate {
    /// Lowercase letters, digits, `.`, `_`, `-` (at most 63).
    pub name: String,
    pub template: String,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with a second field first, or
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// An IANA time zone (`Europe/Paris`); UTC if not given.
    pub time_zone: Option<String>,
    #[serde(default = "empty_object")]
    #[schemars(with = "Map<String, Value>")]
    pub params: Value,
    /// A lane name, in any case (the API parses it); the template's default lane if not given.
    #[schemars(with = "Option<Lane>")]
    pub lane: Option<String>,
    /// The template's default priority if not given.
    #[schemars(range(min = -100, max = 100))]
    pub priority: Option<i32>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `GET /v1/schedules`: every schedule, by name.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleRecord>,
}

/// `GET /v1/schedules/{name}`, and the answer to adding, pausing and resuming one: the schedule
/// with its next slots (from its next due slot; while paused, from where a resume would start), each
/// at its time zone's offset then, so it reads as the wall-clock time it stands for.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "ScheduleDetail")]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub schedule: ScheduleRecord,
    pub next_slots: Vec<DateTime<FixedOffset>>,
}

/// `POST /v1/schedules/{name}/pause`; the body is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePause {
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_schedule_takes_empty_params_and_refuses_unknown_fields() {
        let s: ScheduleCreate =
            serde_json::from_value(json!({"name": "n", "template": "t", "cron": "* * * * *"})).expect("schedule");
        assert_eq!(s.params, json!({}));
        assert_eq!(s.time_zone, None);
        let extra = json!({"name": "n", "template": "t", "cron": "* * * * *", "tz": "UTC"});
        assert!(serde_json::from_value::<ScheduleCreate>(extra).is_err());
    }
}
