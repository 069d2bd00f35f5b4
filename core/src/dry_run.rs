//! Dry runs: a run checked as `enqueue_run` checks it (by the SQL `dry_run_enqueue`, so the errors
//! are the enqueue's own) and shown as it would run, its steps rendered with its params the way the
//! worker renders them ([`StepAction::render`](crate::steps::StepAction::render)) — with secret values already masked by the SQL, so
//! a secret never reaches a dry run. Nothing is written. `runlane enqueue --dry-run` and
//! `POST /v1/runs?dry_run=true` both call [`dry_run`].

use crate::db;
use crate::error::Result;
use crate::model::{EnqueuePreview, EnqueueRequest};
use crate::steps::parse_step;
use crate::wire::{DryRunStep, RunDryRun};
use serde_json::{Map, Value};
use sqlx::PgExecutor;

/// What enqueueing `req` would store and run, or the error the enqueue would raise.
pub async fn dry_run(ex: impl PgExecutor<'_>, req: &EnqueueRequest) -> Result<RunDryRun> {
    Ok(show(db::dry_run_enqueue(ex, req).await?))
}

/// A preview with its steps rendered.
pub fn show(p: EnqueuePreview) -> RunDryRun {
    let steps = render_steps(&p.steps, &p.params);
    RunDryRun {
        existing_run_id: p.existing_run,
        template: p.template,
        template_version: p.version,
        lane: p.lane,
        priority: p.priority,
        status: p.status,
        run_at: p.run_at,
        params: p.params,
        secret_params: p.secret_params,
        requires: p.requires,
        timeout_ms: p.timeout_ms,
        max_attempts: p.max_attempts,
        steps,
    }
}

/// Each step of a run's frozen `steps` with `params` filled in. A step that cannot be rendered keeps
/// its keys as written and says why.
pub fn render_steps(steps: &Value, params: &Value) -> Vec<DryRunStep> {
    let list = steps.as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().enumerate().map(|(i, step)| render_step(i32::try_from(i).unwrap_or(i32::MAX), step, params)).collect()
}

fn render_step(index: i32, step: &Value, params: &Value) -> DryRunStep {
    let text = |k: &str| step.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let (name, kind) = (text("name"), text("kind"));
    let parsed = match parse_step(step) {
        Ok(parsed) => parsed,
        Err(e) => return DryRunStep { index, name, kind, spec: step.clone(), problem: Some(e) },
    };
    let (action, problem) = match parsed.action.render(params) {
        Ok(rendered) => (rendered, None),
        Err(e) => (parsed.action.clone(), Some(e)),
    };
    let mut spec = Map::new();
    spec.insert("name".into(), Value::from(parsed.name));
    spec.insert("timeout_ms".into(), serde_json::to_value(parsed.timeout_ms).unwrap_or_default());
    spec.insert("cancel_grace_ms".into(), serde_json::to_value(parsed.cancel_grace_ms).unwrap_or_default());
    spec.insert("continue_on_error".into(), Value::from(parsed.continue_on_error));
    spec.insert("always".into(), Value::from(parsed.always));
    if let Ok(Value::Object(keys)) = serde_json::to_value(&action) {
        spec.extend(keys);
    }
    spec.retain(|_, v| !v.is_null());
    DryRunStep { index, name, kind, spec: Value::Object(spec), problem }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_show_the_keys_the_worker_reads_with_params_filled_in() {
        let steps = json!([
            {"name": "dump", "kind": "shell", "command": "pg_dump ${{ params.db }} --password ${{ params.pw }}"},
            {"name": "tell", "kind": "http", "url": "http://h/done?db=${{ params.db }}", "always": true},
            {"name": "broken", "kind": "shell", "command": "echo ${{ params.nope }}"}
        ]);
        let shown = render_steps(&steps, &json!({"db": "orders", "pw": "***"}));
        assert_eq!(shown[0].spec["command"], "pg_dump 'orders' --password '***'");
        assert_eq!(shown[0].spec["kind"], "shell");
        assert!(shown[0].spec.get("working_dir").is_none(), "unset keys are left out: {}", shown[0].spec);
        assert_eq!(shown[1].spec["url"], "http://h/done?db=orders");
        assert_eq!((shown[1].spec["method"].as_str(), shown[1].spec["always"].as_bool()), (Some("GET"), Some(true)));
        assert_eq!(shown[2].spec["command"], "echo ${{ params.nope }}", "kept as written");
        assert!(shown[2].problem.as_deref().is_some_and(|p| p.contains("'nope'")), "{:?}", shown[2].problem);
        assert!(shown[0].problem.is_none() && shown[1].problem.is_none());
    }
}
