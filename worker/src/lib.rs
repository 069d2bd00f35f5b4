//! # runlane-worker
//!
//! The worker daemon: claims runs from its lanes, executes their steps, streams their output.
//!
//! # Layout
//! - [`daemon`]: wiring of a worker process over PostgreSQL (pool, executors, sweeper, health).
//! - [`worker`]: the process: registration, the claim loop, signals, drain.
//! - [`run_task`]: one run from claim to completion: steps in order, heartbeats, cancel, `always` steps.
//! - [`lease`]: heartbeats, giving a lease up by the worker's own clock, retrying queue calls.
//! - [`step_files`]: a run's directories on disk, large params as files, artifact uploads.
//! - [`executors`]: one file per step kind behind the `Executor` trait.
//! - [`containers`]: the Docker engine: connection, orphan reaping, importing a local image.
//! - [`output`]: step output → lines per stream, secrets masked, per-run cap (head and tail).
//! - [`run_writer`]: everything a run task writes, in order, numbered, through the batcher.
//! - [`batcher`]: one per worker: many runs' writes in one `apply_ops` call and one commit.
//! - [`http_broker`]: the `Broker` over the executor API, for workers without database credentials.
//! - [`sweeper`]: the leader-only maintenance loop.
//! - [`schedule_ticker`]: enqueues schedules' due slots, one tick at a time fleet-wide.
//! - [`process_group`]: which processes of a step's group are still alive (/proc).
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`; [`metrics`]: the counters behind them.

pub mod batcher;
pub mod containers;
pub mod daemon;
pub mod executors;
pub mod health;
pub mod http_broker;
pub mod lease;
pub mod metrics;
pub mod output;
pub mod process_group;
pub mod run_task;
pub mod run_writer;
pub mod schedule_ticker;
pub mod step_files;
pub mod sweeper;
pub mod worker;
