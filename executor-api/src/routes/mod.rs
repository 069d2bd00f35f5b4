//! Every route, once: the table below builds both the router and `/openapi.json`, so the two
//! cannot drift apart.

pub mod artifacts;
pub mod events;
pub mod meta;
pub mod runs;
pub mod work;

use crate::state::AppState;
use axum::routing::{MethodRouter, get, post, put};

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`; the roles allowed are in the summary.
    Bearer,
    /// A signed, expiring URL.
    Signed,
    Public,
}

/// What a successful answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// A component schema of openapi.rs.
    Json(&'static str),
    Text,
    EventStream,
    Binary,
    Empty,
}

#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub auth: Auth,
    pub summary: &'static str,
    /// Query parameters: name, JSON type, required.
    pub query: &'static [(&'static str, &'static str, bool)],
    pub request: Body,
    pub status: u16,
    pub response: Body,
    pub handler: MethodRouter<AppState>,
}

macro_rules! route {
    ($m:ident $path:literal, $auth:ident, $summary:literal, query $q:expr, $req:expr => $status:literal $resp:expr, $h:expr) => {
        Route {
            method: stringify!($m),
            path: $path,
            auth: Auth::$auth,
            summary: $summary,
            query: $q,
            request: $req,
            status: $status,
            response: $resp,
            handler: $m($h),
        }
    };
}

const NONE: &[(&str, &str, bool)] = &[];

/// The API.
pub fn table() -> Vec<Route> {
    use Body::*;
    vec![
        route!(post "/v1/runs", Bearer, "Enqueue a run (operator)", query NONE, Json("RunCreate") => 201 Json("RunCreated"), runs::create),
        route!(get "/v1/runs", Bearer, "List runs, newest first (viewer, operator)",
            query &[("status", "string", false), ("lane", "string", false), ("template", "string", false),
                    ("since", "string", false), ("before", "string", false), ("limit", "integer", false)],
            Empty => 200 Json("RunList"), runs::list),
        route!(get "/v1/runs/{run_id}", Bearer, "A run with its steps (viewer, operator)", query NONE, Empty => 200 Json("Run"), runs::show),
        route!(post "/v1/runs/{run_id}/cancel", Bearer, "Cancel a run (operator)", query NONE, Json("CancelRequest") => 200 Json("StatusReply"), runs::cancel),
        route!(post "/v1/runs/{run_id}/retry", Bearer, "Queue a failed or cancelled run again (operator)", query NONE, Empty => 200 Json("StatusReply"), runs::retry),
        route!(get "/v1/runs/{run_id}/events", Bearer, "A page of a run's events after a seq (viewer, operator)",
            query &[("after", "integer", false), ("limit", "integer", false)], Empty => 200 Json("EventPage"), events::page),
        route!(get "/v1/runs/{run_id}/events/stream", Bearer, "A run's events, live (SSE; resumes from Last-Event-ID) (viewer, operator)",
            query &[("after", "integer", false)], Empty => 200 EventStream, events::stream),
        route!(get "/v1/runs/{run_id}/artifacts", Bearer, "A run's artifacts with signed download URLs (viewer, operator)", query NONE, Empty => 200 Json("ArtifactList"), artifacts::list),
        route!(get "/v1/artifacts/{artifact_id}", Signed, "Download an artifact by signed URL",
            query &[("expires", "integer", true), ("signature", "string", true)], Empty => 200 Binary, artifacts::download),
        route!(post "/v1/workers", Bearer, "Register a worker (worker)", query NONE, Json("WorkerRegistration") => 201 Json("WorkerRegistered"), work::register),
        route!(get "/v1/workers", Bearer, "List workers (viewer, operator)", query NONE, Empty => 200 Json("WorkerList"), meta::workers),
        route!(post "/v1/workers/{worker_id}/heartbeat", Bearer, "A worker's liveness and changes (worker)", query NONE, Json("WorkerHeartbeat") => 204 Empty, work::worker_heartbeat),
        route!(get "/v1/notices", Bearer, "Wake-ups for lanes and cancel requests (SSE) (worker)",
            query &[("lanes", "string", true)], Empty => 200 EventStream, work::notices),
        route!(post "/v1/claims", Bearer, "Claim runs (worker)", query NONE, Json("ClaimRequest") => 200 Json("ClaimedRuns"), work::claim),
        route!(post "/v1/runs/{run_id}/heartbeat", Bearer, "Renew a lease (worker)", query NONE, Json("LeaseBody") => 200 Json("HeartbeatReply"), work::run_heartbeat),
        route!(post "/v1/ops", Bearer, "Write about many runs at once: events, step transitions, ends; each item fenced by its lease and answered on its own (worker)",
            query NONE, Json("OpsBatch") => 200 Json("OpsAnswers"), work::apply_ops),
        route!(put "/v1/runs/{run_id}/artifacts/{name}", Bearer, "Upload an artifact's bytes (worker)",
            query &[("lease", "string", true), ("id", "string", false), ("step", "integer", false), ("content_type", "string", false)],
            Binary => 201 Json("ArtifactCreated"), work::upload_artifact),
        route!(post "/v1/running-attempts", Bearer, "Which of these runs are running, in which attempt (worker)", query NONE, Json("RunIds") => 200 Json("RunningAttempts"), work::running_attempts),
        route!(get "/v1/fleet", Bearer, "This queue's fleet id (worker)", query NONE, Empty => 200 Json("Fleet"), work::fleet),
        route!(get "/v1/lanes", Bearer, "Lane depth, running and oldest queued age (any token)", query NONE, Empty => 200 Json("LaneList"), meta::lanes),
        route!(get "/v1/templates", Bearer, "The newest version of every template (viewer, operator)", query NONE, Empty => 200 Json("TemplateList"), meta::templates),
        route!(put "/v1/templates/{name}", Bearer, "Apply a template (operator)", query NONE, Json("TemplateSpec") => 200 Json("TemplateApplied"), meta::apply_template),
        route!(get "/healthz", Public, "The database answered within the liveness bound (503 otherwise)", query NONE, Empty => 200 Json("Live"), meta::healthz),
        route!(get "/readyz", Public, "The database answers and its schema is current", query NONE, Empty => 200 Json("Ready"), meta::readyz),
        route!(get "/metrics", Public, "Prometheus metrics", query NONE, Empty => 200 Text, meta::metrics),
        route!(get "/openapi.json", Public, "This document", query NONE, Empty => 200 Json("OpenApi"), crate::openapi::serve),
    ]
}
