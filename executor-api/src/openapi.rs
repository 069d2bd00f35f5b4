//! `/openapi.json`, generated from the route table (routes/mod.rs) and the schemas below.

use crate::routes::{Auth, Body, table};
use axum::Json;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;

pub async fn serve() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in table() {
        let item = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        item[r.method] = operation(&r);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "runlane executor API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Runs, workers over HTTP, events (JSON pages and SSE), artifacts. Errors: {\"error\": {\"code\", \"message\", \"details\"}}."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

fn operation(r: &crate::routes::Route) -> Value {
    let mut params: Vec<Value> = path_params(r.path);
    for (name, ty, required) in r.query {
        params.push(json!({"name": name, "in": "query", "required": required, "schema": {"type": ty}}));
    }
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '-', '.'], "_")),
        "parameters": params,
        "responses": {
            r.status.to_string(): response(r.response),
            "default": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    });
    match r.auth {
        Auth::Bearer => op["security"] = json!([{"bearer": []}]),
        Auth::Signed | Auth::Public => op["security"] = json!([]),
    }
    match r.request {
        Body::Json(schema) => {
            let required = !matches!(schema, "CancelRequest");
            op["requestBody"] = json!({"required": required,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        Body::Binary => {
            op["requestBody"] = json!({"required": true,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
        }
        _ => {}
    }
    op
}

fn response(body: Body) -> Value {
    match body {
        Body::Json(schema) => json!({"description": "ok",
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
        Body::Text => json!({"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        Body::EventStream => {
            json!({"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}})
        }
        Body::Binary => {
            json!({"description": "the bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})
        }
        Body::Empty => json!({"description": "done"}),
    }
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = match name {
                "step" => json!({"type": "integer", "minimum": 0}),
                "name" => json!({"type": "string", "minLength": 1}),
                _ => json!({"type": "string", "format": "uuid"}),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props})
}

fn strict(required: &[&str], props: Value) -> Value {
    let mut o = obj(required, props);
    o["additionalProperties"] = json!(false);
    o
}

fn schemas() -> Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    let uuid_or_null = json!({"type": "string", "format": "uuid", "nullable": true});
    let time = json!({"type": "string", "format": "date-time"});
    let time_or_null = json!({"type": "string", "format": "date-time", "nullable": true});
    let text_or_null = json!({"type": "string", "nullable": true});
    let int_or_null = json!({"type": "integer", "nullable": true});
    let lane = json!({"type": "string", "enum": ["A", "B", "C", "D"]});
    let lanes = json!({"type": "array", "items": lane});
    let status =
        json!({"type": "string", "enum": ["scheduled", "queued", "running", "succeeded", "failed", "cancelled"]});
    let run_props = json!({
        "id": uuid, "template": {"type": "string"}, "template_version": {"type": "integer"}, "lane": {"type": "string"},
        "priority": {"type": "integer"}, "status": status, "params": {"type": "object"},
        "attempt": {"type": "integer"}, "failed_attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "crash_count": {"type": "integer"}, "max_crashes": {"type": "integer"}, "run_at": time, "created_at": time,
        "claimed_at": time_or_null, "finished_at": time_or_null, "worker_id": uuid_or_null,
        "cancel_requested_at": time_or_null, "session_id": uuid_or_null, "result": {"nullable": true},
        "error": text_or_null,
    });
    let run_required = ["id", "template", "lane", "status", "attempt", "created_at"];
    let mut run = obj(&run_required, run_props.clone());
    run["properties"]["steps"] = json!({"type": "array", "items": obj(&["attempt", "idx", "name", "status"], json!({
        "attempt": {"type": "integer"}, "idx": {"type": "integer"}, "name": {"type": "string"}, "kind": {"type": "string"},
        "status": {"type": "string"}, "exit_code": int_or_null, "error": text_or_null, "started_at": time, "finished_at": time_or_null}))});
    let event = obj(
        &["run_id", "seq", "attempt", "at", "kind"],
        json!({
        "run_id": uuid, "seq": {"type": "integer"}, "attempt": {"type": "integer"}, "at": time, "kind": {"type": "string"},
        "step": int_or_null, "stream": text_or_null, "body": text_or_null, "data": {"nullable": true}}),
    );
    let new_event = strict(
        &["kind"],
        json!({
        "kind": {"type": "string", "pattern": "^[a-z]+(\\.[a-z_]+)+$"}, "step": {"type": "integer"},
        "stream": {"type": "string", "enum": ["stdout", "stderr"]}, "body": {"type": "string"}, "data": {}}),
    );
    let claimed = obj(
        &["run_id", "lease", "lane", "attempt", "steps"],
        json!({
        "run_id": uuid, "lease": uuid, "lease_expires_at": time, "lane": {"type": "string"}, "attempt": {"type": "integer"},
        "template": {"type": "string"}, "template_version": {"type": "integer"}, "params": {"type": "object"},
        "secret_params": {"type": "array", "items": {"type": "string"}}, "steps": {"type": "array"},
        "timeout_ms": {"type": "integer"}, "session_id": uuid_or_null}),
    );
    json!({
        "Error": obj(&["error"], json!({"error": obj(&["code", "message"], json!({
            "code": {"type": "string"}, "message": {"type": "string"}, "details": {"nullable": true}}))})),
        "RunCreate": strict(&["template"], json!({
            "template": {"type": "string"}, "params": {"type": "object"}, "lane": lane, "priority": {"type": "integer", "minimum": -100, "maximum": 100},
            "run_at": time, "idempotency_key": {"type": "string"}, "session_id": uuid})),
        "RunCreated": obj(&["run_id"], json!({"run_id": uuid})),
        "Run": run,
        "RunList": obj(&["runs"], json!({"runs": {"type": "array", "items": obj(&run_required, run_props)}, "next_before": uuid_or_null})),
        "CancelRequest": strict(&[], json!({"reason": {"type": "string"}})),
        "StatusReply": obj(&["status"], json!({"status": {"type": "string"}})),
        "Event": event.clone(),
        "EventPage": obj(&["events", "next_after"], json!({"events": {"type": "array", "items": event}, "next_after": {"type": "integer"}})),
        "ArtifactList": obj(&["artifacts"], json!({"artifacts": {"type": "array", "items": obj(&["id", "name", "url", "sha256"], json!({
            "id": uuid, "attempt": {"type": "integer"}, "step": int_or_null, "name": {"type": "string"}, "content_type": {"type": "string"},
            "size_bytes": {"type": "integer"}, "sha256": {"type": "string"}, "created_at": time, "url": {"type": "string"},
            "expires_at": {"type": "integer"}}))}})),
        "WorkerRegistration": strict(&["host", "lanes", "slots", "version", "lease_ms"], json!({
            "host": {"type": "string"}, "lanes": lanes, "slots": {"type": "integer", "minimum": 1},
            "version": {"type": "string"}, "capabilities": {"type": "array", "items": {"type": "string"}},
            "lease_ms": {"type": "integer", "minimum": 100}, "kill_grace_ms": {"type": "integer", "minimum": 0}})),
        "WorkerRegistered": obj(&["worker_id"], json!({"worker_id": uuid})),
        "WorkerList": obj(&["workers"], json!({"workers": {"type": "array", "items": obj(&["id", "host", "state"], json!({
            "id": uuid, "host": {"type": "string"}, "version": {"type": "string"}, "lanes": {"type": "array"},
            "slots": {"type": "integer"}, "capabilities": {"type": "array"}, "state": {"type": "string"},
            "started_at": time, "last_seen_at": time}))}})),
        "WorkerHeartbeat": strict(&["state"], json!({
            "state": {"type": "string", "enum": ["active", "draining", "gone"]}, "lanes": lanes,
            "slots": {"type": "integer", "minimum": 1}, "capabilities": {"type": "array", "items": {"type": "string"}}})),
        "ClaimRequest": strict(&["worker_id", "lanes", "limit"], json!({
            "worker_id": uuid, "lanes": lanes, "limit": {"type": "integer", "minimum": 0, "maximum": 1000}, "session_id": uuid})),
        "ClaimedRuns": obj(&["runs"], json!({"runs": {"type": "array", "items": claimed}})),
        "LeaseBody": strict(&["lease"], json!({"lease": uuid})),
        "HeartbeatReply": obj(&["cancel_requested"], json!({"cancel_requested": {"type": "boolean"}})),
        "OpsBatch": strict(&["items"], json!({"items": {"type": "array", "maxItems": 1000, "items": strict(&["lease", "op"], json!({
            "lease": strict(&["run_id", "token"], json!({"run_id": uuid, "token": uuid})),
            "op": {"type": "integer", "minimum": 1},
            "events": {"type": "array", "items": new_event},
            "finish": strict(&["step", "status"], json!({
                "step": {"type": "integer", "minimum": 0},
                "status": {"type": "string", "enum": ["succeeded", "failed", "cancelled", "timed_out", "skipped"]},
                "exit_code": {"type": "integer"}, "error": {"type": "string"}})),
            "start": {"type": "integer", "minimum": 0},
            "complete": strict(&["outcome"], json!({
                "outcome": {"type": "string", "enum": ["succeeded", "failed", "cancelled", "interrupted"]},
                "result": {}, "error": {"type": "string"}}))}))}})),
        "OpsAnswers": obj(&["outcomes"], json!({"outcomes": {"type": "array", "items": obj(&["item", "code"], json!({
            "item": {"type": "integer"}, "code": {"type": "string"}, "last_seq": int_or_null,
            "status": {"type": "string", "nullable": true}, "message": {"type": "string", "nullable": true}}))}})),
        "ArtifactCreated": obj(&["artifact_id"], json!({"artifact_id": uuid})),
        "RunIds": strict(&["run_ids"], json!({"run_ids": {"type": "array", "items": uuid}})),
        "RunningAttempts": obj(&["running"], json!({"running": {"type": "array", "items": obj(&["run_id", "attempt"], json!({
            "run_id": uuid, "attempt": {"type": "integer"}}))}})),
        "Fleet": obj(&["fleet_id"], json!({"fleet_id": uuid})),
        "LaneList": obj(&["lanes"], json!({"lanes": {"type": "array", "items": obj(&["lane", "queued", "running"], json!({
            "lane": {"type": "string"}, "queued": {"type": "integer"}, "scheduled": {"type": "integer"},
            "running": {"type": "integer"}, "max_running": int_or_null, "oldest_queued_s": {"type": "number"}}))}})),
        "TemplateList": obj(&["templates"], json!({"templates": {"type": "array", "items": obj(&["name", "version"], json!({
            "name": {"type": "string"}, "version": {"type": "integer"}, "description": {"type": "string"},
            "default_lane": {"type": "string"}, "params_schema": {}, "steps": {}, "created_at": time}))}})),
        "TemplateSpec": obj(&["steps"], json!({"steps": {"type": "array", "minItems": 1, "items": {"type": "object"}}})),
        "TemplateApplied": obj(&["name", "version"], json!({"name": {"type": "string"}, "version": {"type": "integer"}})),
        "Live": obj(&["live"], json!({"live": {"type": "boolean"}, "database_age_ms": {"type": "integer"},
            "bound_ms": {"type": "integer"}})),
        "Ready": obj(&["ready"], json!({"ready": {"type": "boolean"}, "reason": {"type": "string"}})),
        "OpenApi": {"type": "object"},
    })
}
