//! Several policies composed into one, and the per-connection state the host keeps
//! for them.
//!
//! Composition, in the order of the plugins' keys (file names):
//! - a connection, worker or job is admitted only if every policy admits it; a
//!   job is passed through each policy's normalisation in turn;
//! - a job reaches a worker, or a solution a node, only if every policy offers it;
//! - a solution is valid only if every validator accepts it; with no validator it
//!   is forwarded unchecked, as the original system did.
//!
//! A policy that fails (trap, deadline, fuel, memory, bad output) fails closed: it
//! refuses, offers nothing, or finds the solution invalid.

use super::bindings::{
    ConnectionRequest, Hook, Job, JobSubmission, NodeView, Solution, Welcome, WorkerProfile, Workers,
};
use super::policy::Policy;
use super::report::PluginReport;
use super::shadow::Shadow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A plugin's identity for per-connection state: its file stem. A reloaded plugin
/// (same file, new contents) keeps the state of its predecessor.
pub type PluginKey = Arc<str>;

/// One active policy.
#[derive(Clone)]
pub struct LoadedPolicy {
    /// Its key.
    pub key: PluginKey,
    /// The policy.
    pub policy: Arc<dyn Policy>,
    /// What is reported about it.
    pub report: PluginReport,
    /// A candidate version answering copies of its calls, if one is in `shadow/`.
    pub shadow: Option<Arc<Shadow>>,
}

/// Why something was refused, and by whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The refusing plugin's key.
    pub plugin: String,
    /// Its reason, or why it failed closed.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by policy {}: {}", self.plugin, self.reason)
    }
}

impl From<super::PoolError> for Refusal {
    /// A decision that did not come back fails closed, refused by eligo itself.
    fn from(error: super::PoolError) -> Self {
        Refusal { plugin: "eligo".into(), reason: format!("failed closed: {error}") }
    }
}

/// The outcome of validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    /// No policy validates solutions.
    Unchecked,
    /// Every validator accepted it.
    Valid,
    /// A validator refused it (or failed closed).
    Invalid(Refusal),
}

/// One policy's view of one worker.
#[derive(Clone, Debug)]
struct WorkerSlot {
    plugin: PluginKey,
    /// `None` when this policy refused the worker after it was already connected
    /// (a plugin added later): it is offered nothing by that policy.
    admitted: Option<(Arc<WorkerProfile>, u64)>,
}

/// What the policies know of one worker connection. Kept by the host, so it
/// survives plugin reloads.
#[derive(Clone, Debug)]
pub struct WorkerState {
    /// Shared, so a decision's copy of thousands of states costs no string copies.
    welcome: Arc<Welcome>,
    slots: Vec<WorkerSlot>,
}

impl WorkerState {
    /// The welcome the worker was admitted with.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// This policy's state word for the worker, if it admitted it.
    pub fn state_of(&self, plugin: &str) -> Option<u64> {
        self.slot(plugin).and_then(|s| s.admitted.as_ref()).map(|(_, state)| *state)
    }

    /// Each policy's view of the worker, in composition order: its key, and the
    /// profile and state word it admitted the worker with (`None` if it refused).
    pub fn policies(&self) -> impl Iterator<Item = (&str, Option<(&WorkerProfile, u64)>)> {
        self.slots.iter().map(|s| (&*s.plugin, s.admitted.as_ref().map(|(profile, state)| (&**profile, *state))))
    }

    fn slot(&self, plugin: &str) -> Option<&WorkerSlot> {
        self.slots.iter().find(|s| &*s.plugin == plugin)
    }

    fn slot_index(&self, plugin: &PluginKey) -> Option<usize> {
        self.slots.iter().position(|s| Arc::ptr_eq(&s.plugin, plugin) || s.plugin == *plugin)
    }
}

/// What the policies know of one node connection.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    slots: Vec<(PluginKey, Vec<u8>)>,
}

impl NodeState {
    /// Each policy's blob, by the policy's key: what a node's state is kept as
    /// outside the process (an HTTP node outlives a restart).
    pub fn blobs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.slots.iter().map(|(k, s)| (&**k, s.as_slice()))
    }

    /// The state made of `blobs` again.
    pub fn from_blobs(blobs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        NodeState { slots: blobs.into_iter().map(|(k, s)| (PluginKey::from(k), s)).collect() }
    }

    /// This policy's state blob for the node (empty if it has none).
    pub fn state_of(&self, plugin: &str) -> &[u8] {
        self.slots.iter().find(|(k, _)| &**k == plugin).map_or(&[][..], |(_, s)| s)
    }

    fn set(&mut self, plugin: &PluginKey, state: Vec<u8>) {
        match self.slots.iter_mut().find(|(k, _)| k == plugin) {
            Some((_, s)) => *s = state,
            None => self.slots.push((plugin.clone(), state)),
        }
    }
}

