//! Replay: what a candidate plugin would have decided over the recorded
//! history, next to what the active plugins decide over the same history.
//!
//! The store keeps worker welcomes (the `worker` table), jobs and solutions.
//! They are replayed in the order they happened through two policy sets — the
//! active one, and the same with the candidate in place of one plugin — with
//! the inputs and per-worker state the server would have used: a welcome is
//! admitted at its connection time, a job is offered to the workers connected
//! when it was stored (and to each worker that connects while it is the
//! current job), a solution is validated against its job.
//!
//! The hooks whose inputs the store does not keep (`admit-connection`: the
//! HTTP request; `admit-job` and `offer-solution`: the nodes' state) are not
//! replayed, and the report says so.

use crate::plugin::{Hook, Job, LoadedPolicy, PolicySet, Solution, Validation, Welcome, WorkerState};
use crate::store::{
    Page, Paged, SolutionFilter, Store, StoreError, StoredJob, StoredSolution, WorkerFilter, WorkerRow,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Flips listed in full in a report; the counts cover all.
const LISTED: usize = 20;

/// Which part of the history to replay.
#[derive(Clone, Debug)]
pub enum Range {
    /// Everything stored.
    All,
    /// What happened at or after this time.
    Since(DateTime<Utc>),
    /// The jobs of these heights (inclusive), their solutions, and the welcomes
    /// of workers connected while they were current.
    Heights(i64, i64),
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store could not be read.
    #[error("reading the history: {0}")]
    Store(#[from] StoreError),
    /// The history lacks what a hook needs.
    #[error("the history cannot be replayed: {0}")]
    Incomplete(String),
}

/// The recorded history a replay runs over, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Worker connections (each a welcome that was admitted).
    pub welcomes: Vec<WorkerRow>,
    /// Stored jobs.
    pub jobs: Vec<StoredJob>,
    /// Stored solutions.
    pub solutions: Vec<StoredSolution>,
}

impl History {
    /// Reads the part of the history `range` selects from `store`.
    pub async fn read(store: &dyn Store, range: &Range) -> Result<History, ReplayError> {
        let in_range = |j: &StoredJob| match range {
            Range::All => true,
            Range::Since(since) => j.created_at >= *since,
            Range::Heights(from, to) => (*from..=*to).contains(&j.block_height),
        };
        // Newest first: once past the start of the range, nothing older is wanted.
        let older = |j: &StoredJob| matches!(range, Range::Since(since) if j.created_at < *since);
        let mut jobs = every_page(async |page| store.list_jobs(page).await, in_range, older).await?;
        jobs.sort_by_key(|j| (j.created_at, j.block_height));
        let Some(start) = (match range {
            Range::Since(since) => Some(*since),
            _ => jobs.first().map(|j| j.created_at),
        }) else {
            return Ok(History::default());
        };
        let tasks: BTreeSet<&str> = jobs.iter().map(|j| j.task_id.as_str()).collect();

        let all = SolutionFilter::default();
        let of_the_jobs = |s: &StoredSolution| tasks.contains(s.task_id.as_str());
        let mut solutions =
            every_page(async |page| store.list_solutions(&all, page).await, of_the_jobs, |_| false).await?;
        solutions.sort_by_key(|s| s.created_at);

        // Workers connected at any time during the range: those who connected
        // before it and were still there are welcomed as they were, at their time.
        let end = jobs.last().map(|j| j.created_at);
        let during = |w: &WorkerRow| {
            w.disconnected_at.is_none_or(|gone| gone >= start) && end.is_none_or(|end| w.connected_at <= end)
        };
        let all = WorkerFilter::default();
        let mut welcomes =
            every_page(async |page| store.list_worker_connections(&all, page).await, during, |_| false).await?;
        welcomes.sort_by_key(|w| (w.connected_at, w.id));
        Ok(History { welcomes, jobs, solutions })
    }
}

/// Every row of a newest-first listing that `keep` accepts, page by page; stops
/// after a page whose oldest row is `past` what is wanted.
async fn every_page<T>(
    mut page_of: impl AsyncFnMut(Page) -> Result<Paged<T>, StoreError>,
    keep: impl Fn(&T) -> bool,
    past: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let (mut kept, mut before) = (Vec::new(), None);
    loop {
        let page = page_of(Page::new(Page::MAX_LIMIT, before)).await?;
        let done = page.items.last().is_some_and(&past);
        kept.extend(page.items.into_iter().filter(|item| keep(item)));
        match page.next {
            Some(next) if !done => before = Some(next),
            _ => return Ok(kept),
        }
    }
}

/// What the candidate would have changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayReport {
    /// The plugin key the candidate took the place of (or was added as).
    pub against: String,
    /// Whether an active plugin of that key existed (else the candidate was added).
    pub replaced: bool,
    /// Heights of the first and last job replayed.
    pub heights: Option<(i64, i64)>,
    /// Welcomes.
    pub welcomes: WelcomeReport,
    /// Jobs.
    pub jobs: JobReport,
    /// Solutions.
    pub solutions: SolutionReport,
    /// Hooks of the candidate the history cannot replay, and why.
    pub not_replayed: Vec<String>,
}

