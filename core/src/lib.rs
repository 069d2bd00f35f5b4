//! # runlane-core
//!
//! The shared ground of every runlane process.
//!
//! # Layout
//! - [`artifacts`]: where artifacts go: inline in PostgreSQL, or the object store by size.
//! - [`model`]: ids, lanes, statuses and the records that cross the queue seam.
//! - [`lanes`]: pausing a lane, stopping the fleet, and the history of both.
//! - [`error`]: the one error type of the queue layer; its variants decide what happens next.
//! - [`dry_run`]: a run checked as an enqueue checks it and shown as it would run, nothing written.
//! - [`db`]: every SQL call runlane makes, one small function per queue function, plus
//!   connecting and the embedded migrations.
//! - [`broker`]: the `Broker` seam a worker reaches the queue through, and its PostgreSQL implementation.
//! - [`notices`]: LISTEN/NOTIFY: the channels, their payloads, a listener that reconnects.
//! - [`follow`]: following one run's events by cursor, woken by notices (`tail`, SSE).
//! - [`ops`]: the batched writes about runs (`RunOps`) and their answers, on the seam and on the wire.
//! - [`wire`]: the executor API's JSON (every body, query and answer), shared by its handlers, the
//!   worker's HTTP broker and `/openapi.json`.
//! - [`settings`]: the layered, validated settings of every process.
//! - [`steps`]: the step DSL (shell, docker, http, noop) and `${{ params.x }}` substitution.
//! - [`render`]: params filled into each kind of step, for the worker and for dry runs.
//! - [`retention`]: pruning finished runs past their retention (the template's, else the fleet's), and its preview.
//! - [`templates`]: template files (YAML) parsed and checked before they are applied.
//! - [`local_pg`]: a throwaway PostgreSQL cluster from the `initdb`/`pg_ctl` on PATH (demo and tests).

pub mod artifacts;
pub mod broker;
pub mod db;
pub mod dry_run;
pub mod error;
pub mod follow;
pub mod lanes;
pub mod local_pg;
pub mod model;
pub mod notices;
pub mod ops;
pub mod render;
pub mod retention;
pub mod settings;
pub mod steps;
pub mod templates;
pub mod wire;

pub use error::{Error, Result};
