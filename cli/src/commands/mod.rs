//! One module per subcommand.

pub mod api;
pub mod bench;
pub mod common;
pub mod demo;
pub mod enqueue;
pub mod enqueue_batch;
pub mod migrate;
pub mod schedules;
pub mod sweep;
pub mod tail;
pub mod token;
pub mod worker;