/// Welcomes replayed through both sets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WelcomeReport {
    /// Welcomes replayed.
    pub replayed: usize,
    /// Refused by the active plugins.
    pub refused_by_active: usize,
    /// Refused by the candidate's set.
    pub refused_by_candidate: usize,
    /// Welcomes decided otherwise (the first 20).
    pub flips: Vec<WelcomeFlip>,
    /// How many were decided otherwise in all.
    pub flipped: usize,
}

/// A welcome decided otherwise.
#[derive(Clone, Debug, Serialize)]
pub struct WelcomeFlip {
    /// When the worker connected.
    pub at: DateTime<Utc>,
    /// Its hardware id.
    pub hardware_id: String,
    /// Its caption.
    pub caption: String,
    /// The active set's answer: `admitted`, or the refusal.
    pub active: String,
    /// The candidate set's answer.
    pub candidate: String,
}

/// Jobs replayed through both sets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobReport {
    /// Jobs replayed.
    pub replayed: usize,
    /// Offers (one job to one worker) by the active set.
    pub offers_by_active: usize,
    /// Offers by the candidate's set.
    pub offers_by_candidate: usize,
    /// Jobs whose workers differ.
    pub changed: usize,
    /// Offers only the candidate makes.
    pub workers_gained: usize,
    /// Offers only the active set makes.
    pub workers_lost: usize,
    /// Jobs whose workers differ (the first 20).
    pub flips: Vec<JobFlip>,
}

/// A job that would reach other workers.
#[derive(Clone, Debug, Serialize)]
pub struct JobFlip {
    /// The job.
    pub task_id: String,
    /// Its height.
    pub block_height: i64,
    /// Workers the active set reaches.
    pub active: usize,
    /// Workers the candidate's set reaches.
    pub candidate: usize,
    /// Workers (`hardware_id/caption`) only the candidate reaches.
    pub gained: Vec<String>,
    /// Workers only the active set reaches.
    pub lost: Vec<String>,
}

/// Solutions replayed through both sets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SolutionReport {
    /// Solutions replayed.
    pub replayed: usize,
    /// Valid by the active set.
    pub valid_by_active: usize,
    /// Valid by the candidate's set.
    pub valid_by_candidate: usize,
    /// Valid by the active set, invalid by the candidate.
    pub valid_to_invalid: usize,
    /// Invalid by the active set, valid by the candidate.
    pub invalid_to_valid: usize,
    /// Solutions decided otherwise (the first 20).
    pub flips: Vec<SolutionFlip>,
}

/// A solution whose validity would change.
#[derive(Clone, Debug, Serialize)]
pub struct SolutionFlip {
    /// Its nonce.
    pub unique_key: String,
    /// Its job.
    pub task_id: String,
    /// Who sent it.
    pub hardware_id: String,
    /// The active set's verdict: `valid`, or `invalid: <reason>`.
    pub active: String,
    /// The candidate set's verdict.
    pub candidate: String,
}

/// The active set with `candidate` in place of the plugin of its key (or added).
/// Shadows are left out of both: a replay must not feed the server's candidates.
pub fn with_candidate(active: &PolicySet, candidate: LoadedPolicy) -> (PolicySet, PolicySet, bool) {
    let unshadowed = |p: &LoadedPolicy| LoadedPolicy { shadow: None, ..p.clone() };
    let base: Vec<LoadedPolicy> = active.policies().iter().map(unshadowed).collect();
    let replaced = base.iter().any(|p| p.key == candidate.key);
    let mut changed: Vec<LoadedPolicy> = base.iter().filter(|p| p.key != candidate.key).cloned().collect();
    changed.push(unshadowed(&candidate));
    (PolicySet::new(base), PolicySet::new(changed), replaced)
}

