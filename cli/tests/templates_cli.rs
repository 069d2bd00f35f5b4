//! `runlane templates apply|list|show|validate` against a real PostgreSQL, and the README's path:
//! migrate, apply the templates, start a worker, enqueue.

use runlane_core::db;
use runlane_core::model::{EnqueueRequest, Lane, RunId};
use runlane_tests::TestDb;
use runlane_tests::process::{PATIENCE, WorkerProc, spawn_tail, wait_until};
use runlane_tests::templates::bad_policies;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

/// `runlane ARGS…` against `url`: (succeeded, stdout, stderr).
fn runlane(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).env("DATABASE_URL", url).output().expect("runlane");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runlane-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A template file named `name` of one no-op step with `fields` added, written as block YAML;
/// returns its path and the line of each top-level field.
fn write_template(dir: &Path, name: &str, fields: &Value) -> (PathBuf, Vec<String>) {
    let mut file = json!({"name": name, "steps": [{"name": "s", "kind": "noop"}]});
    for (k, v) in fields.as_object().expect("fields") {
        file[k] = v.clone();
    }
    let text = serde_yaml_ng::to_string(&file).expect("yaml");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, &text).expect("write template");
    (path, text.lines().map(str::to_string).collect())
}

/// `path:line` of `field` in a file written by [`write_template`].
fn at(path: &Path, lines: &[String], field: &str) -> String {
    let n = lines.iter().position(|l| l.starts_with(&format!("{field}:"))).expect("the field is on a line") + 1;
    format!("{}:{n}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_a_directory_then_list_and_show_what_it_stored() {
    let t = TestDb::new().await;
    let dir = shipped_templates();
    let files = std::fs::read_dir(&dir)
        .expect("templates/")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml")));
    let shipped = files.count();

    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "apply", dir.to_str().expect("path")]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), shipped, "{stdout}");
    assert!(stdout.contains("db-backup → v1\n") && stdout.contains("hello → v1\n"), "{stdout}");

    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "apply", "--json", dir.to_str().expect("path")]);
    assert!(ok, "{stderr}");
    let again: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert!(again.iter().all(|a| a["changed"] == false && a["version"] == 1), "unchanged: {stdout}");

    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "list", "--json"]);
    assert!(ok, "{stderr}");
    let list: Vec<Value> = serde_json::from_str(&stdout).expect("list json");
    let names: Vec<&str> = list.iter().map(|t| t["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["db-backup", "docker-smoke", "health-probe", "hello", "noop"]);
    let (ok, table, _) = runlane(&t.url, &["templates", "list"]);
    assert!(ok && table.lines().any(|l| l.starts_with("db-backup") && l.contains("10m")), "{table}");

    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "show", "db-backup", "--json"]);
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).expect("show json");
    let policy = &shown["policy"];
    assert_eq!(
        (&policy["lane"], &policy["timeout_ms"], &policy["max_attempts"], &policy["backoff_base_ms"]),
        (&json!("C"), &json!(600000), &json!(3), &json!(5000)),
        "{shown}"
    );
    assert_eq!((&policy["backoff_multiplier"], &policy["retention_s"]), (&json!(2.0), &Value::Null), "defaults");
    assert_eq!(shown["spec"]["steps"][0]["name"], "dump", "the spec as applied");
    assert_eq!(shown["spec"].get("name"), None);
    let (ok, text, _) = runlane(&t.url, &["templates", "show", "db-backup"]);
    assert!(ok && text.contains("backoff_base_ms      5000 (5s)") && text.contains("spec as applied:"), "{text}");

    let (ok, _, stderr) = runlane(&t.url, &["templates", "show", "db-backup", "--version", "2"]);
    assert!(!ok && stderr.contains("template 'db-backup' has no version 2"), "{stderr}");

    // Every policy field written in a file comes back as written.
    let policy = json!({"lane": "A", "priority": -5, "timeout_ms": 90000, "max_attempts": 7, "backoff_base_ms": 250,
                        "backoff_multiplier": 1.5, "backoff_max_ms": 8000, "backoff_jitter": 0.3, "max_crashes": 0,
                        "requires": ["gpu", "fra1"], "retention_s": 3600});
    let mut fields = policy.clone();
    fields["description"] = json!("every field");
    let scratch = scratch_dir("full-template");
    let (file, _) = write_template(&scratch, "full", &fields);
    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "apply", file.to_str().expect("path")]);
    assert!(ok && stdout == "full → v1\n", "{stdout}{stderr}");
    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "show", "full", "--json"]);
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).expect("show json");
    let mut expected = policy;
    expected["requires"] = json!(["fra1", "gpu"]);
    assert_eq!(shown["policy"], expected);
    assert_eq!(
        (&shown["description"], &shown["version"], &shown["newest_version"]),
        (&json!("every field"), &json!(1), &json!(1))
    );
    let _ = std::fs::remove_dir_all(scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_policy_value_is_refused_naming_its_field_line_and_rule() {
    let t = TestDb::new().await;
    let dir = scratch_dir("bad-templates");
    for (fields, field, problem) in bad_policies() {
        let (path, lines) = write_template(&dir, "bad", &fields);
        let expected = format!("{}: {problem}", at(&path, &lines, field));
        let file = path.to_str().expect("path");
        let (ok, _, stderr) = runlane(&t.url, &["templates", "validate", file]);
        assert!(!ok, "validate passed {fields}");
        assert!(stderr.contains(&expected), "validate of {fields}: '{stderr}' lacks '{expected}'");
        let (ok, _, stderr) = runlane(&t.url, &["templates", "apply", file]);
        assert!(!ok, "apply passed {fields}");
        assert!(stderr.contains(&expected) && stderr.contains("nothing was applied"), "apply of {fields}: {stderr}");
    }
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "nothing applied");

    // A directory with one bad file among good ones applies none of them.
    let mixed = scratch_dir("mixed-templates");
    write_template(&mixed, "fine", &json!({"max_attempts": 2}));
    let (bad, lines) = write_template(&mixed, "flaky", &json!({"backoff_multiplier": 0.5}));
    let (ok, _, stderr) = runlane(&t.url, &["templates", "apply", mixed.to_str().expect("path")]);
    assert!(!ok);
    let expected =
        format!("{}: backoff_multiplier must be between 1 and 10, got 0.5", at(&bad, &lines, "backoff_multiplier"));
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "not even the good file");

    // Two files naming one template.
    let twice = scratch_dir("twice-templates");
    write_template(&twice, "one", &json!({}));
    std::fs::copy(twice.join("one.yaml"), twice.join("other.yaml")).expect("copy");
    let (ok, _, stderr) = runlane(&t.url, &["templates", "apply", twice.to_str().expect("path")]);
    assert!(!ok && stderr.contains("template 'one' is also defined by"), "{stderr}");
    for d in [dir, mixed, twice] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_writes_nothing_and_a_viewer_login_may_run_it() {
    let t = TestDb::new().await;
    let role: String =
        sqlx::query_scalar("SELECT runlane.fleet_role('viewer')").fetch_one(&t.pool).await.expect("role");
    let login = format!("v_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {login} LOGIN IN ROLE {role}")))
        .execute(&t.pool)
        .await
        .expect("viewer login");
    let (scheme_user, rest) = t.url.split_once('@').expect("url has a user");
    let scheme = scheme_user.split_once("//").expect("scheme").0;
    let viewer_url = format!("{scheme}//{login}@{rest}");

    let dir = scratch_dir("validate");
    let (good, _) = write_template(&dir, "good", &json!({"max_attempts": 3, "requires": ["gpu"]}));
    let (ok, stdout, stderr) = runlane(&viewer_url, &["templates", "validate", good.to_str().expect("path")]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}: good is valid\n", good.display()));
    let (bad, lines) = write_template(&dir, "bad", &json!({"retention_s": 5}));
    let (ok, _, stderr) = runlane(&viewer_url, &["templates", "validate", bad.to_str().expect("path")]);
    assert!(!ok);
    let expected = format!("{}: retention_s must be between 60 and 315360000, got 5", at(&bad, &lines, "retention_s"));
    assert!(stderr.contains(&expected) && stderr.contains("1 problem(s)"), "{stderr}");
    let (ok, _, stderr) = runlane(&viewer_url, &["templates", "apply", good.to_str().expect("path")]);
    assert!(!ok && stderr.contains("permission denied"), "a viewer cannot apply: {stderr}");
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_templates").await, 0, "validate wrote nothing");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_path_migrate_apply_the_templates_start_a_worker_enqueue() {
    let t = TestDb::new().await;
    let name = format!("readme_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&t.pool).await.expect("create");
    let current: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&t.pool).await.expect("db");
    let url = t.url.replace(&format!("/{current}"), &format!("/{name}"));

    let (ok, _, stderr) = runlane(&url, &["migrate"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = runlane(&url, &["enqueue", "hello", "--param", "who=x"]);
    assert!(
        !ok && stderr.contains("no template has been applied yet") && stderr.contains("runlane templates apply"),
        "{stderr}"
    );
    let (ok, _, stderr) = runlane(&url, &["templates", "apply", shipped_templates().to_str().expect("path")]);
    assert!(ok, "{stderr}");
    let _worker = WorkerProc::spawn(Path::new(BIN), &url, "readme", &[("RUNLANE__WORKER__LANES", "A")]);
    let (ok, stdout, stderr) = runlane(&url, &["enqueue", "hello", "--lane", "A", "--param", "who=operators"]);
    assert!(ok, "{stderr}");
    let run: RunId = stdout.trim().parse().expect("a run id");
    let tail = spawn_tail(Path::new(BIN), &url, run);
    let out = tokio::time::timeout(Duration::from_secs(60), tail.wait_with_output())
        .await
        .expect("the run ends")
        .expect("tail");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello, operators"));
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    assert_eq!(db::get_run(&pool, run).await.expect("run").status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_requires_a_capability_waits_for_a_worker_that_declares_it() {
    let t = TestDb::new().await;
    let step = json!([{"name": "s", "kind": "noop"}]);
    t.apply("trained", json!({"requires": ["gpu"], "lane": "B", "steps": step})).await;
    t.apply("plain", json!({"lane": "B", "steps": step})).await;
    let enqueue = |template: &str, priority: i32| {
        let req = EnqueueRequest {
            template: template.into(),
            params: json!({}),
            lane: Some(Lane::B),
            priority: Some(priority),
            ..Default::default()
        };
        let pool = t.pool.clone();
        async move { db::enqueue_run(&pool, &req).await.expect("enqueue") }
    };
    // The gpu run comes first in the lane's order; a worker without the capability passes over it.
    let trained = enqueue("trained", 50).await;
    let plain = enqueue("plain", 0).await;
    let _cpu = WorkerProc::spawn(Path::new(BIN), &t.url, "cpu", &[("RUNLANE__WORKER__LANES", "B")]);
    wait_until("the plain run to succeed", PATIENCE, || async { (t.status(plain).await == "succeeded").then_some(()) })
        .await;
    assert_eq!(t.status(trained).await, "queued", "the worker without gpu left it");

    let args = ["worker", "--capabilities", "gpu,fra1"];
    let _gpu = WorkerProc::start(Path::new(BIN), &args, Some(&t.url), "gpu", &[("RUNLANE__WORKER__LANES", "B")]);
    wait_until("the gpu run to succeed", PATIENCE, || async { (t.status(trained).await == "succeeded").then_some(()) })
        .await;
    let host: String = sqlx::query_scalar(
        "SELECT w.host FROM runlane.runs r JOIN runlane.workers w ON w.id = r.worker_id WHERE r.id = $1",
    )
    .bind(trained)
    .fetch_one(&t.pool)
    .await
    .expect("who ran it");
    assert_eq!(host, "gpu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_example_validates() {
    let t = TestDb::new().await;
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/TEMPLATES.md")).expect("guide");
    let example = guide.split("```yaml\n").nth(1).and_then(|s| s.split("```").next()).expect("a yaml example");
    let dir = scratch_dir("guide");
    let file = dir.join("rotate-keys.yaml");
    std::fs::write(&file, example).expect("write");
    let (ok, stdout, stderr) = runlane(&t.url, &["templates", "validate", file.to_str().expect("path")]);
    let _ = std::fs::remove_dir_all(dir);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rotate-keys is valid"), "{stdout}");
}
