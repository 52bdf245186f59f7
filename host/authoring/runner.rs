//! The plugin runner: one hook call with its cost (`eligo plugin run`), and fixture
//! cases with expected decisions (`eligo plugin test`).
//!
//! Cases run through the same [`PolicySet`] composition and per-connection state as
//! the server, so a case that passes here decides the same way in production. A
//! case is a list of steps; state carries from one step to the next, and each step
//! says its own time (`now`, milliseconds).
//!
//! ```json
//! { "cases": [ { "name": "stale heights are not sent", "steps": [
//!     { "hook": "admit-worker", "worker": "w1", "welcome": { … }, "expect": "accept" },
//!     { "hook": "offer-job", "job": { … }, "expect_workers": ["w1"] },
//!     { "hook": "offer-job", "job": { … }, "expect_workers": [] } ] } ] }
//! ```

use crate::plugin::{
    loaded_policy, ConnectionRequest, Cost, Job, JobSubmission, NodeState, NodeView, Policy, PolicySet, Solution,
    Validation, WasmPlugin, Welcome, WorkerProfile, WorkerState, Workers,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Why the runner could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The hook name is not one of the contract's.
    #[error("unknown hook {0:?}; hooks: info, admit-connection, admit-worker, admit-job, offer-job, validate-solution, offer-solution")]
    UnknownHook(String),
    /// The input does not fit the hook.
    #[error("input does not fit hook {hook}: {error}")]
    BadInput {
        /// The hook.
        hook: String,
        /// What is wrong.
        error: String,
    },
}

/// The arguments of each hook, as `plugin run` reads them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookInput {
    #[serde(default)]
    now: u64,
    request: Option<ConnectionRequest>,
    welcome: Option<Welcome>,
    job: Option<Value>,
    #[serde(default)]
    state: Vec<u8>,
    #[serde(default)]
    profiles: Vec<WorkerProfile>,
    workers: Option<Workers>,
    solution: Option<Solution>,
    #[serde(default)]
    nodes: Vec<NodeView>,
}

fn required<T>(hook: &str, what: &str, value: Option<T>) -> Result<T, RunnerError> {
    value.ok_or_else(|| RunnerError::BadInput { hook: hook.into(), error: format!("missing field `{what}`") })
}

fn parse<T: serde::de::DeserializeOwned>(hook: &str, value: Value) -> Result<T, RunnerError> {
    serde_json::from_value(value).map_err(|e| RunnerError::BadInput { hook: hook.into(), error: e.to_string() })
}

fn verdict<T: serde::Serialize>(v: Result<T, String>) -> Value {
    match v {
        Ok(value) => json!({ "accept": value }),
        Err(reason) => json!({ "refuse": reason }),
    }
}

