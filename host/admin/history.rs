//! The last minutes, second by second: a bounded ring of samples the admin
//! server takes once a second, drawn by the dashboard's charts and served as
//! `/api/v1/series`.
//!
//! Memory is bounded by `[admin] history_secs` (default 900, 15 minutes): one
//! [`Sample`] of 14 numbers per second, about 200 bytes each, so ~180 KB by default.

use super::error::ApiError;
use super::summary::Histograms;
use super::AdminState;
use crate::metrics::Snapshot;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One second of the server, as the charts draw it. Rates are per second over
/// the second before `at`; latencies are of what was measured in that second
/// (absent when nothing was).
#[derive(Clone, Debug, Default, PartialEq)]
struct Sample {
    at: i64,
    workers: Option<u64>,
    nodes: Option<u64>,
    rates: Counts,
    fanout_p50: Option<f64>,
    fanout_p99: Option<f64>,
    solution_processing_p50: Option<f64>,
    solution_processing_p99: Option<f64>,
    job_processing_p99: Option<f64>,
}

/// The counters a sample shows the rate of: totals in a reading, per second in a sample.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    jobs: f64,
    solutions: f64,
    invalid_solutions: f64,
    welcomes: f64,
    connections_refused: f64,
    frames_refused: f64,
}

impl Counts {
    fn of(metrics: &Snapshot) -> Self {
        Counts {
            jobs: metrics.value("eligo_jobs_published_total", &[]),
            solutions: metrics.value("eligo_solutions_published_total", &[]),
            invalid_solutions: metrics
                .value("eligo_messages_processed_total", &[("queue", "solution"), ("outcome", "invalid")]),
            welcomes: metrics.value("eligo_workers_welcomed_total", &[]),
            // Every way a connection is turned away: its welcome refused by a
            // plugin, the caps, admission (origin, token, rate).
            connections_refused: metrics.total("eligo_connections_refused_total")
                + metrics.total("eligo_workers_refused_total")
                + metrics.total("eligo_connections_over_cap_total"),
            frames_refused: metrics.total("eligo_frames_refused_total"),
        }
    }

    /// Per second, from `before` to `self`, `seconds` apart.
    fn rate_since(&self, before: &Counts, seconds: f64) -> Counts {
        let rate = |f: fn(&Counts) -> f64| ((f(self) - f(before)) / seconds).max(0.0);
        Counts {
            jobs: rate(|c| c.jobs),
            solutions: rate(|c| c.solutions),
            invalid_solutions: rate(|c| c.invalid_solutions),
            welcomes: rate(|c| c.welcomes),
            connections_refused: rate(|c| c.connections_refused),
            frames_refused: rate(|c| c.frames_refused),
        }
    }
}

/// The counters and histograms a sample is the difference of.
#[derive(Clone, Debug, Default)]
struct Reading {
    counts: Counts,
    latencies: Histograms,
}

impl Reading {
    fn of(metrics: &Snapshot) -> Self {
        Reading { counts: Counts::of(metrics), latencies: Histograms::read(metrics) }
    }
}

/// The ring of samples.
pub struct History {
    capacity: usize,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// An empty history of at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        History { capacity: capacity.max(1), samples: Mutex::new(VecDeque::with_capacity(capacity.max(1))) }
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples at or after `since` (Unix seconds), as columns.
    pub fn series(&self, since: Option<i64>) -> Series {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept: Vec<&Sample> = samples.iter().filter(|s| since.is_none_or(|since| s.at >= since)).collect();
        let column = |f: &dyn Fn(&Sample) -> Option<f64>| kept.iter().map(|s| f(s)).collect::<Vec<_>>();
        let rate = |f: &dyn Fn(&Sample) -> f64| kept.iter().map(|s| f(s)).collect::<Vec<_>>();
        Series {
            interval_seconds: SAMPLE_EVERY.as_secs(),
            capacity: self.capacity,
            at: kept.iter().map(|s| s.at).collect(),
            workers: column(&|s| s.workers.map(|n| n as f64)),
            nodes: column(&|s| s.nodes.map(|n| n as f64)),
            jobs_per_second: rate(&|s| s.rates.jobs),
            solutions_per_second: rate(&|s| s.rates.solutions),
            invalid_solutions_per_second: rate(&|s| s.rates.invalid_solutions),
            welcomes_per_second: rate(&|s| s.rates.welcomes),
            connections_refused_per_second: rate(&|s| s.rates.connections_refused),
            frames_refused_per_second: rate(&|s| s.rates.frames_refused),
            job_fanout_p50: column(&|s| s.fanout_p50),
            job_fanout_p99: column(&|s| s.fanout_p99),
            solution_processing_p50: column(&|s| s.solution_processing_p50),
            solution_processing_p99: column(&|s| s.solution_processing_p99),
            job_processing_p99: column(&|s| s.job_processing_p99),
        }
    }
}

