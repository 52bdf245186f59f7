//! The dashboard's numbers: counters, latencies over a recent window,
//! connections, plugins and the latest jobs, as one JSON object; and the
//! server-sent events stream that repeats it every second.

use super::error::ApiError;
use super::jobs::{job_detail, JobDetail};
use super::AdminState;
use crate::metrics::{Buckets, Snapshot};
use crate::pipeline::views::{NodeView, WorkerView};
use crate::store::Page;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Serialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// Jobs the summary shows, with their solutions.
const RECENT_JOBS: u32 = 5;
/// Connections of each role the summary lists (the API pages through all).
const LISTED_CONNECTIONS: usize = 10;
/// How often the events stream sends a summary.
const EVENT_EVERY: Duration = Duration::from_secs(1);
/// The window the events stream measures latencies over.
const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// Totals since this process started.
#[derive(Debug, Serialize, ToSchema)]
pub struct Totals {
    /// Jobs node servers published to the queue.
    pub jobs_published: u64,
    /// Jobs queued to workers (one per worker).
    pub jobs_delivered: u64,
    /// Jobs a slow worker never got because a newer one replaced them.
    pub jobs_superseded: u64,
    /// Solutions worker servers published to the queue.
    pub solutions_published: u64,
    /// Solutions queued to nodes (one per node).
    pub solutions_delivered: u64,
    /// Frames refused as unreadable, both roles.
    pub bad_frames: u64,
}

/// Latencies in seconds (p50 and p99), over `window_seconds` or since the start;
/// absent when nothing was measured.
#[derive(Debug, Serialize, ToSchema)]
pub struct Latency {
    /// The window measured, in seconds; absent: since the process started.
    pub window_seconds: Option<f64>,
    /// A job read from the log → queued to the last chosen worker.
    pub job_fanout_p50: Option<f64>,
    /// 99th percentile of the same.
    pub job_fanout_p99: Option<f64>,
    /// A solution batch taken from the queue → acknowledged.
    pub solution_processing_p50: Option<f64>,
    /// 99th percentile of the same.
    pub solution_processing_p99: Option<f64>,
    /// A job batch taken from the queue → acknowledged.
    pub job_processing_p50: Option<f64>,
    /// 99th percentile of the same.
    pub job_processing_p99: Option<f64>,
}

/// One active plugin, in brief.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginLine {
    /// Its key (file stem).
    pub key: String,
    /// Its name and version as it reports them.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The hooks it implements.
    pub hooks: Vec<String>,
    /// When it was loaded.
    pub loaded_at: String,
}

/// A plugin file that failed to load.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginFailureLine {
    /// The file.
    pub file: String,
    /// Why.
    pub error: String,
}

/// A candidate plugin in shadow, in brief.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowLine {
    /// The candidate's file key under `shadow/`.
    pub candidate: String,
    /// Its name and version as it reports them.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The key of the active plugin it shadows.
    pub shadows: String,
    /// Whether that plugin is active (if not, the candidate gets no calls).
    pub shadowing: bool,
    /// Calls it answered.
    pub calls: u64,
    /// Share of its answers that agreed with the active plugin, in percent (absent before any call).
    pub agreement_percent: Option<f64>,
    /// Calls where it answered otherwise.
    pub disagreed: u64,
    /// Calls it failed where the active plugin did not.
    pub failed: u64,
    /// Calls not copied to it because its queue was full.
    pub dropped: u64,
    /// Its mean time per call, in microseconds.
    pub mean_call_micros: f64,
    /// The latest disagreements, newest first (at most 5).
    pub latest_disagreements: Vec<DisagreementLine>,
}

/// One call where a candidate answered otherwise than the active plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisagreementLine {
    /// When, RFC 3339.
    pub at: String,
    /// The hook.
    pub hook: String,
    /// What the active plugin answered (JSON).
    pub active: String,
    /// What the candidate answered (JSON).
    pub candidate: String,
}

/// A change of the plugin folder: what loaded, what went, what was refused and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadLine {
    /// When, RFC 3339.
    pub at: String,
    /// Keys (re)loaded (`shadow/` for candidates).
    pub loaded: Vec<String>,
    /// Keys whose file was removed.
    pub removed: Vec<String>,
    /// Files refused, with the reason.
    pub failed: Vec<PluginFailureLine>,
}

