//! `runlane migrate`: applies the embedded migrations. Workers and the API never migrate.

use anyhow::Context;
use runlane_core::db;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL URL of a role that may create the schema (the database owner)
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&args.database_url, 2, "runlane-migrate").await.context("connecting to PostgreSQL")?;
    let (before, after) = db::migrate(&pool).await?;
    if args.json {
        println!("{}", serde_json::json!({"from_version": before, "to_version": after}));
    } else if before == after {
        println!("schema already at version {after}: nothing to do");
    } else {
        println!("schema migrated from version {before} to {after}");
    }
    Ok(ExitCode::SUCCESS)
}
