//! `runlane migrate`: applies the embedded migrations. Workers and the API never migrate.

use super::common::{ConfigArgs, database_url};
use anyhow::Context;
use runlane_core::db;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Settings and the database URL, as for every command; the URL must be a role that may create
    /// the schema and roles (the database owner)
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    let pool = db::connect(database_url(&settings)?, 2, "runlane-migrate").await.context("connecting to PostgreSQL")?;
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
