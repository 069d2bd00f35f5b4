//! The Broker's notice stream: lane wake-ups and cancel requests reach subscribers (how fast is
//! `runlane bench`'s pickup and cancel figures).

use runlane_core::broker::Broker;
use runlane_core::db;
use runlane_core::model::*;
use runlane_core::notices::Notice;
use runlane_tests::TestDb;
use runlane_tests::process::PATIENCE;

#[tokio::test]
async fn enqueue_and_cancel_reach_subscribers_at_once() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let broker = t.broker();
    let mut notices = broker.subscribe(&[Lane::B]).await.expect("subscribe");
    let worker = t.register(&[Lane::B], 15_000).await;

    t.enqueue("noop", Lane::A).await; // not subscribed: no notice
    let run = t.enqueue("noop", Lane::B).await;
    let first = tokio::time::timeout(PATIENCE, notices.recv()).await.expect("in time");
    assert_eq!(first, Some(Notice::LaneReady(Lane::B)));

    db::claim_runs(&t.pool, worker, &[Lane::B], 1, None).await.expect("claim");
    db::cancel_run(&t.pool, run, None).await.expect("cancel");
    let next = tokio::time::timeout(PATIENCE, notices.recv()).await.expect("in time");
    assert_eq!(next, Some(Notice::Cancel(run)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_says_it_resumed_as_soon_as_postgres_is_back() {
    let t = TestDb::new().await;
    let mut notices = runlane_core::notices::listen(&t.pool, &[runlane_core::notices::CANCEL_CHANNEL.into()], 16)
        .await
        .expect("listen");
    let cluster = t.cluster();
    tokio::task::block_in_place(|| cluster.restart()).expect("restart PostgreSQL");
    // No notification is sent after the restart: the listener reconnects by itself and says so, so a
    // consumer re-reads what it may have missed without waiting for the next notice.
    let resumed = tokio::time::timeout(PATIENCE, notices.recv()).await.expect("Resumed in time");
    assert_eq!(resumed, Some(Notice::Resumed));
    // And it listens again.
    db::ping(&t.pool).await.expect("the pool is back");
    sqlx::query("SELECT pg_notify('runlane_cancel', $1)")
        .bind(uuid::Uuid::nil().to_string())
        .execute(&t.pool)
        .await
        .expect("notify");
    let next = tokio::time::timeout(PATIENCE, notices.recv()).await.expect("a notice in time");
    assert_eq!(next, Some(Notice::Cancel(RunId(uuid::Uuid::nil()))));
}
