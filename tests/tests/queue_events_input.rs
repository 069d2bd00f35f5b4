//! Event ordering under concurrent writers, and bad input through plain SQL.

use runlane_core::db;
use runlane_core::model::*;
use runlane_core::{Error, Result};
use runlane_tests::TestDb;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_reader_sees_every_event_once_in_order_while_four_writers_interleave() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let already = db::read_events(&t.pool, run, 0, 100).await.expect("events").len();

    const BATCHES: usize = 60;
    let mut writers = Vec::new();
    for w in 0..3 {
        let pool = t.new_pool(1).await;
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            for b in 0..BATCHES {
                let batch: Vec<NewEvent> = (0..1 + (b * 7 + w) % 13)
                    .map(|i| NewEvent::output(0, Stream::Stdout, format!("w{w}-b{b}-{i}")))
                    .collect();
                db::append_events(&pool, lease, None, &batch).await.expect("append");
                written += batch.len();
            }
            written
        }));
    }
    let system = {
        let pool = t.new_pool(1).await;
        tokio::spawn(async move {
            for n in 0..BATCHES {
                db::annotate_run(&pool, run, &format!("note {n}")).await.expect("annotate");
            }
            BATCHES
        })
    };

    let reader_pool = t.new_pool(1).await;
    let mut cursor = 0i64;
    let mut seen: Vec<Event> = Vec::new();
    let mut writers_done = false;
    let mut expected = usize::MAX;
    while seen.len() < expected {
        let page = db::read_events(&reader_pool, run, cursor, 50).await.expect("read");
        for e in page {
            assert_eq!(e.seq, cursor + 1, "gap or duplicate after seq {cursor}");
            cursor = e.seq;
            seen.push(e);
        }
        if !writers_done && writers.iter().all(|w| w.is_finished()) && system.is_finished() {
            writers_done = true;
            let mut total = already;
            for w in writers.drain(..) {
                total += w.await.expect("writer");
            }
            expected = total + BATCHES;
        }
    }
    assert!(system.await.is_ok());
    assert_eq!(seen.len(), expected, "every event seen");
    let mut bodies: HashMap<String, usize> = HashMap::new();
    for e in &seen {
        let key = e.body.clone().or_else(|| e.data.as_ref().map(|d| d["message"].to_string())).unwrap_or_default();
        *bodies.entry(format!("{}:{key}", e.kind)).or_default() += 1;
    }
    assert!(bodies.values().all(|&n| n == 1), "an event appeared twice");
    assert_eq!(seen.iter().filter(|e| e.kind == "run.note").count(), BATCHES);
}

fn expect_invalid<T: std::fmt::Debug>(r: Result<T>, needles: &[&str]) -> Vec<String> {
    match r {
        Err(Error::Invalid { message, problems }) => {
            for n in needles {
                assert!(message.contains(n), "'{message}' should name '{n}'");
            }
            problems
        }
        other => panic!("expected Invalid naming {needles:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_raises_clear_errors_and_writes_nothing() {
    let t = TestDb::new().await;
    t.apply(
        "deploy",
        serde_json::json!({
            "params": {"type": "object", "required": ["service", "replicas"], "additionalProperties": false,
                       "properties": {"service": {"type": "string"}, "replicas": {"type": "integer"}}},
            "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    let count_all = "SELECT (SELECT count(*) FROM runlane.runs) + (SELECT count(*) FROM runlane.run_events)";
    let before = t.count(count_all).await;
    let enqueue = |template: &str, params: serde_json::Value, lane: Option<&str>| {
        let (pool, template, lane) = (t.pool.clone(), template.to_string(), lane.map(str::to_string));
        async move {
            sqlx::query_scalar::<_, RunId>("SELECT runlane.enqueue_run($1, $2, $3)")
                .bind(template)
                .bind(params)
                .bind(lane)
                .fetch_one(&pool)
                .await
                .map_err(Error::from)
        }
    };
    match enqueue("nope", serde_json::json!({}), None).await {
        Err(Error::NotFound(m)) => assert_eq!(m, "unknown template 'nope' (no applied template has a similar name)"),
        other => panic!("unknown template: {other:?}"),
    }
    let ok = serde_json::json!({"service": "api", "replicas": 2});
    expect_invalid(enqueue("deploy", ok.clone(), Some("E")).await, &["unknown lane 'E' (lanes: A, B, C, D)"]);
    expect_invalid(
        enqueue("deploy", serde_json::json!({"service": "api"}), None).await,
        &["missing required param 'replicas'"],
    );
    let problems = expect_invalid(
        enqueue("deploy", serde_json::json!({"service": 7, "replicas": "two", "colour": "red"}), None).await,
        &["param 'service' must be string, got number", "param 'replicas' must be integer, got string"],
    );
    assert_eq!(problems.len(), 3, "every violation listed: {problems:?}");
    assert!(problems.contains(&"unknown param 'colour'".to_string()));
    expect_invalid(
        enqueue("deploy", serde_json::json!(["api"]), None).await,
        &["params must be a JSON object, got array"],
    );
    assert_eq!(t.count(count_all).await, before, "nothing written by refused enqueues");

    let run = db::enqueue_run(&t.pool, &EnqueueRequest { template: "deploy".into(), params: ok, ..Default::default() })
        .await
        .expect("a valid enqueue");
    let worker = t.register(&[Lane::C], 15_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::C], 1, None).await.expect("claim")[0].lease();
    let events_before = t.count("SELECT count(*) FROM runlane.run_events").await;
    let huge: Vec<NewEvent> = (0..5001).map(|i| NewEvent::output(0, Stream::Stdout, format!("line {i}"))).collect();
    expect_invalid(db::append_events(&t.pool, lease, Some(1), &huge).await, &["1 to 5000 events, got 5001"]);
    let mut bad = vec![NewEvent::output(0, Stream::Stdout, "fine")];
    bad.push(NewEvent { kind: "Not A Kind".into(), step: None, stream: None, body: None, data: None });
    expect_invalid(db::append_events(&t.pool, lease, Some(1), &bad).await, &["event #2 is invalid"]);
    assert_eq!(t.count("SELECT count(*) FROM runlane.run_events").await, events_before, "no partial batch");
    assert_eq!(db::get_run(&t.pool, run).await.expect("run").status, "running", "the run is untouched");
}

#[tokio::test]
async fn secret_params_are_masked_where_operators_read_runs() {
    let t = TestDb::new().await;
    t.apply(
        "login",
        serde_json::json!({"params": {"type": "object", "properties": {"user": {"type": "string"}, "password": {"type": "string", "secret": true}}},
                           "steps": [{"name": "s", "kind": "noop"}]}),
    )
    .await;
    let req = EnqueueRequest {
        template: "login".into(),
        params: serde_json::json!({"user": "ops", "password": "hunter2"}),
        ..Default::default()
    };
    let run = db::enqueue_run(&t.pool, &req).await.expect("enqueue");
    let shown = db::get_run(&t.pool, run).await.expect("run").params;
    assert_eq!(shown, serde_json::json!({"user": "ops", "password": "***"}));
    let listed = db::list_runs(&t.pool, &db::RunFilter { limit: 10, ..Default::default() }).await.expect("list");
    assert_eq!(listed[0].params["password"], "***");
    let claimed =
        db::claim_runs(&t.pool, t.register(&[Lane::C], 15_000).await, &[Lane::C], 1, None).await.expect("claim");
    assert_eq!(claimed[0].params["password"], "hunter2", "the worker that runs it gets the real value");
}
