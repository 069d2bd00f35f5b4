//! `runlane templates apply|list|show|validate`: template files into the database, and what it holds.
//! Every rule is the database's (`template_problems`, which `apply_template` enforces), so a file that
//! validates is a file that applies, whichever way it is applied.

use super::common::{ConfigArgs, connect, duration};
use anyhow::{Context, bail};
use runlane_core::db::{self, TemplatePolicy, TemplateVersion};
use runlane_core::templates::{self, Template};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Apply template files (a directory: its *.yaml and *.yml files), all or none; prints each
    /// template's version
    Apply {
        #[arg(required = true, value_name = "FILE_OR_DIR")]
        paths: Vec<PathBuf>,
        /// One JSON object a template: {"name", "version", "changed", "file"}
        #[arg(long)]
        json: bool,
    },
    /// The newest version of every template, with its policy
    List {
        #[arg(long)]
        json: bool,
    },
    /// One template version: its policy (defaults filled in) and its spec as applied
    Show {
        name: String,
        /// This version instead of the newest
        #[arg(long)]
        version: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// Check template files by the database's rules without applying them (read access is enough);
    /// exits 1 naming every problem
    Validate {
        #[arg(required = true, value_name = "FILE_OR_DIR")]
        paths: Vec<PathBuf>,
    },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.config.load(Vec::new())?;
    match args.action {
        Action::Apply { paths, json } => {
            let templates = read_files(&paths).context("nothing was applied")?;
            let pool = connect(&settings, "runlane-templates").await?;
            check(&pool, &templates).await.context("nothing was applied")?;
            apply(&pool, &templates, json).await?;
        }
        Action::Validate { paths } => {
            let templates = read_files(&paths)?;
            let pool = connect(&settings, "runlane-templates").await?;
            check(&pool, &templates).await?;
            for t in &templates {
                println!("{}: {} is valid", t.source.display(), t.name);
            }
        }
        Action::List { json } => {
            let pool = connect(&settings, "runlane-templates").await?;
            let list = db::list_template_versions(&pool).await?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print_list(&list);
            }
        }
        Action::Show { name, version, json } => {
            let pool = connect(&settings, "runlane-templates").await?;
            let t = db::get_template_version(&pool, &name, version).await?;
            if json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                print_version(&t)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every file read; every unreadable file and every name given by two files reported at once.
fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<Template>> {
    let mut problems = Vec::new();
    let mut templates: Vec<Template> = Vec::new();
    for read in templates::read_paths(paths) {
        match read {
            Ok(t) => templates.push(t),
            Err(e) => problems.push(e),
        }
    }
    let mut by_name: BTreeMap<&str, &Template> = BTreeMap::new();
    for t in &templates {
        if let Some(first) = by_name.insert(&t.name, t) {
            problems.push(format!(
                "{}: template '{}' is also defined by {}",
                t.locate("name"),
                t.name,
                first.source.display()
            ));
        }
    }
    if problems.is_empty() {
        return Ok(templates);
    }
    for p in &problems {
        eprintln!("{p}");
    }
    bail!("{} problem(s) reading template files", problems.len())
}

/// The database's problems with every template, each at the line of its field; an error if any.
async fn check(pool: &PgPool, templates: &[Template]) -> anyhow::Result<()> {
    let mut count = 0;
    for t in templates {
        for p in db::template_problems(pool, &t.name, &t.spec).await? {
            eprintln!("{}: {}", t.locate(&p.field), p.problem);
            count += 1;
        }
    }
    if count > 0 {
        bail!("{count} problem(s) in template files");
    }
    Ok(())
}

/// Applies every template in one transaction: all or none.
async fn apply(pool: &PgPool, templates: &[Template], json: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let mut applied = Vec::new();
    for t in templates {
        let a = db::apply_template_reporting(&mut *tx, &t.name, &t.spec)
            .await
            .with_context(|| format!("{}: nothing was applied", t.source.display()))?;
        applied.push((t, a));
    }
    tx.commit().await?;
    for (t, a) in applied {
        if json {
            let file = t.source.display().to_string();
            let line = serde_json::json!({"name": t.name, "version": a.version, "changed": a.changed, "file": file});
            println!("{line}");
        } else {
            let unchanged = if a.changed { "" } else { " (unchanged)" };
            println!("{} → v{}{unchanged}", t.name, a.version);
        }
    }
    Ok(())
}

fn print_list(list: &[TemplateVersion]) {
    if list.is_empty() {
        println!("no template has been applied yet: runlane templates apply templates/");
        return;
    }
    println!(
        "{:<24} {:>4} {:<4} {:>4} {:>8} {:>8}  {:<12} DESCRIPTION",
        "NAME", "VER", "LANE", "PRIO", "TIMEOUT", "ATTEMPTS", "REQUIRES"
    );
    for t in list {
        let p = &t.policy;
        let requires = if p.requires.is_empty() { "-".to_string() } else { p.requires.join(",") };
        println!(
            "{:<24} {:>4} {:<4} {:>4} {:>8} {:>8}  {:<12} {}",
            t.name,
            t.version,
            p.lane,
            p.priority,
            duration(i64::from(p.timeout_ms)),
            p.max_attempts,
            requires,
            t.description
        );
    }
}

fn print_version(t: &TemplateVersion) -> anyhow::Result<()> {
    println!("{} version {} of {}, applied {}", t.name, t.version, t.newest_version, t.created_at.to_rfc3339());
    if !t.description.is_empty() {
        println!("{}", t.description);
    }
    println!("\npolicy (defaults filled in):");
    for (field, value) in policy_lines(&t.policy) {
        println!("  {field:<20} {value}");
    }
    println!("\nspec as applied:");
    for line in serde_yaml_ng::to_string(&t.spec).context("writing the spec as YAML")?.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// Each policy field by its name in a template file, with its value (and the value in words).
fn policy_lines(p: &TemplatePolicy) -> Vec<(&'static str, String)> {
    let ms = |v: i32| format!("{v} ({})", duration(i64::from(v)));
    vec![
        ("lane", p.lane.clone()),
        ("priority", p.priority.to_string()),
        ("timeout_ms", ms(p.timeout_ms)),
        ("max_attempts", p.max_attempts.to_string()),
        ("backoff_base_ms", ms(p.backoff_base_ms)),
        ("backoff_multiplier", p.backoff_multiplier.to_string()),
        ("backoff_max_ms", ms(p.backoff_max_ms)),
        ("backoff_jitter", p.backoff_jitter.to_string()),
        ("max_crashes", p.max_crashes.to_string()),
        ("requires", if p.requires.is_empty() { "-".into() } else { p.requires.join(", ") }),
        (
            "retention_s",
            match p.retention_s {
                Some(s) => format!("{s} ({})", duration(s * 1000)),
                None => "- (the fleet's retention)".into(),
            },
        ),
    ]
}
