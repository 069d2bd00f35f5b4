//! Every route, once: the table below builds both the router and `/openapi.json`, so the two
//! cannot drift apart. Each route names the types of its query, body and answer (core's `wire`
//! module, or the records that travel as they are), and the document derives their schemas.

pub mod artifacts;
pub mod events;
pub mod lanes;
pub mod meta;
pub mod runs;
pub mod schedules;
pub mod work;

use crate::state::AppState;
use axum::routing::{MethodRouter, delete, get, post, put};
use runlane_core::lanes::{FleetStop, LaneAging, LanePause};
use runlane_core::model::{HeartbeatReply, WorkerRegistration};
use runlane_core::wire::*;
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`; the roles allowed are in the summary.
    Bearer,
    /// A signed, expiring URL.
    Signed,
    Public,
}

/// A type's schema, made by the generator of `/openapi.json`: a route names the type, never a
/// schema's name, so it cannot point at a schema that does not exist.
pub type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// What a request or a successful answer carries.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// JSON of this type (a `$ref` to its component schema).
    Json(SchemaOf),
    /// JSON of this type, or no body at all.
    OptionalJson(SchemaOf),
    Text,
    EventStream,
    Binary,
    Empty,
}

/// A JSON body of type `T`.
fn json<T: JsonSchema>() -> Body {
    Body::Json(SchemaGenerator::subschema_for::<T>)
}

/// A JSON body of type `T`, or none.
fn optional_json<T: JsonSchema>() -> Body {
    Body::OptionalJson(SchemaGenerator::subschema_for::<T>)
}

/// Query parameters: the fields of `T`.
fn params<T: JsonSchema>() -> Option<SchemaOf> {
    Some(T::json_schema)
}

#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub auth: Auth,
    pub summary: &'static str,
    /// Query parameters: the fields of this type's schema.
    pub query: Option<SchemaOf>,
    pub request: Body,
    pub status: u16,
    pub response: Body,
    /// A second successful answer, chosen by the request (a dry run's 200 beside a create's 201).
    pub also: Option<(u16, Body)>,
    pub handler: MethodRouter<AppState>,
}

macro_rules! route {
    ($m:ident $path:literal, $auth:ident, $summary:literal, query $q:expr, $req:expr => $status:literal $resp:expr, $h:expr) => {
        route!($m $path, $auth, $summary, query $q, $req => $status $resp, also None, $h)
    };
    ($m:ident $path:literal, $auth:ident, $summary:literal, query $q:expr, $req:expr => $status:literal $resp:expr, or $status2:literal $resp2:expr, $h:expr) => {
        route!($m $path, $auth, $summary, query $q, $req => $status $resp, also Some(($status2, $resp2)), $h)
    };
    ($m:ident $path:literal, $auth:ident, $summary:literal, query $q:expr, $req:expr => $status:literal $resp:expr, also $also:expr, $h:expr) => {
        Route {
            method: stringify!($m),
            path: $path,
            auth: Auth::$auth,
            summary: $summary,
            query: $q,
            request: $req,
            status: $status,
            response: $resp,
            also: $also,
            handler: $m($h),
        }
    };
}

const NONE: Option<SchemaOf> = None;

/// The API.
pub fn table() -> Vec<Route> {
    use Body::*;
    vec![
        route!(post "/v1/runs", Bearer, "Enqueue a run (operator); with dry_run=true, check it and answer what would be enqueued, writing nothing",
            query params::<RunCreateQuery>(), json::<RunCreate>() => 201 json::<RunCreated>(), or 200 json::<RunDryRun>(), runs::create),
        route!(get "/v1/runs", Bearer, "List runs, newest first (viewer, operator)",
            query params::<RunListQuery>(), Empty => 200 json::<RunList>(), runs::list),
        route!(get "/v1/runs/{run_id}", Bearer, "A run with its steps (viewer, operator)", query NONE, Empty => 200 json::<RunDetail>(), runs::show),
        route!(post "/v1/runs/{run_id}/cancel", Bearer, "Cancel a run (operator)", query NONE,
            optional_json::<CancelRequest>() => 200 json::<StatusReply>(), runs::cancel),
        route!(post "/v1/runs/{run_id}/retry", Bearer, "Queue a failed or cancelled run again (operator)", query NONE, Empty => 200 json::<StatusReply>(), runs::retry),
        route!(get "/v1/runs/{run_id}/events", Bearer, "A page of a run's events after a seq (viewer, operator)",
            query params::<EventPageQuery>(), Empty => 200 json::<EventPage>(), events::page),
        route!(get "/v1/runs/{run_id}/events/stream", Bearer, "A run's events, live (SSE; resumes from Last-Event-ID) (viewer, operator)",
            query params::<EventStreamQuery>(), Empty => 200 EventStream, events::stream),
        route!(get "/v1/runs/{run_id}/artifacts", Bearer, "A run's artifacts with signed download URLs (viewer, operator)", query NONE, Empty => 200 json::<ArtifactList>(), artifacts::list),
        route!(get "/v1/artifacts/{artifact_id}", Signed, "Download an artifact by signed URL",
            query params::<SignedUrlQuery>(), Empty => 200 Binary, artifacts::download),
        route!(post "/v1/workers", Bearer, "Register a worker (worker)", query NONE, json::<WorkerRegistration>() => 201 json::<WorkerRegistered>(), work::register),
        route!(get "/v1/workers", Bearer, "List workers (viewer, operator)", query NONE, Empty => 200 json::<WorkerList>(), meta::workers),
        route!(post "/v1/workers/{worker_id}/heartbeat", Bearer, "A worker's liveness and changes (worker)", query NONE, json::<WorkerHeartbeat>() => 204 Empty, work::worker_heartbeat),
        route!(get "/v1/notices", Bearer, "Wake-ups for lanes and cancel requests (SSE) (worker)",
            query params::<NoticesQuery>(), Empty => 200 EventStream, work::notices),
        route!(post "/v1/claims", Bearer, "Claim runs (worker)", query NONE, json::<ClaimRequest>() => 200 json::<ClaimedRuns>(), work::claim),
        route!(post "/v1/runs/{run_id}/heartbeat", Bearer, "Renew a lease (worker)", query NONE, json::<RunHeartbeat>() => 200 json::<HeartbeatReply>(), work::run_heartbeat),
        route!(post "/v1/ops", Bearer, "Write about many runs at once: events, step transitions, ends; each item fenced by its lease and answered on its own (worker)",
            query NONE, json::<OpsBatch>() => 200 json::<OpsAnswers>(), work::apply_ops),
        route!(put "/v1/runs/{run_id}/artifacts/{name}", Bearer, "Upload an artifact's bytes (worker)",
            query params::<ArtifactUploadQuery>(), Binary => 201 json::<ArtifactCreated>(), work::upload_artifact),
        route!(post "/v1/running-attempts", Bearer, "Which of these runs are running, in which attempt (worker)", query NONE, json::<RunIds>() => 200 json::<RunningAttempts>(), work::running_attempts),
        route!(get "/v1/fleet", Bearer, "This queue's fleet id (worker)", query NONE, Empty => 200 json::<Fleet>(), work::fleet),
        route!(get "/v1/lanes", Bearer, "Lane depth, running, oldest queued age, pauses and aging (any token)", query NONE, Empty => 200 json::<LaneList>(), meta::lanes),
        route!(post "/v1/lanes/{lane}/pause", Bearer, "Pause a lane: nothing more of it is claimed; running runs go on (operator)", query NONE,
            json::<LaneChange>() => 200 json::<LanePause>(), lanes::pause),
        route!(post "/v1/lanes/{lane}/resume", Bearer, "Resume a paused lane and wake its workers (operator)", query NONE,
            json::<LaneChange>() => 200 json::<LanePause>(), lanes::resume),
        route!(post "/v1/lanes/{lane}/aging", Bearer, "Set a lane's priority aging: a waiting run gains one point per ms_per_point of waiting; 0 turns it off (operator)",
            query NONE, json::<LaneAgingChange>() => 200 json::<LaneAging>(), lanes::aging),
        route!(post "/v1/lanes/stop", Bearer, "Emergency stop: pause every lane and, with cancel_running, cancel every running run (operator, every lane)",
            query NONE, json::<FleetStopRequest>() => 200 json::<FleetStop>(), lanes::stop),
        route!(get "/v1/lanes/history", Bearer, "Pauses, resumes and stops, newest first, with who and why (viewer, operator)",
            query params::<LaneHistoryQuery>(), Empty => 200 json::<LaneHistory>(), lanes::history),
        route!(get "/v1/templates", Bearer, "The newest version of every template (viewer, operator)", query NONE, Empty => 200 json::<TemplateList>(), meta::templates),
        route!(put "/v1/templates/{name}", Bearer, "Apply a template (operator)", query NONE, json::<TemplateSpec>() => 200 json::<TemplateApplied>(), meta::apply_template),
        route!(post "/v1/schedules", Bearer, "Add a schedule: a template enqueued at every slot of a cron expression in a time zone (operator)",
            query NONE, json::<ScheduleCreate>() => 201 json::<ScheduleDetail>(), schedules::create),
        route!(get "/v1/schedules", Bearer, "List schedules (viewer, operator)", query NONE, Empty => 200 json::<ScheduleList>(), schedules::list),
        route!(get "/v1/schedules/{name}", Bearer, "A schedule with its next slots (viewer, operator)", query NONE, Empty => 200 json::<ScheduleDetail>(), schedules::show),
        route!(post "/v1/schedules/{name}/pause", Bearer, "Pause a schedule (operator)", query NONE,
            optional_json::<SchedulePause>() => 200 json::<ScheduleDetail>(), schedules::pause),
        route!(post "/v1/schedules/{name}/resume", Bearer, "Resume a schedule from its next slot after now (operator)", query NONE, Empty => 200 json::<ScheduleDetail>(), schedules::resume),
        route!(delete "/v1/schedules/{name}", Bearer, "Remove a schedule; the runs it enqueued stay (operator)", query NONE, Empty => 204 Empty, schedules::remove),
        route!(get "/healthz", Public, "The database answered within the liveness bound (503 otherwise)", query NONE, Empty => 200 json::<Live>(), meta::healthz),
        route!(get "/readyz", Public, "The database answers and its schema is current", query NONE, Empty => 200 json::<Ready>(), meta::readyz),
        route!(get "/metrics", Public, "Prometheus metrics", query NONE, Empty => 200 Text, meta::metrics),
        route!(get "/openapi.json", Public, "This document", query NONE, Empty => 200 json::<meta::OpenApiDocument>(), meta::openapi),
    ]
}