/// Disagreements the summary shows per candidate.
const LISTED_DISAGREEMENTS: usize = 5;
/// Reloads the summary shows.
const LISTED_RELOADS: usize = 10;

/// Everything the dashboard shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// The roles this process runs.
    pub roles: Vec<String>,
    /// Workers connected now (absent: this process runs no worker server).
    pub workers_connected: Option<usize>,
    /// Nodes connected now (absent: this process runs no node server).
    pub nodes_connected: Option<usize>,
    /// Counters since the start.
    pub totals: Totals,
    /// Latencies.
    pub latency: Latency,
    /// Active plugins.
    pub plugins: Vec<PluginLine>,
    /// Plugin files that failed to load.
    pub plugin_failures: Vec<PluginFailureLine>,
    /// When the plugins last changed (RFC 3339).
    pub last_reload: Option<String>,
    /// Candidates in shadow, with how often they agreed.
    pub shadows: Vec<ShadowLine>,
    /// The latest changes of the plugin folder, newest first (at most 10).
    pub reloads: Vec<ReloadLine>,
    /// The highest jobs, with their solutions.
    pub recent_jobs: Vec<JobDetail>,
    /// The first workers connected now (by connection number; at most 10).
    pub workers: Vec<WorkerView>,
    /// The first nodes connected now (by connection number; at most 10).
    pub nodes: Vec<NodeView>,
}

/// The latency histograms the dashboard shows (the summary and the history), as
/// read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Histograms {
    /// A job read from the log → queued to its last worker.
    pub fanout: Buckets,
    /// A solution batch taken from the queue → acknowledged.
    pub solution: Buckets,
    /// A job batch taken from the queue → acknowledged.
    pub job: Buckets,
}

impl Histograms {
    /// The histograms in `metrics`.
    pub fn read(metrics: &Snapshot) -> Self {
        Histograms {
            fanout: metrics.buckets("eligo_job_fanout_seconds", &[]),
            solution: metrics.buckets("eligo_processing_seconds", &[("queue", "solution")]),
            job: metrics.buckets("eligo_processing_seconds", &[("queue", "job")]),
        }
    }

    /// What was recorded after `earlier` was read.
    pub fn since(&self, earlier: &Histograms) -> Histograms {
        Histograms {
            fanout: self.fanout.since(&earlier.fanout),
            solution: self.solution.since(&earlier.solution),
            job: self.job.since(&earlier.job),
        }
    }
}

impl Summary {
    /// The summary now; latencies since `window` (an earlier reading and its age)
    /// if given, else since the start.
    pub async fn now(state: &AdminState, window: Option<(&Histograms, Duration)>) -> Result<Self, ApiError> {
        Ok(Self::with_metrics(state, &Snapshot::now(), window).await?.0)
    }