/// The history as columns, oldest first: `at[i]` is when the `i`-th value of
/// every other column was taken. Rates are per second; latencies in seconds,
/// `null` for a second in which nothing was measured; `workers` and `nodes` are
/// `null` in a process that runs no such server.
#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// The most samples kept (`[admin] history_secs`).
    pub capacity: usize,
    /// Unix seconds of each sample.
    pub at: Vec<i64>,
    /// Workers connected.
    pub workers: Vec<Option<f64>>,
    /// Nodes connected.
    pub nodes: Vec<Option<f64>>,
    /// Jobs node servers published.
    pub jobs_per_second: Vec<f64>,
    /// Solutions worker servers published.
    pub solutions_per_second: Vec<f64>,
    /// Solutions the solution processor found invalid.
    pub invalid_solutions_per_second: Vec<f64>,
    /// Workers welcomed.
    pub welcomes_per_second: Vec<f64>,
    /// Connections turned away: caps, admission (origin, credentials, rate), refused welcomes.
    pub connections_refused_per_second: Vec<f64>,
    /// Frames refused: over a budget, too large, unreadable fields.
    pub frames_refused_per_second: Vec<f64>,
    /// A job read from the log → queued to its last worker, p50.
    pub job_fanout_p50: Vec<Option<f64>>,
    /// The same, p99.
    pub job_fanout_p99: Vec<Option<f64>>,
    /// A solution batch taken from the queue → acknowledged, p50.
    pub solution_processing_p50: Vec<Option<f64>>,
    /// The same, p99.
    pub solution_processing_p99: Vec<Option<f64>>,
    /// A job batch taken from the queue → acknowledged, p99.
    pub job_processing_p99: Vec<Option<f64>>,
}

/// Takes a sample every second until `shutdown`.
pub async fn sample(state: Arc<AdminState>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous: Option<(tokio::time::Instant, Reading)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = tokio::time::Instant::now();
        // Rendering every series costs a few hundred microseconds: off the runtime's hot threads.
        let Ok(reading) = tokio::task::spawn_blocking(|| Reading::of(&Snapshot::now())).await else { continue };
        if let Some((then, before)) = &previous {
            let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
            state.history.push(difference(&state, before, &reading, seconds));
        }
        previous = Some((now, reading));
    }
}

fn difference(state: &AdminState, before: &Reading, after: &Reading, seconds: f64) -> Sample {
    let measured = after.latencies.since(&before.latencies);
    Sample {
        at: chrono::Utc::now().timestamp(),
        workers: state.workers.as_ref().map(|w| w.connections() as u64),
        nodes: state.nodes.as_ref().map(|n| n.connections() as u64),
        rates: after.counts.rate_since(&before.counts, seconds),
        fanout_p50: measured.fanout.quantile(0.5),
        fanout_p99: measured.fanout.quantile(0.99),
        solution_processing_p50: measured.solution.quantile(0.5),
        solution_processing_p99: measured.solution.quantile(0.99),
        job_processing_p99: measured.job.quantile(0.99),
    }
}

/// `since` of `/api/v1/series`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Only samples taken at or after this Unix second (default: all kept).
    pub since: Option<i64>,
}

/// The last minutes, second by second.
#[utoipa::path(
    get,
    path = "/api/v1/series",
    params(SeriesQuery),
    responses((status = 200, description = "Per-second samples, oldest first, as columns", body = Series))
)]
pub async fn series(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<Series>, ApiError> {
    Ok(Json(state.history.series(query?.since)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_latest_and_filters_by_time() {
        let history = History::new(3);
        for at in 1..=5 {
            let rates = Counts { jobs: at as f64, ..Counts::default() };
            history.push(Sample { at, rates, fanout_p99: (at % 2 == 0).then_some(0.1), ..Sample::default() });
        }
        let all = history.series(None);
        assert_eq!(all.at, vec![3, 4, 5], "the oldest fell off");
        assert_eq!(all.jobs_per_second, vec![3.0, 4.0, 5.0]);
        assert_eq!(all.job_fanout_p99, vec![None, Some(0.1), None]);
        assert_eq!(history.series(Some(5)).at, vec![5]);
    }
}