/// Calls one hook of `plugin` with `input` (the hook's arguments as JSON) and
/// returns the decision as JSON, with the call's cost.
pub fn run_hook(plugin: &WasmPlugin, hook: &str, input: Value) -> Result<(Value, Cost), RunnerError> {
    let input: HookInput = parse(hook, input)?;
    let now = input.now;
    let (decision, cost) = match hook {
        "info" => {
            let (d, c) = plugin.call_measured(|b, s| b.info(s));
            (
                d.map(
                    |i| json!({ "name": i.name, "version": i.version, "hooks": crate::plugin::hook_names(&i.hooks) }),
                ),
                c,
            )
        }
        "admit-connection" => {
            let request = required(hook, "request", input.request)?;
            let (d, c) = plugin.call_measured(|b, s| b.admit_connection(s, &request, now));
            (d.map(verdict), c)
        }
        "admit-worker" => {
            let welcome = required(hook, "welcome", input.welcome)?;
            let (d, c) = plugin.call_measured(|b, s| b.admit_worker(s, &welcome, now));
            (d.map(verdict), c)
        }
        "admit-job" => {
            let job: JobSubmission = parse(hook, required(hook, "job", input.job)?)?;
            let (d, c) = plugin.call_measured(|b, s| b.admit_job(s, &job, &input.state, now));
            (d.map(verdict), c)
        }
        "offer-job" => {
            let job: Job = parse(hook, required(hook, "job", input.job)?)?;
            let workers = required(hook, "workers", input.workers)?;
            let (d, c) = plugin.call_measured(|b, s| b.offer_job(s, &job, &input.profiles, &workers, now));
            (d.map(|v| json!(v)), c)
        }
        "validate-solution" => {
            let job: Job = parse(hook, required(hook, "job", input.job)?)?;
            let solution = required(hook, "solution", input.solution)?;
            let (d, c) = plugin.call_measured(|b, s| b.validate_solution(s, &job, &solution));
            (d.map(verdict), c)
        }
        "offer-solution" => {
            let job: Job = parse(hook, required(hook, "job", input.job)?)?;
            let solution = required(hook, "solution", input.solution)?;
            let (d, c) = plugin.call_measured(|b, s| b.offer_solution(s, &job, &solution, &input.nodes, now));
            (d.map(|v| json!(v)), c)
        }
        other => return Err(RunnerError::UnknownHook(other.to_string())),
    };
    let decision =
        decision.unwrap_or_else(|e| json!({ "failed_closed": { "kind": e.kind(), "error": e.to_string() } }));
    Ok((decision, cost))
}

/// A file of fixture cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The settings the plugin is loaded with for these cases (a JSON object, as
    /// a `<key>.toml` would give them); none: the plugin's usual settings.
    #[serde(default)]
    pub settings: Option<Value>,
    /// The cases, run each from a fresh state.
    pub cases: Vec<Case>,
}

impl CaseFile {
    /// Reads a case file.
    pub fn read(path: &Path) -> anyhow::Result<CaseFile> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Loads `plugin` for these cases: with `settings_file` if given, else with
    /// the case file's own settings, else as [`load_file`](crate::plugin::load_file) would.
    pub fn load(
        &self,
        plugin: &Path,
        cases_file: &Path,
        settings_file: Option<&Path>,
    ) -> anyhow::Result<(WasmPlugin, crate::plugin::Settings)> {
        match (&self.settings, settings_file) {
            (Some(settings), None) => {
                let settings = crate::plugin::Settings {
                    json: crate::protocol::canonical_json(settings),
                    source: Some(format!("{} (settings)", cases_file.display())),
                };
                crate::plugin::load_file_with(plugin, settings)
            }
            _ => crate::plugin::load_file_configured(plugin, settings_file),
        }
    }
}

/// One case: steps run in order, state carried between them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// Its steps.
    pub steps: Vec<Step>,
}

/// What a step expects of an admission or validation.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Admitted.
    Accept,
    /// Refused; the reason contains this text.
    Refuse(String),
    /// Every validator accepted it.
    Valid,
    /// A validator refused it; the reason contains this text.
    Invalid(String),
    /// No validator looked at it.
    Unchecked,
}

