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
    /// Error frames and refusals not written: over their connection's allowance.
    pub error_frames_unsent: Counter,
    /// Workers welcomed (admitted, registered, sent the current job).
    pub workers_welcomed: Counter,
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
    /// A presence batch taken from the queue → acked, in seconds.
    pub presence_batch_seconds: Histogram,
    /// Messages per presence batch.
    pub presence_batch_size: Histogram,
    /// `eligo_plugin_decisions_queued`: decisions waiting for, or running on, the decision pool.
    pub decisions_queued: Gauge,
    /// Presence events not kept: over the bound of those waiting for the broker.
    pub presence_events_dropped: Counter,
    /// `eligo_node_deliveries_total{transport="websocket"}`: solutions queued to socket nodes.
    pub node_deliveries_socket: Counter,
    /// `eligo_node_deliveries_total{transport="http"}`: solutions given to HTTP nodes' streams.
    pub node_deliveries_http: Counter,
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
            error_frames_unsent: metrics::counter!("eligo_error_frames_unsent_total"),
            workers_welcomed: metrics::counter!("eligo_workers_welcomed_total"),
            job_fanout_seconds: metrics::histogram!("eligo_job_fanout_seconds"),
            job_fanout_workers: metrics::histogram!("eligo_job_fanout_workers_batch_size"),
            solution_batch_seconds: metrics::histogram!("eligo_processing_seconds", "queue" => "solution"),
            job_batch_seconds: metrics::histogram!("eligo_processing_seconds", "queue" => "job"),
            solution_batch_size: metrics::histogram!("eligo_processing_batch_size", "queue" => "solution"),
            job_batch_size: metrics::histogram!("eligo_processing_batch_size", "queue" => "job"),
            presence_batch_seconds: metrics::histogram!("eligo_processing_seconds", "queue" => "worker"),
            presence_batch_size: metrics::histogram!("eligo_processing_batch_size", "queue" => "worker"),
            decisions_queued: metrics::gauge!("eligo_plugin_decisions_queued"),
            presence_events_dropped: metrics::counter!("eligo_presence_events_dropped_total"),
            node_deliveries_socket: metrics::counter!("eligo_node_deliveries_total", "transport" => "websocket"),
            node_deliveries_http: metrics::counter!("eligo_node_deliveries_total", "transport" => "http"),
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

/// A gauge handle of a series with labels, resolved on each call: for rare changes.
pub fn gauge(name: &'static str, with: &[(&str, &str)]) -> Gauge {
    exporter();
    metrics::gauge!(name, labels(with))
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
    Snapshot::now().value(name, with) as i64
}

/// Every series as rendered at one moment, read by name: for status pages and
/// tests, not for hot paths (it renders and parses the whole exposition).
pub struct Snapshot {
    text: String,
}

impl Snapshot {
    /// The series now.
    pub fn now() -> Self {
        Snapshot { text: render() }
    }

    /// Each sample of `name`: its labels (`k="v"` each) and its value.
    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (Vec<&'a str>, f64)> + 'a {
        self.text.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            // A metric name holds no `{`; the first one opens the labels.
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            Some((split_labels(series_labels), value.parse::<f64>().unwrap_or(0.0)))
        })
    }

    /// Each sample of `name` whose labels other than `ignoring` are exactly `with`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&str, &str)],
        ignoring: &'a str,
    ) -> impl Iterator<Item = (Vec<&'a str>, f64)> + 'a {
        let wanted: Vec<String> = with.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        self.series(name).filter_map(move |(labels, value)| {
            let (ignored, present): (Vec<&str>, Vec<&str>) =
                labels.into_iter().partition(|l| !ignoring.is_empty() && l.starts_with(ignoring));
            let matches = present.len() == wanted.len() && wanted.iter().all(|w| present.contains(&w.as_str()));
            matches.then_some((ignored, value))
        })
    }

    /// The sum of every series of the counter or gauge `name`, whatever its labels.
    pub fn total(&self, name: &str) -> f64 {
        self.series(name).map(|(_, v)| v).sum()
    }

    /// The sum of the counters or gauges `name` labelled exactly `with`.
    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples(name, with, "").map(|(_, v)| v).sum()
    }

    /// The cumulative buckets of the histogram `name` labelled exactly `with`.
    pub fn buckets(&self, name: &str, with: &[(&str, &str)]) -> Buckets {
        let bucket_name = format!("{name}_bucket");
        let mut bounds: Vec<(f64, f64)> = self
            .samples(&bucket_name, with, "le=")
            .filter_map(|(le, count)| {
                let bound = le.first()?.trim_start_matches("le=").trim_matches('"');
                let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
                Some((bound, count))
            })
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(bounds)
    }
}

/// The `k="v"` pairs of a series' labels, split at the commas between them: a
/// comma, brace or escaped quote inside a value (a plugin's name, a reason) is
/// part of the value.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut pairs = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pairs.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        pairs.push(&labels[start..]);
    }
    pairs
}

/// A label value as the text exposition writes it.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A histogram's cumulative bucket counts: `(upper bound, samples at or below it)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// The samples recorded after `earlier` was read (same histogram).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, count)| {
                    let before = earlier.0.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
                    (le, (count - before).max(0.0))
                })
                .collect(),
        )
    }

    /// How many samples.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q`-quantile (0 to 1), interpolated within its bucket; `None` without
    /// samples. A quantile in the open last bucket is reported as its lower bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= target && count > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (target - below) / (count - below));
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_with_commas_quotes_and_braces_is_one_value() {
        let snapshot = Snapshot {
            text: concat!(
                "# TYPE eligo_x_total counter\n",
                "eligo_x_total{plugin=\"a,b\",reason=\"say \\\"hi\\\", {ok}\"} 3\n",
                "eligo_x_total{plugin=\"a\",reason=\"b\"} 4\n",
            )
            .into(),
        };
        assert_eq!(snapshot.value("eligo_x_total", &[("plugin", "a,b"), ("reason", "say \"hi\", {ok}")]), 3.0);
        assert_eq!(snapshot.value("eligo_x_total", &[("plugin", "a"), ("reason", "b")]), 4.0);
        assert_eq!(snapshot.total("eligo_x_total"), 7.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = Buckets(vec![(0.1, 50.0), (1.0, 100.0), (f64::INFINITY, 100.0)]);
        assert_eq!(b.quantile(0.5), Some(0.1));
        assert!((b.quantile(0.75).unwrap() - 0.55).abs() < 1e-9);
        assert_eq!(Buckets::default().quantile(0.5), None);
        let over = Buckets(vec![(1.0, 0.0), (f64::INFINITY, 4.0)]);
        assert_eq!(over.quantile(0.99), Some(1.0), "beyond the last bound: the bound");
        let later = Buckets(vec![(0.1, 60.0), (1.0, 130.0), (f64::INFINITY, 130.0)]);
        assert_eq!(later.since(&b), Buckets(vec![(0.1, 10.0), (1.0, 30.0), (f64::INFINITY, 30.0)]));
    }
}