/// Hooks `policy` implements that a replay cannot feed, with why.
fn unreplayable(policy: &LoadedPolicy) -> Vec<String> {
    let hooks = &policy.policy.info().hooks;
    [
        (Hook::AdmitConnection, "admit-connection: the store keeps no connection requests (headers, credentials)"),
        (Hook::AdmitJob, "admit-job: the store keeps no node state"),
        (Hook::OfferSolution, "offer-solution: the store keeps no node state"),
    ]
    .into_iter()
    .filter(|(hook, _)| hooks.contains(hook))
    .map(|(_, why)| why.to_string())
    .collect()
}

fn welcome_of(row: &WorkerRow) -> Welcome {
    Welcome {
        ip: row.ip.clone(),
        address: row.address.clone(),
        hardware: row.hardware.clone(),
        hardware_id: row.hardware_id.clone(),
        caption: row.caption.clone(),
    }
}

fn job_of(job: &StoredJob) -> Job {
    crate::pipeline::processors::solution::job_view(job)
}

fn millis(at: DateTime<Utc>) -> u64 {
    at.timestamp_millis().max(0) as u64
}

/// One event of the history, in the order they happened.
enum Event<'a> {
    Connect(usize),
    Disconnect(usize),
    Job(&'a StoredJob),
    Solution(&'a StoredSolution),
}

/// A connected worker: its state under each set (`None`: refused by that set).
struct Connected {
    name: String,
    active: Option<WorkerState>,
    candidate: Option<WorkerState>,
}

/// Replays `history` through `active` and `candidate` (the same set with the
/// candidate in; see [`with_candidate`]).
pub fn replay(
    history: &History,
    active: &PolicySet,
    candidate: &PolicySet,
    against: &str,
    replaced: bool,
) -> Result<ReplayReport, ReplayError> {
    let jobs: BTreeMap<&str, &StoredJob> = history.jobs.iter().map(|j| (j.task_id.as_str(), j)).collect();
    let events = timeline(history, &jobs)?;
    let mut report = ReplayReport {
        against: against.to_string(),
        replaced,
        heights: history.jobs.first().zip(history.jobs.last()).map(|(a, b)| (a.block_height, b.block_height)),
        not_replayed: candidate.policies().iter().filter(|p| &*p.key == against).flat_map(unreplayable).collect(),
        ..ReplayReport::default()
    };
    let sets = (active, candidate);
    let mut connected: BTreeMap<usize, Connected> = BTreeMap::new();
    let mut current: Option<Job> = None;
    for (at, event) in events {
        match event {
            Event::Connect(index) => {
                let row = &history.welcomes[index];
                let worker = connected.entry(index).or_insert(replay_welcome(row, at, sets, &mut report.welcomes));
                // The server offers the current job to a worker as it arrives.
                if let Some(job) = &current {
                    offer(job, &mut [worker], active, candidate, millis(at), None);
                }
            }
            Event::Disconnect(index) => {
                connected.remove(&index);
            }
            Event::Job(stored) => {
                let job = job_of(stored);
                let mut all: Vec<&mut Connected> = connected.values_mut().collect();
                offer(&job, &mut all, active, candidate, millis(at), Some(&mut report.jobs));
                current = Some(job);
            }
            Event::Solution(stored) => {
                replay_solution(stored, jobs[stored.task_id.as_str()], sets, &mut report.solutions);
            }
        }
    }
    Ok(report)
}

/// The history as the server lived it, in order; at the same instant:
/// connections, then jobs, then solutions, then departures. Every solution's
/// job must be stored: `validate-solution` needs it.
fn timeline<'a>(
    history: &'a History,
    jobs: &BTreeMap<&str, &StoredJob>,
) -> Result<Vec<(DateTime<Utc>, Event<'a>)>, ReplayError> {
    let mut events: Vec<(DateTime<Utc>, u8, Event)> = Vec::new();
    for (i, w) in history.welcomes.iter().enumerate() {
        events.push((w.connected_at, 0, Event::Connect(i)));
        if let Some(gone) = w.disconnected_at {
            events.push((gone, 3, Event::Disconnect(i)));
        }
    }
    events.extend(history.jobs.iter().map(|j| (j.created_at, 1, Event::Job(j))));
    for s in &history.solutions {
        if !jobs.contains_key(s.task_id.as_str()) {
            return Err(ReplayError::Incomplete(format!(
                "solution {} names job {}, which is not stored: validate-solution needs it",
                s.unique_key, s.task_id
            )));
        }
        events.push((s.created_at, 2, Event::Solution(s)));
    }
    events.sort_by_key(|(at, order, _)| (*at, *order));
    Ok(events.into_iter().map(|(at, _, event)| (at, event)).collect())
}

