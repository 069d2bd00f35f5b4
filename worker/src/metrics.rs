//! The worker's Prometheus metrics: plain atomics, rendered in the text exposition format.
//! Names are the contract dashboards and KEDA/HPA rules use; keep them stable.

use runlane_core::model::{Lane, RunStatus};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Run durations, seconds.
const BUCKETS: [f64; 10] = [0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0];
const FINAL: [RunStatus; 4] = [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Cancelled, RunStatus::Queued];
const SWEEP_ACTIONS: [&str; 6] = ["requeued", "cancelled", "crash_failed", "deadline_failed", "promoted", "pruned"];
const SLOT_OUTCOMES: [&str; 3] = ["enqueued", "missed", "failed"];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Microseconds, so it stays an integer.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Every metric of one worker process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub claims: [Counter; 4],
    /// By lane, then by how the attempt ended (queued: handed back or retry scheduled).
    pub finished: [[Counter; 4]; 4],
    pub run_duration: [Histogram; 4],
    pub queue_depth: [Gauge; 4],
    pub running: [Gauge; 4],
    /// Milliseconds, so it stays an integer.
    pub oldest_queued_ms: [Gauge; 4],
    /// 1 while the lane is paused.
    pub lane_paused: [Gauge; 4],
    pub slots_total: Gauge,
    pub slots_in_use: Gauge,
    pub heartbeat_failures: Counter,
    pub leases_lost: Counter,
    pub events_written: Counter,
    /// `apply_ops` calls, and the run items they carried.
    pub batches: Counter,
    pub batch_items: Counter,
    pub events_dropped: Counter,
    pub sweeper_actions: [Counter; 6],
    pub sweeper_leader: Gauge,
    /// Schedule slots this process's ticks enqueued, passed over (caught up by a newer slot's run)
    /// and saw refused.
    pub schedule_slots: [Counter; 3],
    /// 1 while the worker accepts claims (not draining).
    pub ready: Gauge,
    /// 1 while the queue answered the worker's last call about itself (its heartbeat or a claim).
    pub queue_reachable: Gauge,
    /// When the worker's own heartbeat last got through ([`uptime_ms`]; 0: never).
    pub last_heartbeat_ok_ms: Gauge,
    /// 1 while this worker's Docker engine answers (docker steps are claimed only then).
    pub docker_available: Gauge,
}

/// Milliseconds since this process first asked: a monotonic clock for "how long ago".
pub fn uptime_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as i64 + 1
}

fn lane_index(lane: &str) -> usize {
    lane.parse::<Lane>().map(|l| l as usize).unwrap_or(0)
}

impl Metrics {
    pub fn claimed(&self, lane: &str) {
        self.claims[lane_index(lane)].inc();
    }

    pub fn finished(&self, lane: &str, status: RunStatus, secs: f64) {
        let l = lane_index(lane);
        // A retry after a backoff waits as scheduled: back in the queue, as far as a worker sees.
        let status = if status == RunStatus::Scheduled { RunStatus::Queued } else { status };
        if let Some(s) = FINAL.iter().position(|f| *f == status) {
            self.finished[l][s].inc();
        }
        self.run_duration[l].observe(secs);
    }

    /// The queue answered (`true`) or could not be reached.
    pub fn queue_contact(&self, ok: bool) {
        self.queue_reachable.set(i64::from(ok));
    }

    pub fn swept(&self, report: &runlane_core::model::SweepReport) {
        let counts = [report.requeued, report.cancelled, report.crash_failed, report.deadline_failed, report.promoted];
        for (c, n) in self.sweeper_actions.iter().zip(counts) {
            c.add(n);
        }
    }

    pub fn pruned(&self, report: &runlane_core::model::PruneReport) {
        self.sweeper_actions[5].add(report.pruned);
    }

