//! One module per subcommand.

pub mod api;
pub mod bench;
pub mod common;
pub mod demo;
pub mod enqueue;
pub mod enqueue_batch;
pub mod lanes;
pub mod migrate;
pub mod prune;
pub mod schedules;
pub mod sweep;
pub mod tail;
pub mod templates;
pub mod token;
pub mod worker;