    async fn with_metrics(
        state: &AdminState,
        metrics: &Snapshot,
        window: Option<(&Histograms, Duration)>,
    ) -> Result<(Self, Histograms), ApiError> {
        let histograms = Histograms::read(metrics);
        let measured = match window {
            Some((earlier, _)) => histograms.since(earlier),
            None => histograms.clone(),
        };
        let count = |name: &str, with: &[(&str, &str)]| metrics.value(name, with).max(0.0) as u64;
        let recent = state.services.store.list_jobs(Page::new(RECENT_JOBS, None)).await?;
        let mut recent_jobs = Vec::with_capacity(recent.items.len());
        for job in recent.items {
            recent_jobs.push(job_detail(state, job).await?);
        }
        let reports = state.services.plugins.reports();
        let summary = Summary {
            at: Utc::now(),
            roles: state
                .roles
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok()?.as_str().map(str::to_string))
                .collect(),
            workers_connected: state.workers.as_ref().map(|w| w.connections()),
            nodes_connected: state.nodes.as_ref().map(|n| n.connections()),
            totals: Totals {
                jobs_published: count("eligo_jobs_published_total", &[]),
                jobs_delivered: count("eligo_jobs_delivered_total", &[]),
                jobs_superseded: count("eligo_jobs_dropped_total", &[("reason", "superseded")]),
                solutions_published: count("eligo_solutions_published_total", &[]),
                solutions_delivered: count("eligo_solutions_delivered_total", &[]),
                bad_frames: count("eligo_bad_frames_total", &[("role", "node")])
                    + count("eligo_bad_frames_total", &[("role", "worker")]),
            },
            latency: Latency {
                window_seconds: window.map(|(_, age)| age.as_secs_f64()),
                job_fanout_p50: measured.fanout.quantile(0.5),
                job_fanout_p99: measured.fanout.quantile(0.99),
                solution_processing_p50: measured.solution.quantile(0.5),
                solution_processing_p99: measured.solution.quantile(0.99),
                job_processing_p50: measured.job.quantile(0.5),
                job_processing_p99: measured.job.quantile(0.99),
            },
            plugins: reports
                .into_iter()
                .map(|r| PluginLine {
                    key: r.key,
                    name: r.name,
                    version: r.version,
                    hooks: r.hooks,
                    loaded_at: r.loaded_at,
                })
                .collect(),
            plugin_failures: state
                .services
                .plugins
                .failures()
                .into_iter()
                .map(|f| PluginFailureLine { file: f.file, error: f.error })
                .collect(),
            last_reload: state.services.plugins.history().pop().map(|r| r.at),
            shadows: state.services.plugins.shadows().into_iter().map(shadow_line).collect(),
            reloads: state.services.plugins.history().into_iter().rev().take(LISTED_RELOADS).map(reload_line).collect(),
            recent_jobs,
            workers: state.workers.as_ref().map(|w| w.snapshot(0, LISTED_CONNECTIONS)).unwrap_or_default(),
            nodes: state.nodes.as_ref().map(|n| n.snapshot(0, LISTED_CONNECTIONS)).unwrap_or_default(),
        };
        Ok((summary, histograms))
    }
}

fn shadow_line(report: crate::plugin::ShadowReport) -> ShadowLine {
    let answered = report.agreed + report.disagreed;
    ShadowLine {
        candidate: report.plugin.key,
        name: report.plugin.name,
        version: report.plugin.version,
        shadows: report.shadows,
        shadowing: report.shadowing,
        calls: report.calls,
        agreement_percent: (answered > 0).then(|| 100.0 * report.agreed as f64 / answered as f64),
        disagreed: report.disagreed,
        failed: report.failed,
        dropped: report.dropped,
        mean_call_micros: report.mean_call_micros,
        latest_disagreements: report
            .samples
            .into_iter()
            .rev()
            .take(LISTED_DISAGREEMENTS)
            .map(|d| DisagreementLine {
                at: d.at,
                hook: d.hook.to_string(),
                active: d.active.to_string(),
                candidate: d.shadow.to_string(),
            })
            .collect(),
    }
}

fn reload_line(reload: crate::plugin::Reload) -> ReloadLine {
    let failed =
        reload.changes.failed.into_iter().map(|f| PluginFailureLine { file: f.file, error: f.error }).collect();
    ReloadLine { at: reload.at, loaded: reload.changes.loaded, removed: reload.changes.removed, failed }
}

/// `/api/v1/events`: a [`Summary`] as a server-sent event every second,
/// latencies over the last 10 s. A failed read sends an `error` event and goes on.
pub async fn events(State(state): State<Arc<AdminState>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let readings: VecDeque<(Instant, Histograms)> = VecDeque::new();
    let ticks = tokio::time::interval(EVENT_EVERY);
    let stream = futures::stream::unfold((state, readings, ticks), |(state, mut readings, mut ticks)| async move {
        ticks.tick().await;
        let now = Instant::now();
        while readings.len() > 1 && readings.get(1).is_some_and(|(at, _)| now - *at >= LATENCY_WINDOW) {
            readings.pop_front();
        }
        let window = readings.front().map(|(at, h)| (h, now - *at));
        let event = match Summary::with_metrics(&state, &Snapshot::now(), window).await {
            Ok((summary, histograms)) => {
                readings.push_back((now, histograms));
                Event::default().event("summary").json_data(&summary).unwrap_or_else(|_| Event::default())
            }
            Err(e) => Event::default().event("error").data(e.error),
        };
        Some((Ok(event), (state, readings, ticks)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
