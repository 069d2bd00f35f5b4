//! `runlane enqueue --batch FILE`: many runs from JSON lines, in one transaction (`enqueue_runs` in
//! calls of [`CHUNK`] runs). Every line is read and checked first; the first run the queue refuses
//! is named by its line, and then nothing is enqueued.

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use runlane_core::db;
use runlane_core::model::{EnqueueRequest, Lane, SessionId};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

/// Runs per `enqueue_runs` call.
pub const CHUNK: usize = 10_000;

/// Parse errors listed before giving up on a file.
const MAX_LISTED: usize = 20;

/// One line of a batch file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    template: String,
    #[serde(default = "empty_params")]
    params: Value,
    lane: Option<Lane>,
    priority: Option<i32>,
    run_at: Option<DateTime<Utc>>,
    idempotency_key: Option<String>,
    session_id: Option<SessionId>,
}

fn empty_params() -> Value {
    Value::Object(Default::default())
}

/// The runs of a file, each with the line it came from.
#[derive(Debug)]
pub struct Batch {
    reqs: Vec<EnqueueRequest>,
    lines: Vec<usize>,
}

/// Reads `path` (`-`: stdin). Blank lines are skipped; `session` goes to lines that name none. Every
/// unreadable line is reported (up to 20), with its number.
pub fn read(path: &Path, session: Option<SessionId>) -> anyhow::Result<Batch> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut batch = Batch { reqs: Vec::new(), lines: Vec::new() };
    let mut problems = Vec::new();
    for (i, text) in reader.lines().enumerate() {
        let text = text.with_context(|| format!("reading {}", path.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&text) {
            Ok(l) => {
                batch.reqs.push(EnqueueRequest {
                    template: l.template,
                    params: l.params,
                    lane: l.lane,
                    priority: l.priority,
                    run_at: l.run_at,
                    idempotency_key: l.idempotency_key,
                    session_id: l.session_id.or(session),
                });
                batch.lines.push(i + 1);
            }
            Err(e) if problems.len() < MAX_LISTED => problems.push(format!("line {}: {e}", i + 1)),
            Err(_) => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} is not a batch of runs (one JSON object per line, with at least \"template\"); nothing was enqueued:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    if batch.reqs.is_empty() {
        bail!("{} holds no runs", path.display());
    }
    Ok(batch)
}

/// Enqueues the whole batch or none of it; prints the run ids in the file's order (with `json`, one
/// `{"line": …, "run_id": …}` per run).
pub async fn enqueue(pool: &PgPool, batch: &Batch, json: bool) -> anyhow::Result<ExitCode> {
    let progress = std::io::stderr().is_terminal() && batch.reqs.len() > CHUNK;
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(batch.reqs.len());
    for (n, chunk) in batch.reqs.chunks(CHUNK).enumerate() {
        let offset = n * CHUNK;
        let got = db::enqueue_runs(&mut *tx, chunk).await.map_err(|e| name_the_line(e, offset, &batch.lines))?;
        ids.extend(got);
        if progress {
            eprint!("\r{} of {} runs checked …", ids.len(), batch.reqs.len());
        }
    }
    tx.commit().await.context("committing the batch (nothing was enqueued)")?;
    if progress {
        eprintln!();
    }
    for (id, line) in ids.iter().zip(&batch.lines) {
        if json {
            println!("{}", serde_json::json!({ "line": line, "run_id": id }));
        } else {
            println!("{id}");
        }
    }
    eprintln!("enqueued {} runs", ids.len());
    Ok(ExitCode::SUCCESS)
}

/// The queue names a refused run by its place in the call ("run #N: …"); the user knows it by its
/// line.
fn name_the_line(err: runlane_core::Error, offset: usize, lines: &[usize]) -> anyhow::Error {
    let text = err.to_string();
    let line = text
        .strip_prefix("run #")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(n, why)| Some((lines.get(offset + n.parse::<usize>().ok()?.checked_sub(1)?)?, why)));
    match line {
        Some((line, why)) => anyhow!("line {line}: {why} (nothing was enqueued)"),
        None => anyhow!(err).context("nothing was enqueued"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_run_is_named_by_its_line() {
        let err = runlane_core::Error::NotFound("run #2: unknown template 'nope'".into());
        let named = name_the_line(err, 10_000, &(1..=20_010).map(|i| i + 3).collect::<Vec<_>>());
        assert_eq!(named.to_string(), "line 10005: unknown template 'nope' (nothing was enqueued)");
        let other = name_the_line(runlane_core::Error::Conflict("busy".into()), 0, &[1]);
        assert_eq!(format!("{other:#}"), "nothing was enqueued: busy");
    }

    #[test]
    fn every_bad_line_is_listed_and_blank_lines_skipped() {
        let dir = std::env::temp_dir().join(format!("runlane-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("runs.jsonl");
        std::fs::write(&file, "{\"template\": \"a\"}\n\n{\"templat\": \"b\"}\nnot json\n").expect("write");
        let err = read(&file, None).expect_err("bad lines").to_string();
        assert!(err.contains("line 3: unknown field `templat`"), "{err}");
        assert!(err.contains("line 4: "), "{err}");
        std::fs::write(
            &file,
            "{\"template\": \"a\", \"lane\": \"B\"}\n\n{\"template\": \"b\", \"params\": {\"n\": 1}}\n",
        )
        .expect("write");
        let batch = read(&file, None).expect("good lines");
        assert_eq!(batch.lines, [1, 3]);
        assert_eq!(batch.reqs[0].lane, Some(Lane::B));
        assert_eq!(batch.reqs[1].params, serde_json::json!({"n": 1}));
        assert_eq!(batch.reqs[0].params, serde_json::json!({}));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
