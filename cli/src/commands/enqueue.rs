//! `runlane enqueue TEMPLATE --lane A --param k=v …`: one run; prints its id. With `--batch FILE`,
//! many runs from JSON lines in one transaction (see [`super::enqueue_batch`]). With `--dry-run`, what
//! would be enqueued, nothing written.

use super::common::{ConfigArgs, connect};
use anyhow::{Context, bail};
use runlane_core::db;
use runlane_core::model::{EnqueueRequest, Lane, SessionId};
use runlane_core::wire::RunDryRun;
use serde_json::{Map, Value};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Template name
    #[arg(required_unless_present = "batch")]
    template: Option<String>,
    /// Lane (A–D); the template's default lane when omitted
    #[arg(long)]
    lane: Option<Lane>,
    /// A param: `key=value` (a string) or `key:=json` (any JSON value); repeatable
    #[arg(long = "param", short = 'p')]
    params: Vec<String>,
    /// Higher runs first within the lane (-100..100)
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Enqueueing twice with the same key gives the same run
    #[arg(long)]
    idempotency_key: Option<String>,
    #[arg(long)]
    session: Option<SessionId>,
    /// Due at this time (RFC 3339, e.g. 2026-12-24T06:00:00Z); it waits as scheduled until then
    #[arg(long)]
    run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Enqueue every run in FILE (`-`: stdin), one JSON object per line: {"template": …, "params":
    /// {…}, "lane", "priority", "run_at", "idempotency_key", "session_id"}; all or none
    #[arg(long, value_name = "FILE", conflicts_with_all = ["template", "lane", "params", "priority", "idempotency_key", "run_at"])]
    batch: Option<std::path::PathBuf>,
    /// Check the run as the enqueue would and show what it would enqueue (params with defaults,
    /// steps rendered, secrets masked); write nothing
    #[arg(long, conflicts_with = "batch")]
    dry_run: bool,
    /// Print {"run_id": …} (a line per run with --batch; the whole dry run with --dry-run) instead of the bare id
    #[arg(long)]
    json: bool,
}

/// Parses `key=value` / `key:=json` pairs into a params object.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<Value> {
    let mut params = Map::new();
    for pair in pairs {
        let (key, value) = if let Some((k, v)) = pair.split_once(":=") {
            (k, serde_json::from_str(v).with_context(|| format!("--param {pair}: the value after := must be JSON"))?)
        } else if let Some((k, v)) = pair.split_once('=') {
            (k, Value::String(v.to_string()))
        } else {
            bail!("--param {pair}: write key=value or key:=json");
        };
        if key.is_empty() {
            bail!("--param {pair}: the key is empty");
        }
        params.insert(key.to_string(), value);
    }
    Ok(Value::Object(params))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    if let Some(file) = &args.batch {
        let reqs = super::enqueue_batch::read(file, args.session)?;
        let pool = connect(&settings, "runlane-enqueue").await?;
        return super::enqueue_batch::enqueue(&pool, &reqs, args.json).await;
    }
    let pool = connect(&settings, "runlane-enqueue").await?;
    let req = EnqueueRequest {
        template: args.template.context("a template name is needed")?,
        params: parse_params(&args.params)?,
        lane: args.lane,
        priority: args.priority,
        run_at: args.run_at,
        idempotency_key: args.idempotency_key,
        session_id: args.session,
    };
    if args.dry_run {
        let shown = runlane_core::dry_run::dry_run(&pool, &req).await.map_err(with_apply_hint)?;
        if args.json {
            println!("{}", serde_json::to_string(&shown)?);
        } else {
            print!("{}", describe(&shown));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = db::enqueue_run(&pool, &req).await.map_err(with_apply_hint)?;
    if args.json {
        println!("{}", serde_json::json!({ "run_id": run }));
    } else {
        println!("{run}");
    }
    Ok(ExitCode::SUCCESS)
}

/// An unknown template on a database where none was applied: say how to apply them.
fn with_apply_hint(e: runlane_core::Error) -> anyhow::Error {
    match e {
        runlane_core::Error::NotFound(m) if m.contains("no template has been applied yet") => {
            anyhow::anyhow!("{m}: apply the template files first, e.g. `runlane templates apply templates/`")
        }
        e => e.into(),
    }
}

/// A dry run for people: what would be enqueued, then each step as the worker would run it.
fn describe(d: &RunDryRun) -> String {
    let mut out = String::from("dry run: nothing was enqueued\n");
    if let Some(run) = d.existing_run_id {
        out += &format!("the idempotency key names run {run}: enqueue would return it ({})\n", d.status);
    }
    let when =
        if d.status == "scheduled" { format!("scheduled for {}", d.run_at.to_rfc3339()) } else { d.status.clone() };
    out += &format!("template  {} (version {})\n", d.template, d.template_version);
    out += &format!("lane      {}, priority {}, {when}\n", d.lane, d.priority);
    let requires = if d.requires.is_empty() { "nothing".to_string() } else { d.requires.join(", ") };
    out += &format!("requires  {requires}\n");
    out += &format!("timeout   {} ms, at most {} attempt(s)\n", d.timeout_ms, d.max_attempts);
    out += &format!("params    {}\n", d.params);
    out += "steps\n";
    for step in &d.steps {
        out += &format!("  {}. {} ({})\n", step.index, step.name, step.kind);
        for (key, value) in step.spec.as_object().into_iter().flatten() {
            let unset = match value {
                Value::Bool(b) => !b,
                Value::Object(o) => o.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            };
            if unset || matches!(key.as_str(), "name" | "kind") {
                continue;
            }
            let text = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            out += &format!("       {key}: {}\n", text.trim_end().replace('\n', "\n         "));
        }
        if let Some(problem) = &step.problem {
            out += &format!("       would fail: {problem}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_strings_and_json() {
        let p = parse_params(&["who=world".into(), "n:=3".into(), "eq=a=b".into()]).expect("parses");
        assert_eq!(p, serde_json::json!({"who": "world", "n": 3, "eq": "a=b"}));
        assert!(parse_params(&["novalue".into()]).is_err());
        assert!(parse_params(&["n:={".into()]).is_err());
    }
}
