//! Shadow rollout: a candidate version of a plugin (`shadow/<key>.wasm` in the
//! plugin folder) gets every call the active plugin `<key>` gets, with the same
//! inputs, and never decides. The call is copied to the candidate's own thread
//! and answered there, off the hot path; eligo counts how often the two agreed,
//! keeps samples of where they did not, and what the candidate costs per call.
//! Promoting it is moving its file (and `.toml`) out of `shadow/`.
//!
//! The candidate sees the active plugin's per-connection state, not its own: it
//! is asked "what would you decide here?", call by call.

use super::bindings::{
    ConnectionRequest, Job, JobAdmission, JobOffer, JobSubmission, NodeView, Solution, Welcome, WorkerAdmission,
    WorkerProfile, Workers,
};
use super::policy::{Decision, Policy, Verdict};
use super::report::PluginReport;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

/// Calls waiting for the candidate; past this, calls are dropped (and counted)
/// rather than slowing the active path down.
const QUEUE: usize = 1024;
/// Disagreements kept as samples, newest last.
const SAMPLES: usize = 20;
/// Longest input kept in a sample, in bytes of JSON.
const MAX_SAMPLE_INPUT: usize = 4096;

/// One call the active plugin answered, with its answer.
enum Call {
    AdmitConnection(ConnectionRequest, u64, Decision<Verdict<()>>),
    AdmitWorker(Welcome, u64, Decision<Verdict<WorkerAdmission>>),
    AdmitJob(JobSubmission, Vec<u8>, u64, Decision<Verdict<JobAdmission>>),
    OfferJob(Job, Vec<WorkerProfile>, Workers, u64, Decision<JobOffer>),
    ValidateSolution(Job, Solution, Decision<Verdict<()>>),
    OfferSolution(Job, Solution, Vec<NodeView>, u64, Decision<Vec<u32>>),
}

/// Where the active and the candidate answered differently.
#[derive(Clone, Debug, Serialize)]
pub struct Disagreement {
    /// When, RFC 3339.
    pub at: String,
    /// The hook.
    pub hook: &'static str,
    /// The call's input (cut to a few KiB).
    pub input: Value,
    /// What the active plugin answered.
    pub active: Value,
    /// What the candidate answered.
    pub shadow: Value,
}

/// What is reported about a candidate at `/plugins`.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowReport {
    /// The candidate itself.
    #[serde(flatten)]
    pub plugin: PluginReport,
    /// The key of the active plugin it shadows.
    pub shadows: String,
    /// Whether a plugin with that key is active (if not, it gets no calls).
    pub shadowing: bool,
    /// Calls it answered.
    pub calls: u64,
    /// Calls where it answered as the active plugin did.
    pub agreed: u64,
    /// Calls where it did not.
    pub disagreed: u64,
    /// Calls it failed (trap, deadline, …) where the active plugin did not.
    pub failed: u64,
    /// Calls not copied to it because its queue was full.
    pub dropped: u64,
    /// Its mean time per call, in microseconds.
    pub mean_call_micros: f64,
    /// The latest disagreements, oldest first.
    pub samples: Vec<Disagreement>,
}

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    agreed: AtomicU64,
    disagreed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    nanos: AtomicU64,
    samples: Mutex<VecDeque<Disagreement>>,
}

/// A candidate plugin, answering copies of the active plugin's calls.
pub struct Shadow {
    report: PluginReport,
    shadows: String,
    tx: mpsc::SyncSender<Call>,
    stats: Arc<Stats>,
}

impl Shadow {
    /// Starts the candidate's thread. `shadows` is the key of the plugin it shadows.
    pub fn start(candidate: Arc<dyn Policy>, report: PluginReport, shadows: &str) -> std::io::Result<Arc<Shadow>> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let worker_stats = stats.clone();
        let plugin = shadows.to_string();
        std::thread::Builder::new().name(format!("eligo-shadow-{shadows}")).spawn(move || {
            // Ends when the last set holding this shadow is dropped.
            for call in rx {
                answer(&*candidate, call, &worker_stats, &plugin);
            }
        })?;
        Ok(Arc::new(Shadow { report, shadows: shadows.to_string(), tx, stats }))
    }

    /// What is reported about it; `shadowing` says whether its key is active.
    pub fn report(&self, shadowing: bool) -> ShadowReport {
        let s = &self.stats;
        let calls = s.calls.load(Ordering::Relaxed);
        let nanos = s.nanos.load(Ordering::Relaxed);
        ShadowReport {
            plugin: self.report.clone(),
            shadows: self.shadows.clone(),
            shadowing,
            calls,
            agreed: s.agreed.load(Ordering::Relaxed),
            disagreed: s.disagreed.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            mean_call_micros: if calls == 0 { 0.0 } else { nanos as f64 / calls as f64 / 1000.0 },
            samples: s.samples.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default(),
        }
    }

    fn send(&self, call: Call) {
        if self.tx.try_send(call).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::add("eligo_shadow_calls_total", &[("plugin", &self.shadows), ("outcome", "dropped")], 1);
        }
    }

    pub(crate) fn admit_connection(&self, r: &ConnectionRequest, now: u64, a: &Decision<Verdict<()>>) {
        self.send(Call::AdmitConnection(r.clone(), now, a.clone()));
    }

    pub(crate) fn admit_worker(&self, w: &Welcome, now: u64, a: &Decision<Verdict<WorkerAdmission>>) {
        self.send(Call::AdmitWorker(w.clone(), now, a.clone()));
    }

    pub(crate) fn admit_job(&self, j: &JobSubmission, state: &[u8], now: u64, a: &Decision<Verdict<JobAdmission>>) {
        self.send(Call::AdmitJob(j.clone(), state.to_vec(), now, a.clone()));
    }

    pub(crate) fn offer_job(&self, j: &Job, p: &[WorkerProfile], w: &Workers, now: u64, a: &Decision<JobOffer>) {
        self.send(Call::OfferJob(j.clone(), p.to_vec(), w.clone(), now, a.clone()));
    }

    pub(crate) fn validate_solution(&self, j: &Job, s: &Solution, a: &Decision<Verdict<()>>) {
        self.send(Call::ValidateSolution(j.clone(), s.clone(), a.clone()));
    }

    pub(crate) fn offer_solution(&self, j: &Job, s: &Solution, n: &[NodeView], now: u64, a: &Decision<Vec<u32>>) {
        self.send(Call::OfferSolution(j.clone(), s.clone(), n.to_vec(), now, a.clone()));
    }
}

