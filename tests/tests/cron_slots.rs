//! Which instants a cron expression names (`cron_slots`): fields, names, steps, seconds, the two day
//! fields, macros, time zones, and daylight saving time in Europe/Paris.

use chrono::{DateTime, Duration, Utc};
use runlane_core::db;
use runlane_tests::TestDb;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

async fn slots(t: &TestDb, cron: &str, tz: &str, after: &str, n: i32) -> Vec<String> {
    let got = db::cron_slots(&t.pool, cron, tz, at(after), n).await.expect("cron_slots");
    got.iter().map(|s| s.format("%Y-%m-%dT%H:%M:%SZ").to_string()).collect()
}

#[tokio::test]
async fn cron_fields_lists_ranges_steps_names_and_seconds() {
    let t = TestDb::new().await;
    // Friday 2 January 2026, UTC.
    let friday = "2026-01-02T10:00:00Z";
    assert_eq!(
        slots(&t, "15,45 9 * * MON-FRI", "UTC", friday, 3).await,
        ["2026-01-05T09:15:00Z", "2026-01-05T09:45:00Z", "2026-01-06T09:15:00Z"]
    );
    assert_eq!(slots(&t, "0 0 * * 7", "UTC", friday, 1).await, slots(&t, "0 0 * * sun", "UTC", friday, 1).await);
    assert_eq!(slots(&t, "0 0 * * 7", "UTC", friday, 1).await, ["2026-01-04T00:00:00Z"]);
    assert_eq!(
        slots(&t, "*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3).await,
        ["2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z", "2026-01-01T00:01:00Z"]
    );
    assert_eq!(
        slots(&t, "0 10-50/20 8 1 feb,Jul *", "UTC", friday, 4).await,
        ["2026-02-01T08:10:00Z", "2026-02-01T08:30:00Z", "2026-02-01T08:50:00Z", "2026-07-01T08:10:00Z"]
    );
    // Both day fields restricted: either matches (Fridays, and the 13th).
    assert_eq!(
        slots(&t, "0 12 13 * FRI", "UTC", "2026-01-01T00:00:00Z", 4).await,
        ["2026-01-02T12:00:00Z", "2026-01-09T12:00:00Z", "2026-01-13T12:00:00Z", "2026-01-16T12:00:00Z"]
    );
    assert_eq!(slots(&t, "0 0 29 2 *", "UTC", friday, 2).await, ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]);
    assert_eq!(slots(&t, "@daily", "America/New_York", friday, 1).await, ["2026-01-03T05:00:00Z"]);
    assert_eq!(slots(&t, "@hourly", "UTC", friday, 1).await, ["2026-01-02T11:00:00Z"]);
}

#[tokio::test]
async fn daylight_saving_time_runs_times_of_day_once_and_intervals_by_the_clock() {
    let t = TestDb::new().await;
    let paris = "Europe/Paris";
    // 29 March 2026: 02:00 CET becomes 03:00 CEST (01:00 UTC). 02:30 does not exist: shifted to 03:30.
    assert_eq!(
        slots(&t, "30 2 * * *", paris, "2026-03-28T00:00:00Z", 3).await,
        ["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]
    );
    // An interval follows the clock: no slot in the skipped hour.
    assert_eq!(
        slots(&t, "0 * * * *", paris, "2026-03-29T00:30:00Z", 2).await,
        ["2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]
    );
    // 25 October 2026: 03:00 CEST becomes 02:00 CET (01:00 UTC). 02:30 shows twice: it runs once.
    assert_eq!(
        slots(&t, "30 2 * * *", paris, "2026-10-24T00:00:00Z", 3).await,
        ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // An interval runs in both passes of the repeated hour.
    assert_eq!(
        slots(&t, "0 * * * *", paris, "2026-10-24T23:30:00Z", 3).await,
        ["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"]
    );
    // Every second stays every second across both changes.
    for after in ["2026-03-29T00:59:58Z", "2026-10-25T00:59:58Z"] {
        let got = slots(&t, "* * * * * *", paris, after, 4).await;
        let start = at(after);
        let want: Vec<String> =
            (1..=4).map(|i| (start + Duration::seconds(i)).format("%Y-%m-%dT%H:%M:%SZ").to_string()).collect();
        assert_eq!(got, want, "after {after}");
    }
}
