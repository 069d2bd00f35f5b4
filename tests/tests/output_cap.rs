//! The per-run output cap: the head is written as it comes, then each step keeps its tail, and the
//! truncation is recorded with what was dropped.

use runlane_core::db;
use runlane_core::model::*;
use runlane_tests::TestDb;
use runlane_worker::output::{Masker, RunOutput};
use runlane_worker::run_writer::WriterOptions;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_chatty_step_keeps_its_head_and_tail_and_records_the_gap() {
    let t = TestDb::new().await;
    t.apply_noop().await;
    let run = t.enqueue("noop", Lane::A).await;
    let worker = t.register(&[Lane::A], 60_000).await;
    let lease = db::claim_runs(&t.pool, worker, &[Lane::A], 1, None).await.expect("claim")[0].lease();
    let opts = WriterOptions { flush_interval: Duration::from_millis(10), batch_max: 100 };
    let writer = t.run_writer(lease, opts, CancellationToken::new());
    // 2,000 bytes kept: 1,000 of head, 1,000 of tail. Each line is "line NNNN" (9 bytes).
    let output = RunOutput::new(writer, Masker::default(), 2_000, Duration::from_millis(50));
    let sink = output.for_step(0);
    let text: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
    for chunk in text.as_bytes().chunks(997) {
        sink.write(Stream::Stdout, chunk).await.expect("write");
    }
    sink.finish().await.expect("finish");

    let events = db::read_events(&t.pool, run, 0, 10_000).await.expect("events");
    let lines: Vec<&str> = events.iter().filter_map(|e| e.body.as_deref()).collect();
    let head = 1000 / 9; // whole lines that fit the head
    assert_eq!(lines[..head], (0..head).map(|i| format!("line {i:04}")).collect::<Vec<_>>()[..], "the head, in order");
    let note = events.iter().find(|e| e.kind == "step.output_truncated").expect("truncation recorded");
    let data = note.data.as_ref().expect("data");
    let dropped = data["dropped_lines"].as_u64().expect("dropped lines") as usize;
    let tail = lines.len() - head;
    assert_eq!(head + dropped + tail, 1000, "every line is kept or counted as dropped");
    assert_eq!(data["dropped_bytes"].as_u64(), Some(dropped as u64 * 9));
    assert!((1000 / 9 - 1..=1000 / 9).contains(&tail), "about a tail's worth kept: {tail}");
    assert_eq!(lines.last().copied(), Some("line 0999"), "the tail ends with the last line");
    let note_seq = note.seq;
    assert!(
        events.iter().filter(|e| e.body.is_some() && e.seq > note_seq).count() == tail,
        "the tail follows the note"
    );
}