    pub fn ticked(&self, report: &runlane_core::db::TickReport) {
        let counts = [report.enqueued, report.missed, report.failed.len() as u64];
        for (c, n) in self.schedule_slots.iter().zip(counts) {
            c.add(n);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let per_lane = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(usize) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for lane in Lane::ALL {
                let _ = writeln!(out, "{name}{{lane=\"{lane}\"}} {}", value(lane as usize));
            }
        };
        per_lane(&mut out, "runlane_claims_total", "Runs claimed by this worker.", "counter", &|l| {
            self.claims[l].get().to_string()
        });
        let _ = writeln!(
            out,
            "# HELP runlane_runs_finished_total Attempts ended by this worker, by resulting status.\n\
             # TYPE runlane_runs_finished_total counter"
        );
        for lane in Lane::ALL {
            for (s, status) in FINAL.iter().enumerate() {
                let v = self.finished[lane as usize][s].get();
                let _ = writeln!(out, "runlane_runs_finished_total{{lane=\"{lane}\",status=\"{status}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP runlane_run_duration_seconds Attempt durations.\n# TYPE runlane_run_duration_seconds histogram"
        );
        for lane in Lane::ALL {
            let h = &self.run_duration[lane as usize];
            for (i, b) in BUCKETS.iter().enumerate() {
                let v = h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "runlane_run_duration_seconds_bucket{{lane=\"{lane}\",le=\"{b}\"}} {v}");
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "runlane_run_duration_seconds_bucket{{lane=\"{lane}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "runlane_run_duration_seconds_sum{{lane=\"{lane}\"}} {sum}");
            let _ = writeln!(out, "runlane_run_duration_seconds_count{{lane=\"{lane}\"}} {count}");
        }
        per_lane(&mut out, "runlane_queue_depth", "Runnable queued runs (fleet-wide).", "gauge", &|l| {
            self.queue_depth[l].get().to_string()
        });
        per_lane(&mut out, "runlane_running", "Running runs (fleet-wide).", "gauge", &|l| {
            self.running[l].get().to_string()
        });
        per_lane(&mut out, "runlane_oldest_queued_seconds", "Age of the oldest runnable run.", "gauge", &|l| {
            (self.oldest_queued_ms[l].get() as f64 / 1000.0).to_string()
        });
        per_lane(&mut out, "runlane_lane_paused", "1 while the lane is paused (it claims nothing).", "gauge", &|l| {
            self.lane_paused[l].get().to_string()
        });
        let single = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        single(&mut out, "runlane_slots", "Run slots of this worker.", "gauge", self.slots_total.get().to_string());
        single(&mut out, "runlane_slots_in_use", "Slots running a run.", "gauge", self.slots_in_use.get().to_string());
        single(
            &mut out,
            "runlane_heartbeat_failures_total",
            "Heartbeats that could not reach the queue.",
            "counter",
            self.heartbeat_failures.get().to_string(),
        );
        single(
            &mut out,
            "runlane_leases_lost_total",
            "Runs aborted because their lease was lost.",
            "counter",
            self.leases_lost.get().to_string(),
        );
        single(
            &mut out,
            "runlane_events_written_total",
            "Events written.",
            "counter",
            self.events_written.get().to_string(),
        );
        single(
            &mut out,
            "runlane_events_dropped_total",
            "Events refused by the queue.",
            "counter",
            self.events_dropped.get().to_string(),
        );
        single(
            &mut out,
            "runlane_batches_total",
            "Batched write calls (apply_ops) made by this worker.",
            "counter",
            self.batches.get().to_string(),
        );
        single(
            &mut out,
            "runlane_batch_items_total",
            "Run items carried by those calls.",
            "counter",
            self.batch_items.get().to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP runlane_sweeper_actions_total What the sweeper did while this worker led.\n\
             # TYPE runlane_sweeper_actions_total counter"
        );
        for (c, action) in self.sweeper_actions.iter().zip(SWEEP_ACTIONS) {
            let _ = writeln!(out, "runlane_sweeper_actions_total{{action=\"{action}\"}} {}", c.get());
        }
        let _ = writeln!(
            out,
            "# HELP runlane_schedule_slots_total Schedule slots this process's ticks handled.\n\
             # TYPE runlane_schedule_slots_total counter"
        );
        for (c, outcome) in self.schedule_slots.iter().zip(SLOT_OUTCOMES) {
            let _ = writeln!(out, "runlane_schedule_slots_total{{outcome=\"{outcome}\"}} {}", c.get());
        }
        single(
            &mut out,
            "runlane_sweeper_leader",
            "1 while this worker holds the sweeper lock.",
            "gauge",
            self.sweeper_leader.get().to_string(),
        );
        single(&mut out, "runlane_ready", "1 while this worker accepts claims.", "gauge", self.ready.get().to_string());
        single(
            &mut out,
            "runlane_docker_available",
            "1 while this worker's Docker engine answers.",
            "gauge",
            self.docker_available.get().to_string(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let m = Metrics::default();
        m.claimed("B");
        m.finished("B", RunStatus::Succeeded, 0.2);
        let text = m.render();
        assert!(text.contains("runlane_claims_total{lane=\"B\"} 1"), "{text}");
        assert!(text.contains("runlane_runs_finished_total{lane=\"B\",status=\"succeeded\"} 1"));
        assert!(text.contains("runlane_run_duration_seconds_bucket{lane=\"B\",le=\"0.25\"} 1"));
        assert!(text.contains("runlane_run_duration_seconds_bucket{lane=\"B\",le=\"0.05\"} 0"));
    }
}