/// One recorded welcome under both sets: counted, and listed when they disagree.
/// Returns the worker as each set admitted it (or not).
fn replay_welcome(
    row: &WorkerRow,
    at: DateTime<Utc>,
    (active, candidate): (&PolicySet, &PolicySet),
    w: &mut WelcomeReport,
) -> Connected {
    let welcome = welcome_of(row);
    let now = millis(at);
    let (a, c) = (active.admit_worker(&welcome, now), candidate.admit_worker(&welcome, now));
    w.replayed += 1;
    w.refused_by_active += usize::from(a.is_err());
    w.refused_by_candidate += usize::from(c.is_err());
    if a.is_err() != c.is_err() {
        w.flipped += 1;
        if w.flips.len() < LISTED {
            let said = |r: &Result<WorkerState, crate::plugin::Refusal>| match r {
                Ok(_) => "admitted".to_string(),
                Err(refusal) => format!("refused: {refusal}"),
            };
            w.flips.push(WelcomeFlip {
                at,
                hardware_id: row.hardware_id.clone(),
                caption: row.caption.clone(),
                active: said(&a),
                candidate: said(&c),
            });
        }
    }
    let name = format!("{}/{}", row.hardware_id, row.caption);
    Connected { name, active: a.ok(), candidate: c.ok() }
}

/// One recorded solution under both sets' validators: counted, and listed when
/// they disagree.
fn replay_solution(
    stored: &StoredSolution,
    job: &StoredJob,
    (active, candidate): (&PolicySet, &PolicySet),
    s: &mut SolutionReport,
) {
    let job = job_of(job);
    let solution = Solution {
        task_id: stored.task_id.clone(),
        hardware_id: stored.hardware_id.clone(),
        caption: stored.caption.clone(),
        solution: stored.solution.clone(),
        solution_target: stored.solution_target,
        unique_key: stored.unique_key.clone(),
    };
    let (a, c) = (active.validate_solution(&job, &solution), candidate.validate_solution(&job, &solution));
    let valid = |v: &Validation| !matches!(v, Validation::Invalid(_));
    let said = |v: &Validation| match v {
        Validation::Invalid(refusal) => format!("invalid: {refusal}"),
        _ => "valid".to_string(),
    };
    s.replayed += 1;
    s.valid_by_active += usize::from(valid(&a));
    s.valid_by_candidate += usize::from(valid(&c));
    if valid(&a) != valid(&c) {
        if valid(&a) {
            s.valid_to_invalid += 1;
        } else {
            s.invalid_to_valid += 1;
        }
        if s.flips.len() < LISTED {
            s.flips.push(SolutionFlip {
                unique_key: stored.unique_key.clone(),
                task_id: stored.task_id.clone(),
                hardware_id: stored.hardware_id.clone(),
                active: said(&a),
                candidate: said(&c),
            });
        }
    }
}

/// Offers `job` to the `workers` under both sets, updating their states; a job
/// event (not a late arrival) is counted in `report`.
fn offer(
    job: &Job,
    workers: &mut [&mut Connected],
    active: &PolicySet,
    candidate: &PolicySet,
    now: u64,
    report: Option<&mut JobReport>,
) {
    let by_active = reached(job, workers, active, false, now);
    let by_candidate = reached(job, workers, candidate, true, now);
    let Some(report) = report else { return };
    report.replayed += 1;
    report.offers_by_active += by_active.len();
    report.offers_by_candidate += by_candidate.len();
    if by_active != by_candidate {
        let gained: Vec<String> = by_candidate.difference(&by_active).cloned().collect();
        let lost: Vec<String> = by_active.difference(&by_candidate).cloned().collect();
        report.changed += 1;
        report.workers_gained += gained.len();
        report.workers_lost += lost.len();
        if report.flips.len() < LISTED {
            report.flips.push(JobFlip {
                task_id: job.task_id.clone(),
                block_height: job.block_height,
                active: by_active.len(),
                candidate: by_candidate.len(),
                gained,
                lost,
            });
        }
    }
}

