//! Metrics through the `metrics` crate, rendered in the Prometheus text format by
//! `metrics-exporter-prometheus`.
//!
//! Paths that run per message or per connection use the handles of [`hot`],
//! resolved once per process: recording is then an atomic add (counters, gauges)
//! or a lock-free push (histograms), with no look-up, allocation or lock. Rare
//! events (a plugin failure, a refused connection) use [`add`], which resolves its
//! series on each call.

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Bucket bounds of every `*_seconds` histogram: 100 µs to 30 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Bucket bounds of `*_batch_size` histograms.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];

/// Histogram samples wait in lock-free buckets until they are folded into the
/// distribution; folding at least this often bounds that memory between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder once; `None` if another recorder was installed
/// first (an embedding program's), in which case eligo's metrics go there.
fn exporter() -> Option<&'static PrometheusHandle> {
    static EXPORTER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), SIZE_BUCKETS));
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: bad histogram buckets; histograms render as summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("metrics: another recorder is installed; /metrics shows nothing");
                return None;
            }
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
            Some(handle)
        })
        .as_ref()
}

/// Handles of the series recorded on hot paths, resolved once.
pub struct Hot {
    /// `eligo_connections{role="node"}`: open node connections.
    pub node_connections: Gauge,
    /// `eligo_connections{role="worker"}`: open, welcomed worker connections.
    pub worker_connections: Gauge,
    /// Jobs queued to a worker's outbox.
    pub jobs_delivered: Counter,
    /// Jobs never sent to a slow worker: a newer one replaced them (latest wins).
    pub jobs_superseded: Counter,
    /// Jobs a node server published to the queue.
    pub jobs_published: Counter,
    /// Solutions a worker server published to the queue.
    pub solutions_published: Counter,
    /// Solutions queued to a node's outbox.
    pub solutions_delivered: Counter,
    /// Node connections closed because they read too slowly.
    pub slow_nodes_closed: Counter,
    /// Unreadable frames, by role.
    pub bad_frames_node: Counter,
    /// Unreadable frames from workers.
    pub bad_frames_worker: Counter,
    /// Job read from the log → queued to the last chosen worker, in seconds.
    pub job_fanout_seconds: Histogram,
    /// Workers a job was queued to, per job.
    pub job_fanout_workers: Histogram,
    /// A solution batch taken from the queue → acked, in seconds.
    pub solution_batch_seconds: Histogram,
    /// A job batch taken from the queue → acked, in seconds.
    pub job_batch_seconds: Histogram,
    /// Messages per solution batch.
    pub solution_batch_size: Histogram,
    /// Messages per job batch.
    pub job_batch_size: Histogram,
}

/// The hot-path handles (installing the recorder on first use).
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| {
        exporter();
        Hot {
            node_connections: metrics::gauge!("eligo_connections", "role" => "node"),
            worker_connections: metrics::gauge!("eligo_connections", "role" => "worker"),
            jobs_delivered: metrics::counter!("eligo_jobs_delivered_total"),
            jobs_superseded: metrics::counter!("eligo_jobs_dropped_total", "reason" => "superseded"),
            jobs_published: metrics::counter!("eligo_jobs_published_total"),
            solutions_published: metrics::counter!("eligo_solutions_published_total"),
            solutions_delivered: metrics::counter!("eligo_solutions_delivered_total"),
            slow_nodes_closed: metrics::counter!("eligo_slow_connections_closed_total", "role" => "node"),
            bad_frames_node: metrics::counter!("eligo_bad_frames_total", "role" => "node"),
            bad_frames_worker: metrics::counter!("eligo_bad_frames_total", "role" => "worker"),
            job_fanout_seconds: metrics::histogram!("eligo_job_fanout_seconds"),
            job_fanout_workers: metrics::histogram!("eligo_job_fanout_workers_batch_size"),
            solution_batch_seconds: metrics::histogram!("eligo_processing_seconds", "queue" => "solution"),
            job_batch_seconds: metrics::histogram!("eligo_processing_seconds", "queue" => "job"),
            solution_batch_size: metrics::histogram!("eligo_processing_batch_size", "queue" => "solution"),
            job_batch_size: metrics::histogram!("eligo_processing_batch_size", "queue" => "job"),
        }
    })
}

fn labels(labels: &[(&str, &str)]) -> Vec<metrics::Label> {
    labels.iter().map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string())).collect()
}

/// Adds `n` to a counter, resolving the series on each call: for rare events only.
pub fn add(name: &'static str, with: &[(&str, &str)], n: u64) {
    exporter();
    metrics::counter!(name, labels(with)).increment(n);
}

/// A histogram handle of a series with labels, for a caller to keep.
pub fn histogram(name: &'static str, with: &[(&str, &str)]) -> Histogram {
    exporter();
    metrics::histogram!(name, labels(with))
}

/// Counts a plugin call that failed closed, or a plugin that failed to load.
pub fn plugin_failure(plugin: &str, kind: &str) {
    add("eligo_plugin_failures_total", &[("plugin", plugin), ("kind", kind)], 1);
}

/// Every series, in the Prometheus text exposition format.
pub fn render() -> String {
    exporter().map(PrometheusHandle::render).unwrap_or_default()
}

/// The value of a counter or gauge as rendered now (0 if never recorded): for
/// tests and status pages, not for hot paths.
pub fn get(name: &str, with: &[(&str, &str)]) -> i64 {
    let wanted: Vec<String> = with.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let text = render();
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let present: Vec<&str> = if series_labels.is_empty() { Vec::new() } else { series_labels.split(',').collect() };
        if present.len() == wanted.len() && wanted.iter().all(|w| present.contains(&w.as_str())) {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total as i64
}