/// The active policies, in composition order. Immutable: a reload builds a new one.
#[derive(Clone, Default)]
pub struct PolicySet {
    policies: Vec<LoadedPolicy>,
}

fn failed_closed(key: &PluginKey, error: impl fmt::Display) -> Refusal {
    Refusal { plugin: key.to_string(), reason: format!("failed closed: {error}") }
}

impl PolicySet {
    /// Composes `policies`, ordered by key.
    pub fn new(mut policies: Vec<LoadedPolicy>) -> Self {
        policies.sort_by(|a, b| a.key.cmp(&b.key));
        PolicySet { policies }
    }

    /// The policies, in composition order.
    pub fn policies(&self) -> &[LoadedPolicy] {
        &self.policies
    }

    /// What is reported about each active policy.
    pub fn reports(&self) -> Vec<PluginReport> {
        self.policies.iter().map(|p| p.report.clone()).collect()
    }

    /// Whether deciding `hook` calls a plugin (or a shadow of one): then it
    /// belongs on the decision pool; the built-in rules alone run inline.
    pub fn calls_plugins(&self, hook: Hook) -> bool {
        self.with_hook(hook).any(|p| !p.policy.runs_inline() || p.shadow.is_some())
    }

    fn with_hook(&self, hook: Hook) -> impl Iterator<Item = &LoadedPolicy> {
        self.policies.iter().filter(move |p| p.policy.info().hooks.contains(&hook))
    }