/// The workers (`hardware_id/caption`) `set` offers `job` to, among those it admitted.
fn reached(job: &Job, workers: &mut [&mut Connected], set: &PolicySet, candidate: bool, now: u64) -> BTreeSet<String> {
    let (names, mut states): (Vec<&str>, Vec<&mut WorkerState>) = workers
        .iter_mut()
        .filter_map(|w| {
            let state = if candidate { w.candidate.as_mut() } else { w.active.as_mut() };
            state.map(|s| (w.name.as_str(), s))
        })
        .unzip();
    let chosen = set.offer_job(job, &mut states, now);
    chosen.into_iter().filter_map(|i| names.get(i).map(|n| n.to_string())).collect()
}

impl ReplayReport {
    /// The report as a person reads it at a glance.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let heights = self.heights.map_or("no job".to_string(), |(a, b)| format!("heights {a}..{b}"));
        let how = if self.replaced { "in place of" } else { "added as" };
        out += &format!(
            "replayed {} welcomes, {} jobs ({heights}), {} solutions with the candidate {how} {}\n",
            self.welcomes.replayed, self.jobs.replayed, self.solutions.replayed, self.against
        );
        let w = &self.welcomes;
        out += &format!(
            "  welcomes   {} decided otherwise: refused {} (now {}), of {}\n",
            w.flipped, w.refused_by_candidate, w.refused_by_active, w.replayed
        );
        for f in &w.flips {
            out += &format!(
                "    {} {}/{}: {} → {}\n",
                f.at.format("%F %T"),
                f.hardware_id,
                f.caption,
                f.active,
                f.candidate
            );
        }
        let j = &self.jobs;
        out += &format!(
            "  jobs       {} of {} reach other workers: {} offers (now {}), {} workers gain a job, {} lose one\n",
            j.changed, j.replayed, j.offers_by_candidate, j.offers_by_active, j.workers_gained, j.workers_lost
        );
        for f in &j.flips {
            out += &format!(
                "    height {} ({}): {} → {} workers{}{}\n",
                f.block_height,
                f.task_id,
                f.active,
                f.candidate,
                if f.gained.is_empty() { String::new() } else { format!("; gains {}", f.gained.join(", ")) },
                if f.lost.is_empty() { String::new() } else { format!("; loses {}", f.lost.join(", ")) },
            );
        }
        let s = &self.solutions;
        out += &format!(
            "  solutions  {} of {} change validity: {} valid → invalid, {} invalid → valid ({} valid, now {})\n",
            s.valid_to_invalid + s.invalid_to_valid,
            s.replayed,
            s.valid_to_invalid,
            s.invalid_to_valid,
            s.valid_by_candidate,
            s.valid_by_active
        );
        for f in &s.flips {
            out +=
                &format!("    {} ({}, {}): {} → {}\n", f.unique_key, f.task_id, f.hardware_id, f.active, f.candidate);
        }
        for hook in &self.not_replayed {
            out += &format!("  not replayed: {hook}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solution_whose_job_is_not_stored_stops_the_replay_with_what_is_missing() {
        let solution = StoredSolution {
            unique_key: "7".into(),
            hardware_id: "h".into(),
            caption: "c".into(),
            task_id: "gone".into(),
            solution: "{}".into(),
            solution_target: 1,
            valid: true,
            checked: true,
            invalid_reason: None,
            broadcast: true,
            created_at: Utc::now(),
            address: None,
        };
        let history = History { solutions: vec![solution], ..History::default() };
        let none = PolicySet::new(Vec::new());
        let error = replay(&history, &none, &none, "k", false).expect_err("incomplete");
        assert!(error.to_string().contains("names job gone, which is not stored"), "{error}");
    }
}