/// An answer as compared: a refusal is "refused" whatever its wording, so a
/// candidate that only rewords reasons agrees; a failure is its own answer.
fn verdict<T: Serialize>(d: &Decision<Verdict<T>>) -> Value {
    match d {
        Ok(Ok(v)) => json!({ "accept": v }),
        Ok(Err(_)) => json!("refuse"),
        Err(e) => json!({ "failed_closed": e.kind() }),
    }
}

/// A verdict as shown in a sample: with the reason.
fn shown<T: Serialize>(d: &Decision<Verdict<T>>) -> Value {
    match d {
        Ok(Err(reason)) => json!({ "refuse": reason }),
        other => verdict(other),
    }
}

/// An `offer-job` answer as compared: who gets the job and the state each ends up
/// with, however the states were spelled (one for all, or one each).
fn offer(d: &Decision<JobOffer>) -> Value {
    match d {
        Ok(o) => {
            let state = |k: usize| o.states.get(k).or(o.states.first()).copied().unwrap_or(0);
            let mut chosen: Vec<(u32, u64)> = o.workers.iter().enumerate().map(|(k, &w)| (w, state(k))).collect();
            chosen.sort_unstable();
            json!(chosen)
        }
        Err(e) => json!({ "failed_closed": e.kind() }),
    }
}

fn chosen(d: &Decision<Vec<u32>>) -> Value {
    match d {
        Ok(v) => {
            let mut v = v.clone();
            v.sort_unstable();
            json!(v)
        }
        Err(e) => json!({ "failed_closed": e.kind() }),
    }
}

fn cut(input: Value) -> Value {
    let text = input.to_string();
    if text.len() <= MAX_SAMPLE_INPUT {
        return input;
    }
    json!({ "truncated": super::truncate(&text, MAX_SAMPLE_INPUT) })
}

/// Asks the candidate the same call and records how it compares.
fn answer(candidate: &dyn Policy, call: Call, stats: &Stats, plugin: &str) {
    let started = Instant::now();
    // (hook, input, active as compared, candidate as compared, active shown, candidate shown, candidate failed)
    let (hook, input, active, shadow, active_shown, shadow_shown, failed) = match call {
        Call::AdmitConnection(r, now, a) => {
            let s = candidate.admit_connection(&r, now);
            (
                "admit-connection",
                json!({ "request": r, "now": now }),
                verdict(&a),
                verdict(&s),
                shown(&a),
                shown(&s),
                s.is_err(),
            )
        }
        Call::AdmitWorker(w, now, a) => {
            let s = candidate.admit_worker(&w, now);
            (
                "admit-worker",
                json!({ "welcome": w, "now": now }),
                verdict(&a),
                verdict(&s),
                shown(&a),
                shown(&s),
                s.is_err(),
            )
        }
        Call::AdmitJob(j, state, now, a) => {
            let s = candidate.admit_job(&j, &state, now);
            let input = json!({ "job": j, "state": state, "now": now });
            ("admit-job", input, verdict(&a), verdict(&s), shown(&a), shown(&s), s.is_err())
        }
        Call::OfferJob(j, p, w, now, a) => {
            let s = candidate.offer_job(&j, &p, &w, now);
            let input = json!({ "job": j, "profiles": p, "workers": w, "now": now });
            let (a, s, failed) = (offer(&a), offer(&s), s.is_err());
            ("offer-job", input, a.clone(), s.clone(), a, s, failed)
        }
        Call::ValidateSolution(j, sol, a) => {
            let s = candidate.validate_solution(&j, &sol);
            let input = json!({ "job": j, "solution": sol });
            ("validate-solution", input, verdict(&a), verdict(&s), shown(&a), shown(&s), s.is_err())
        }
        Call::OfferSolution(j, sol, n, now, a) => {
            let s = candidate.offer_solution(&j, &sol, &n, now);
            let input = json!({ "job": j, "solution": sol, "nodes": n, "now": now });
            let (a, s, failed) = (chosen(&a), chosen(&s), s.is_err());
            ("offer-solution", input, a.clone(), s.clone(), a, s, failed)
        }
    };
    let elapsed = started.elapsed();
    stats.calls.fetch_add(1, Ordering::Relaxed);
    stats.nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    crate::metrics::histogram("eligo_shadow_call_seconds", &[("plugin", plugin)]).record(elapsed.as_secs_f64());
    let outcome = if active == shadow {
        stats.agreed.fetch_add(1, Ordering::Relaxed);
        "agree"
    } else {
        if failed {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        stats.disagreed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = stats.samples.lock() {
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(Disagreement {
                at: chrono::Utc::now().to_rfc3339(),
                hook,
                input: cut(input),
                active: active_shown,
                shadow: shadow_shown,
            });
        }
        "disagree"
    };
    crate::metrics::add("eligo_shadow_calls_total", &[("plugin", plugin), ("hook", hook), ("outcome", outcome)], 1);
}