    /// May this connection open?
    pub fn admit_connection(&self, request: &ConnectionRequest, now_ms: u64) -> Result<(), Refusal> {
        for p in self.with_hook(Hook::AdmitConnection) {
            let answer = p.policy.admit_connection(request, now_ms);
            if let Some(shadow) = &p.shadow {
                shadow.admit_connection(request, now_ms, &answer);
            }
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(Refusal { plugin: p.key.to_string(), reason }),
                Err(e) => return Err(failed_closed(&p.key, e)),
            }
        }
        Ok(())
    }

    /// This server's answer to a client's challenge `once`: the first policy with
    /// the `admit-connection` hook that takes the challenge gives it.
    pub fn challenge_answer(&self, request: &ConnectionRequest, once: &str) -> Result<String, Refusal> {
        let mut refusal = Refusal { plugin: "eligo".into(), reason: "no policy takes the challenge".into() };
        for p in self.with_hook(Hook::AdmitConnection) {
            match p.policy.challenge_answer(request, once) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(reason)) => refusal = Refusal { plugin: p.key.to_string(), reason },
                Err(e) => return Err(failed_closed(&p.key, e)),
            }
        }
        Err(refusal)
    }

    /// May a connection go on, given its answer to the host's `once` (`None`: it
    /// took no challenge)? Every policy with the `admit-connection` hook must agree.
    pub fn check_challenge(
        &self,
        request: &ConnectionRequest,
        once: &str,
        answer: Option<&str>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        for p in self.with_hook(Hook::AdmitConnection) {
            match p.policy.check_challenge(request, once, answer, now_ms) {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(Refusal { plugin: p.key.to_string(), reason }),
                Err(e) => return Err(failed_closed(&p.key, e)),
            }
        }
        Ok(())
    }

    /// Admits a worker: every policy must; each derives its own profile and state.
    pub fn admit_worker(&self, welcome: &Welcome, now_ms: u64) -> Result<WorkerState, Refusal> {
        self.admit_shared_worker(&Arc::new(welcome.clone()), now_ms)
    }

    /// As [`admit_worker`](Self::admit_worker), for a welcome the caller keeps
    /// too: the state shares it rather than holding a copy.
    pub fn admit_shared_worker(&self, welcome: &Arc<Welcome>, now_ms: u64) -> Result<WorkerState, Refusal> {
        let mut state = WorkerState { welcome: welcome.clone(), slots: Vec::with_capacity(self.policies.len()) };
        for p in &self.policies {
            let slot = self.admit_worker_with(p, welcome, now_ms)?;
            state.slots.push(slot);
        }
        Ok(state)
    }

    fn admit_worker_with(&self, p: &LoadedPolicy, welcome: &Welcome, now_ms: u64) -> Result<WorkerSlot, Refusal> {
        if !p.policy.info().hooks.contains(&Hook::AdmitWorker) {
            let profile = intern(WorkerProfile { tags: Vec::new(), limits: Vec::new() });
            return Ok(WorkerSlot { plugin: p.key.clone(), admitted: Some((profile, 0)) });
        }
        let answer = p.policy.admit_worker(welcome, now_ms);
        if let Some(shadow) = &p.shadow {
            shadow.admit_worker(welcome, now_ms, &answer);
        }
        match answer {
            Ok(Ok(a)) => Ok(WorkerSlot { plugin: p.key.clone(), admitted: Some((intern(a.profile), a.state)) }),
            Ok(Err(reason)) => Err(Refusal { plugin: p.key.to_string(), reason }),
            Err(e) => Err(failed_closed(&p.key, e)),
        }
    }

    /// Admits a node's job, passing it through each policy's normalisation. The
    /// node's state changes only if every policy admits the job.
    pub fn admit_job(&self, job: &JobSubmission, node: &mut NodeState, now_ms: u64) -> Result<JobSubmission, Refusal> {
        let mut job = job.clone();
        let mut new_states = Vec::new();
        for p in self.with_hook(Hook::AdmitJob) {
            let answer = p.policy.admit_job(&job, node.state_of(&p.key), now_ms);
            if let Some(shadow) = &p.shadow {
                shadow.admit_job(&job, node.state_of(&p.key), now_ms, &answer);
            }
            match answer {
                Ok(Ok(admission)) => {
                    job = admission.job;
                    new_states.push((p.key.clone(), admission.state));
                }
                Ok(Err(reason)) => return Err(Refusal { plugin: p.key.to_string(), reason }),
                Err(e) => return Err(failed_closed(&p.key, e)),
            }
        }
        for (key, state) in new_states {
            node.set(&key, state);
        }
        Ok(job)
    }

    /// Which of `workers` receive `job` (indices into `workers`, ascending). The
    /// chosen workers' states are updated; the others are left as they were.
    pub fn offer_job(&self, job: &Job, workers: &mut [&mut WorkerState], now_ms: u64) -> Vec<usize> {
        let mut candidates: Vec<usize> = (0..workers.len()).collect();
        let mut pending: Vec<(PluginKey, Vec<(usize, u64)>)> = Vec::new();
        for p in self.with_hook(Hook::OfferJob) {
            if candidates.is_empty() {
                break;
            }
            let mut profiles: Vec<WorkerProfile> = Vec::new();
            let mut profile_ids: HashMap<*const WorkerProfile, u32> = HashMap::new();
            // Profiles are interned, so neighbours usually share one: skip the map then.
            let mut last: Option<(*const WorkerProfile, u32)> = None;
            let mut columns = Workers {
                profiles: Vec::with_capacity(candidates.len()),
                states: Vec::with_capacity(candidates.len()),
            };
            let mut asked = Vec::with_capacity(candidates.len());
            for &w in &candidates {
                let slot = self.slot_for(p, workers[w], now_ms);
                let Some((profile, state)) = &workers[w].slots[slot].admitted else { continue };
                let ptr = Arc::as_ptr(profile);
                let id = match last {
                    Some((last_ptr, id)) if last_ptr == ptr => id,
                    _ => *profile_ids.entry(ptr).or_insert_with(|| {
                        profiles.push((**profile).clone());
                        (profiles.len() - 1) as u32
                    }),
                };
                last = Some((ptr, id));
                columns.profiles.push(id);
                columns.states.push(*state);
                asked.push(w);
            }
            let answer = p.policy.offer_job(job, &profiles, &columns, now_ms);
            if let Some(shadow) = &p.shadow {
                shadow.offer_job(job, &profiles, &columns, now_ms, &answer);
            }
            match answer {
                Ok(offer) => {
                    // One state per chosen worker, or one for all of them.
                    let state_of = |k: usize| offer.states.get(k).or(offer.states.first()).copied().unwrap_or(0);
                    let mut chosen: Vec<(usize, u64)> =
                        offer.workers.iter().enumerate().map(|(k, &i)| (asked[i as usize], state_of(k))).collect();
                    chosen.sort_unstable_by_key(|(w, _)| *w);
                    candidates = chosen.iter().map(|(w, _)| *w).collect();
                    pending.push((p.key.clone(), chosen));
                }
                Err(e) => {
                    tracing::warn!(plugin = %p.key, task_id = %job.task_id, error = %e, "offer-job failed closed: job goes to no worker");
                    return Vec::new();
                }
            }
        }
        for (key, chosen) in pending {
            for (w, state) in chosen {
                if candidates.binary_search(&w).is_err() {
                    continue;
                }
                if let Some(i) = workers[w].slot_index(&key) {
                    if let Some((_, s)) = &mut workers[w].slots[i].admitted {
                        *s = state;
                    }
                }
            }
        }
        candidates
    }

    /// The index of `p`'s slot in `worker`, admitting the worker to `p` first if
    /// `p` arrived after the worker did.
    fn slot_for(&self, p: &LoadedPolicy, worker: &mut WorkerState, now_ms: u64) -> usize {
        if let Some(i) = worker.slot_index(&p.key) {
            return i;
        }
        let slot = self.admit_worker_with(p, &worker.welcome, now_ms).unwrap_or_else(|refusal| {
            tracing::info!(%refusal, hardware_id = %worker.welcome.hardware_id, "a newly loaded policy refuses a connected worker: it gets no jobs from now on");
            WorkerSlot { plugin: p.key.clone(), admitted: None }
        });
        worker.slots.push(slot);
        worker.slots.len() - 1
    }

    /// Is `solution` valid for `job`?
    pub fn validate_solution(&self, job: &Job, solution: &Solution) -> Validation {
        let mut outcome = Validation::Unchecked;
        for p in self.with_hook(Hook::ValidateSolution) {
            let answer = p.policy.validate_solution(job, solution);
            if let Some(shadow) = &p.shadow {
                shadow.validate_solution(job, solution, &answer);
            }
            match answer {
                Ok(Ok(())) => outcome = Validation::Valid,
                Ok(Err(reason)) => return Validation::Invalid(Refusal { plugin: p.key.to_string(), reason }),
                Err(e) => return Validation::Invalid(failed_closed(&p.key, e)),
            }
        }
        outcome
    }

    /// Which of `nodes` receive `solution` (indices into `nodes`, ascending).
    pub fn offer_solution(&self, job: &Job, solution: &Solution, nodes: &[&NodeState], now_ms: u64) -> Vec<usize> {
        let mut candidates: Vec<usize> = (0..nodes.len()).collect();
        for p in self.with_hook(Hook::OfferSolution) {
            if candidates.is_empty() {
                break;
            }
            let views: Vec<NodeView> =
                candidates.iter().map(|&n| NodeView { state: nodes[n].state_of(&p.key).to_vec() }).collect();
            let answer = p.policy.offer_solution(job, solution, &views, now_ms);
            if let Some(shadow) = &p.shadow {
                shadow.offer_solution(job, solution, &views, now_ms, &answer);
            }
            match answer {
                Ok(chosen) => {
                    let mut next: Vec<usize> = chosen.iter().map(|&i| candidates[i as usize]).collect();
                    next.sort_unstable();
                    candidates = next;
                }
                Err(e) => {
                    tracing::warn!(plugin = %p.key, task_id = %job.task_id, error = %e, "offer-solution failed closed: solution goes to no node now");
                    return Vec::new();
                }
            }
        }
        candidates
    }
}