/// One step of a case: a hook call on named connections.
#[derive(Debug, Deserialize)]
#[serde(tag = "hook", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// A connection opens.
    AdmitConnection {
        /// The request.
        request: ConnectionRequest,
        /// Time of the step.
        #[serde(default)]
        now: u64,
        /// Expected verdict.
        expect: Expect,
    },
    /// A connection that asked for the challenge with `once`: this server's answer.
    ChallengeAnswer {
        /// The request.
        request: ConnectionRequest,
        /// The client's `once`.
        once: String,
        /// Expected verdict.
        expect: Expect,
        /// The answer, if the step checks it.
        #[serde(default)]
        expect_answer: Option<String>,
    },
    /// A connection's answer to the host's `once` (none: it took no challenge).
    CheckChallenge {
        /// The request.
        request: ConnectionRequest,
        /// The host's `once`.
        #[serde(default)]
        once: String,
        /// The client's answer.
        #[serde(default)]
        answer: Option<String>,
        /// Time of the step.
        #[serde(default)]
        now: u64,
        /// Expected verdict.
        expect: Expect,
    },
    /// A worker named `worker` sends its welcome; admitted, it joins the case's workers.
    AdmitWorker {
        /// Name of the worker in this case.
        worker: String,
        /// Its welcome.
        welcome: Welcome,
        /// Time of the step.
        #[serde(default)]
        now: u64,
        /// Expected verdict.
        expect: Expect,
    },
    /// The node named `node` (created on first use) submits a job.
    AdmitJob {
        /// Name of the node in this case.
        node: String,
        /// The job.
        job: JobSubmission,
        /// Time of the step.
        #[serde(default)]
        now: u64,
        /// Expected verdict.
        expect: Expect,
        /// The normalised job, if the step checks it.
        #[serde(default)]
        expect_job: Option<JobSubmission>,
    },
    /// A job is offered to every admitted worker.
    OfferJob {
        /// The job.
        job: Job,
        /// Time of the step.
        #[serde(default)]
        now: u64,
        /// Names of the workers that must receive it (and no others).
        expect_workers: Vec<String>,
    },
    /// A solution is validated.
    ValidateSolution {
        /// Its job.
        job: Job,
        /// The solution.
        solution: Solution,
        /// Expected verdict: valid, unchecked or invalid.
        expect: Expect,
    },
    /// A solution is offered to every node.
    OfferSolution {
        /// Its job.
        job: Job,
        /// The solution.
        solution: Solution,
        /// Time of the step.
        #[serde(default)]
        now: u64,
        /// Names of the nodes that must receive it (and no others).
        expect_nodes: Vec<String>,
    },
}

/// How a case ended.
#[derive(Debug)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// What did not match, step by step; empty when the case passed.
    pub mismatches: Vec<String>,
}

fn verdict_matches(expect: &Expect, got: &Result<(), String>) -> bool {
    match (expect, got) {
        (Expect::Accept, Ok(())) => true,
        (Expect::Refuse(text), Err(reason)) => reason.contains(text.as_str()),
        _ => false,
    }
}

/// Runs every case of `cases` against `policy` alone.
pub fn run_cases(policy: Arc<dyn Policy>, cases: &CaseFile) -> Vec<CaseOutcome> {
    let set = PolicySet::new(vec![loaded_policy("under-test".into(), Path::new(""), "", policy)]);
    cases.cases.iter().map(|case| run_case(&set, case)).collect()
}

