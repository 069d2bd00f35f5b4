//! The `runlane` command: parses flags, loads settings, and calls into the library crates.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "runlane", version, about = "Runbooks on a worker fleet, with PostgreSQL as the only broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a throwaway PostgreSQL and a worker, run a sample in every lane, tail them
    Demo(commands::demo::Args),
    /// Run the worker daemon
    Worker(commands::worker::Args),
    /// Run the executor API server
    Api(commands::api::Args),
    /// Create or revoke API tokens
    Token(commands::token::Args),
    /// Apply, list, show and validate templates
    Templates(commands::templates::Args),
    /// Enqueue a run of a template; prints its id
    Enqueue(commands::enqueue::Args),
    /// Follow a run's events live; exits 0 succeeded, 1 failed, 2 cancelled
    Tail(commands::tail::Args),
    /// List lanes; pause or resume one; stop the fleet (pause all, optionally cancel what runs)
    Lanes(commands::lanes::Args),
    /// Recurring runs: add, list, show, pause, resume, rm
    Schedules(commands::schedules::Args),
    /// Sweeper passes now (expired leases, deadlines, due runs, silent workers), then a prune
    Sweep(commands::sweep::Args),
    /// Delete finished runs past their retention (the template's, else the fleet's); --dry-run shows what would go
    Prune(commands::prune::Args),
    /// Measure throughput and latencies on a throwaway PostgreSQL
    Bench(commands::bench::Args),
    /// Apply the embedded schema migrations (idempotent; refuses a newer schema)
    Migrate(commands::migrate::Args),
}

/// Logs go to stderr: `RUNLANE_LOG` is the filter (default `info,sqlx=warn`; `warn` for `bench`, whose
/// in-process workers would otherwise log every run), `RUNLANE_LOG_FORMAT=json` switches to one JSON
/// object per line.
fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNLANE_LOG").unwrap_or_else(|_| default_filter.into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if std::env::var("RUNLANE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Bench(_)) { "warn" } else { "info,sqlx=warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Worker(args) => commands::worker::run(args).await,
            Command::Api(args) => commands::api::run(args).await,
            Command::Token(args) => commands::token::run(args).await,
            Command::Templates(args) => commands::templates::run(args).await,
            Command::Enqueue(args) => commands::enqueue::run(args).await,
            Command::Tail(args) => commands::tail::run(args).await,
            Command::Lanes(args) => commands::lanes::run(args).await,
            Command::Schedules(args) => commands::schedules::run(args).await,
            Command::Sweep(args) => commands::sweep::run(args).await,
            Command::Prune(args) => commands::prune::run(args).await,
            Command::Bench(args) => commands::bench::run(args).await,
            Command::Migrate(args) => commands::migrate::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
