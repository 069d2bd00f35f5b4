//! The batched write seam: what a worker writes about one run in one round trip ([`RunOps`]), many
//! runs' items going to the queue in one call (`apply_ops`), and each item's answer ([`OpOutcome`]).
//! The same structs are the JSON of the executor API's `/v1/ops`.

use crate::error::Error;
use crate::model::{Lease, NewEvent, Outcome, RunStatus, StepStatus};
use serde::{Deserialize, Serialize};

/// Items one `apply_ops` call carries at most (the SQL function and the executor API refuse more).
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Events one `apply_ops` call carries at most (the SQL function refuses more).
pub const MAX_BATCH_EVENTS: usize = 20_000;
/// Bytes of event text one call carries at most, as [`RunOps::text_bytes`] counts them: well under
/// the executor API's 8 MiB request limit even when JSON escaping multiplies the text several times.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Bytes of event text a run's writer puts in one item at most (a quarter of a call: items of many
/// runs share one).
pub const MAX_ITEM_BYTES: usize = MAX_BATCH_BYTES / 4;

/// Ending a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepFinish {
    #[schemars(range(min = 0))]
    pub step: i32,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Ending the attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Completion {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One run's writes for one round trip, applied in this order, all or nothing: its output events,
/// finishing a step, starting a step, ending the attempt (never both of the last two).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunOps {
    pub lease: Lease,
    /// 1, 2, 3 … within the attempt: the same item sent again (after a lost reply) is answered as it
    /// was the first time and written once.
    #[schemars(range(min = 1))]
    pub op: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NewEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<StepFinish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub start: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<Completion>,
}

impl RunOps {
    /// The text this item carries: its events' bodies and data, plus a little per event.
    pub fn text_bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| 32 + e.body.as_ref().map_or(0, String::len) + e.data.as_ref().map_or(0, |d| d.to_string().len()))
            .sum()
    }
}

/// What the queue answered for one item (`apply_ops` returns one per item, in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct OpOutcome {
    /// 1-based position in the batch.
    pub item: i32,
    /// `ok`, `replay`, or an error's SQLSTATE (`RL001` lease lost, `RL404`, `RL409`, `RL422`).
    pub code: String,
    /// The item's last event (for a replay: as first answered).
    pub last_seq: Option<i64>,
    /// The run's status after an ending.
    pub status: Option<String>,
    pub message: Option<String>,
}

/// An item the queue applied (or had applied: a replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub last_seq: Option<i64>,
    /// The run's status after an ending.
    pub status: Option<RunStatus>,
}

impl OpOutcome {
    /// The item's answer as the queue's other calls give it: applied, or the error its code names.
    pub fn into_result(self) -> Result<Applied, Error> {
        let message = self.message.unwrap_or_default();
        match self.code.as_str() {
            "ok" | "replay" => {
                let status = self.status.map(|s| s.parse().map_err(Error::Schema)).transpose()?;
                Ok(Applied { last_seq: self.last_seq, status })
            }
            "RL001" => Err(Error::LeaseLost(message)),
            "RL404" => Err(Error::NotFound(message)),
            "RL409" => Err(Error::Conflict(message)),
            "RL422" => Err(Error::Invalid { problems: vec![message.clone()], message }),
            other => Err(Error::Schema(format!("unknown answer '{other}' for an item: {message}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_the_queues_errors() {
        let outcome = |code: &str| OpOutcome {
            item: 1,
            code: code.into(),
            last_seq: Some(7),
            status: Some("succeeded".into()),
            message: Some("why".into()),
        };
        let applied = outcome("replay").into_result().expect("applied");
        assert_eq!(applied, Applied { last_seq: Some(7), status: Some(RunStatus::Succeeded) });
        assert!(matches!(outcome("RL001").into_result(), Err(Error::LeaseLost(m)) if m == "why"));
        assert!(matches!(outcome("RL409").into_result(), Err(Error::Conflict(_))));
        assert!(matches!(outcome("RL422").into_result(), Err(Error::Invalid { .. })));
    }

    #[test]
    fn items_travel_as_json_without_empty_parts() {
        let lease = Lease { run_id: crate::model::RunId(uuid::Uuid::nil()), token: uuid::Uuid::nil() };
        let item = RunOps { lease, op: 3, events: vec![], finish: None, start: Some(1), complete: None };
        let json = serde_json::to_value(&item).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"lease": {"run_id": lease.run_id, "token": lease.token}, "op": 3, "start": 1})
        );
        assert_eq!(serde_json::from_value::<RunOps>(json).expect("back"), item);
    }
}