/// One shared `Arc` per distinct profile, so `offer-job` passes each distinct
/// profile once however many workers have it. Entries die with their last worker.
fn intern(profile: WorkerProfile) -> Arc<WorkerProfile> {
    static PROFILES: OnceLock<Mutex<HashMap<WorkerProfile, Weak<WorkerProfile>>>> = OnceLock::new();
    let Ok(mut profiles) = PROFILES.get_or_init(Default::default).lock() else { return Arc::new(profile) };
    if let Some(shared) = profiles.get(&profile).and_then(Weak::upgrade) {
        return shared;
    }
    // Forget dead entries now and then, so unique profiles do not pile up.
    if profiles.len() >= 1024 && profiles.len().is_power_of_two() {
        profiles.retain(|_, weak| weak.strong_count() > 0);
    }
    let shared = Arc::new(profile.clone());
    profiles.insert(profile, Arc::downgrade(&shared));
    shared
}

/// The hooks a policy implements, by name.
pub fn hook_names(hooks: &[Hook]) -> Vec<String> {
    hooks
        .iter()
        .map(|h| match h {
            Hook::AdmitConnection => "admit-connection",
            Hook::AdmitWorker => "admit-worker",
            Hook::AdmitJob => "admit-job",
            Hook::OfferJob => "offer-job",
            Hook::ValidateSolution => "validate-solution",
            Hook::OfferSolution => "offer-solution",
        })
        .map(String::from)
        .collect()
}