fn run_case(set: &PolicySet, case: &Case) -> CaseOutcome {
    let mut workers: BTreeMap<String, WorkerState> = BTreeMap::new();
    let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (n, step) in case.steps.iter().enumerate() {
        let n = n + 1;
        match step {
            Step::AdmitConnection { request, now, expect } => {
                let got = set.admit_connection(request, *now).map_err(|r| r.to_string());
                if !verdict_matches(expect, &got) {
                    mismatches.push(format!("step {n} admit-connection: expected {expect:?}, got {got:?}"));
                }
            }
            Step::ChallengeAnswer { request, once, expect, expect_answer } => {
                let got = set.challenge_answer(request, once).map_err(|r| r.to_string());
                if !verdict_matches(expect, &got.as_ref().map(|_| ()).map_err(Clone::clone)) {
                    mismatches.push(format!("step {n} challenge-answer: expected {expect:?}, got {got:?}"));
                }
                if let (Some(want), Ok(got)) = (expect_answer, &got) {
                    if want != got {
                        mismatches.push(format!("step {n} challenge-answer: expected answer {want}, got {got}"));
                    }
                }
            }
            Step::CheckChallenge { request, once, answer, now, expect } => {
                let got = set.check_challenge(request, once, answer.as_deref(), *now).map_err(|r| r.to_string());
                if !verdict_matches(expect, &got) {
                    mismatches.push(format!("step {n} check-challenge: expected {expect:?}, got {got:?}"));
                }
            }
            Step::AdmitWorker { worker, welcome, now, expect } => {
                let got = set.admit_worker(welcome, *now);
                let as_verdict = got.as_ref().map(|_| ()).map_err(|r| r.to_string());
                if !verdict_matches(expect, &as_verdict) {
                    mismatches.push(format!("step {n} admit-worker {worker}: expected {expect:?}, got {as_verdict:?}"));
                }
                if let Ok(state) = got {
                    workers.insert(worker.clone(), state);
                }
            }
            Step::AdmitJob { node, job, now, expect, expect_job } => {
                let state = nodes.entry(node.clone()).or_default();
                let got = set.admit_job(job, state, *now);
                let as_verdict = got.as_ref().map(|_| ()).map_err(|r| r.to_string());
                if !verdict_matches(expect, &as_verdict) {
                    mismatches.push(format!("step {n} admit-job from {node}: expected {expect:?}, got {as_verdict:?}"));
                }
                if let (Some(want), Ok(got)) = (expect_job, &got) {
                    if want != got {
                        mismatches.push(format!("step {n} admit-job from {node}: expected job {want:?}, got {got:?}"));
                    }
                }
            }
            Step::OfferJob { job, now, expect_workers } => {
                let names: Vec<String> = workers.keys().cloned().collect();
                let mut states: Vec<&mut WorkerState> = workers.values_mut().collect();
                let chosen: Vec<String> =
                    set.offer_job(job, &mut states, *now).into_iter().map(|i| names[i].clone()).collect();
                let mut want = expect_workers.clone();
                want.sort();
                if chosen != want {
                    mismatches.push(format!(
                        "step {n} offer-job height {}: expected workers {want:?}, got {chosen:?}",
                        job.block_height
                    ));
                }
            }
            Step::ValidateSolution { job, solution, expect } => {
                let got = set.validate_solution(job, solution);
                let ok = match (expect, &got) {
                    (Expect::Valid, Validation::Valid) | (Expect::Unchecked, Validation::Unchecked) => true,
                    (Expect::Invalid(text), Validation::Invalid(r)) => r.reason.contains(text.as_str()),
                    _ => false,
                };
                if !ok {
                    mismatches.push(format!("step {n} validate-solution: expected {expect:?}, got {got:?}"));
                }
            }
            Step::OfferSolution { job, solution, now, expect_nodes } => {
                let names: Vec<String> = nodes.keys().cloned().collect();
                let states: Vec<&NodeState> = nodes.values().collect();
                let chosen: Vec<String> =
                    set.offer_solution(job, solution, &states, *now).into_iter().map(|i| names[i].clone()).collect();
                let mut want = expect_nodes.clone();
                want.sort();
                if chosen != want {
                    mismatches.push(format!("step {n} offer-solution: expected nodes {want:?}, got {chosen:?}"));
                }
            }
        }
    }
    CaseOutcome { name: case.name.clone(), mismatches }
}

/// Loads a plugin and a case file and panics with every mismatch: the helper for a
/// plugin author's `#[test]`.
pub fn assert_cases(plugin: impl AsRef<Path>, cases: impl AsRef<Path>) {
    let file = CaseFile::read(cases.as_ref()).unwrap_or_else(|e| panic!("{e:#}"));
    let (plugin, _) = file.load(plugin.as_ref(), cases.as_ref(), None).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = file;
    let failed: Vec<String> = run_cases(Arc::new(plugin), &cases)
        .into_iter()
        .filter(|o| !o.mismatches.is_empty())
        .map(|o| format!("case {:?}:\n  {}", o.name, o.mismatches.join("\n  ")))
        .collect();
    assert!(failed.is_empty(), "{} case(s) failed:\n{}", failed.len(), failed.join("\n"));
}
