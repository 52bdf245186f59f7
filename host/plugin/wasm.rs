//! A loaded plugin: pre-instantiated once, instances reused, every call limited.

use super::bindings::{
    v0_1, ConnectionRequest, Hook, Job, JobAdmission, JobOffer, JobSubmission, NodeView, PluginInfo,
    Policy as PolicyWorld, PolicyPre, Solution, Welcome, WorkerAdmission, WorkerProfile, Workers, WIT_VERSION,
};
use super::cache::Compiled;
use super::engine::{LoadError, PluginEngine};
use super::host_state::{truncate, HostState, LogBudget};
use super::limits::Limits;
use super::policy::{check_indices, check_job_offer, Decision, Policy, PolicyError, Verdict};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// Longest refusal reason kept from a plugin.
const MAX_REASON: usize = 1024;

/// What one call cost.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Cost {
    /// Wall-clock time of the call, instance set-up excluded.
    pub elapsed: Duration,
    /// Fuel the call used.
    pub fuel: u64,
    /// Size of the instance's linear memory after the call, in bytes.
    pub memory_bytes: usize,
}

/// Every decision hook, in the order of [`WasmPlugin`]'s call timers.
pub const HOOKS: [Hook; 6] = [
    Hook::AdmitConnection,
    Hook::AdmitWorker,
    Hook::AdmitJob,
    Hook::OfferJob,
    Hook::ValidateSolution,
    Hook::OfferSolution,
];

/// A compiled plugin, bound to the version of the contract it was built against.
pub(crate) enum Contract {
    /// `eligo:policy@0.1.0`: no settings, no challenge.
    V0_1(v0_1::PolicyPre<HostState>),
    /// The current contract.
    Current(PolicyPre<HostState>),
}

impl Contract {
    /// The contract's package and version, as users write it.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Contract::V0_1(_) => v0_1::WIT_VERSION,
            Contract::Current(_) => WIT_VERSION,
        }
    }
}

/// One instance's exports, whichever contract version they follow. Each method
/// is one call of the current contract; a hook an older version lacks answers as
/// a plugin without that hook would.
pub enum Exports {
    /// A 0.1.0 plugin.
    V0_1(v0_1::Policy),
    /// A plugin of the current contract.
    Current(PolicyWorld),
}

/// Calls the same function of `decisions` whichever version `$exports` follows:
/// the records are shared, so arguments and answers need no conversion.
macro_rules! on_either {
    ($exports:expr, |$d:ident| $call:expr) => {
        match $exports {
            Exports::V0_1(b) => {
                let $d = b.eligo_policy_decisions();
                $call
            }
            Exports::Current(b) => {
                let $d = b.eligo_policy_decisions();
                $call
            }
        }
    };
}

type S<'a> = &'a mut Store<HostState>;

#[allow(missing_docs)]
impl Exports {
    pub fn info(&self, s: S) -> wasmtime::Result<PluginInfo> {
        on_either!(self, |d| d.call_info(s))
    }

    /// Hands the plugin its settings (JSON text). A 0.1.0 plugin has no way to
    /// take them, so any settings but `{}` are refused for it.
    pub fn configure(&self, s: S, settings: &str) -> wasmtime::Result<Verdict<()>> {
        match self {
            Exports::V0_1(_) if settings == NO_SETTINGS => Ok(Ok(())),
            Exports::V0_1(_) => Ok(Err(
                "it is built against eligo:policy@0.1.0, which takes no settings: rebuild it against 0.2.0 to configure it"
                    .into(),
            )),
            Exports::Current(b) => b.eligo_policy_decisions().call_configure(s, settings),
        }
    }

    pub fn admit_connection(&self, s: S, request: &ConnectionRequest, now: u64) -> wasmtime::Result<Verdict<()>> {
        on_either!(self, |d| d.call_admit_connection(s, request, now))
    }

    pub fn admit_worker(&self, s: S, welcome: &Welcome, now: u64) -> wasmtime::Result<Verdict<WorkerAdmission>> {
        on_either!(self, |d| d.call_admit_worker(s, welcome, now))
    }

    pub fn admit_job(
        &self,
        s: S,
        job: &JobSubmission,
        state: &[u8],
        now: u64,
    ) -> wasmtime::Result<Verdict<JobAdmission>> {
        on_either!(self, |d| d.call_admit_job(s, job, state, now))
    }

    pub fn offer_job(
        &self,
        s: S,
        job: &Job,
        profiles: &[WorkerProfile],
        workers: &Workers,
        now: u64,
    ) -> wasmtime::Result<JobOffer> {
        on_either!(self, |d| d.call_offer_job(s, job, profiles, workers, now))
    }

    pub fn validate_solution(&self, s: S, job: &Job, solution: &Solution) -> wasmtime::Result<Verdict<()>> {
        on_either!(self, |d| d.call_validate_solution(s, job, solution))
    }

    pub fn offer_solution(
        &self,
        s: S,
        job: &Job,
        solution: &Solution,
        nodes: &[NodeView],
        now: u64,
    ) -> wasmtime::Result<Vec<u32>> {
        on_either!(self, |d| d.call_offer_solution(s, job, solution, nodes, now))
    }

    pub fn challenge_answer(&self, s: S, request: &ConnectionRequest, once: &str) -> wasmtime::Result<Verdict<String>> {
        match self {
            Exports::V0_1(_) => Ok(Err(NO_CHALLENGE.into())),
            Exports::Current(b) => b.eligo_policy_decisions().call_challenge_answer(s, request, once),
        }
    }

    pub fn check_challenge(
        &self,
        s: S,
        request: &ConnectionRequest,
        once: &str,
        answer: Option<&str>,
        now: u64,
    ) -> wasmtime::Result<Verdict<()>> {
        match self {
            Exports::V0_1(_) => Ok(Ok(())),
            Exports::Current(b) => b.eligo_policy_decisions().call_check_challenge(s, request, once, answer, now),
        }
    }
}

/// The settings of a plugin the operator did not configure.
pub const NO_SETTINGS: &str = "{}";
const NO_CHALLENGE: &str = "this plugin does not take the challenge";

struct Instance {
    store: Store<HostState>,
    exports: Exports,
}

/// What one stretch of a plugin's running may take: a call, or the making of an
/// instance (instantiation, `configure`, and `info` at load).
#[derive(Clone, Copy)]
struct Budget {
    /// 0: fuel is off.
    fuel: u64,
    deadline_ms: u64,
}

impl Budget {
    /// One call: the precise fuel budget, with the deadline as backstop.
    fn call(limits: &Limits) -> Self {
        Budget { fuel: limits.fuel, deadline_ms: limits.deadline_ms }
    }

    /// Making an instance: start-ups (an interpreter's, a plugin's own
    /// `configure`) may take far longer than a decision, and are off the hot path.
    fn load(limits: &Limits) -> Self {
        let fuel = match (limits.fuel, limits.load_fuel) {
            (0, _) => 0,
            // With fuel on in the engine a store always has a budget: "none" is all there is.
            (_, 0) => u64::MAX,
            (_, load) => load,
        };
        Budget { fuel, deadline_ms: limits.load_deadline_ms }
    }
}

/// Why no instance could be made.
enum InstantiateError {
    Failed(String),
    SettingsRefused(String),
}

/// A plugin ready to decide. Cheap to call from many threads at once: each call
/// takes an idle instance (or makes one from the pre-instantiated component) and
/// gives it back afterwards, unless the call trapped.
pub struct WasmPlugin {
    engine: PluginEngine,
    name: Arc<str>,
    pre: Contract,
    /// Handed to `configure` on every new instance.
    settings: Arc<str>,
    info: PluginInfo,
    idle: Mutex<Vec<Instance>>,
    log: Arc<LogBudget>,
    /// Call time per hook (`eligo_plugin_call_seconds`), resolved at load so a call
    /// records without a look-up; indexed like [`HOOKS`].
    timers: [metrics::Histogram; HOOKS.len()],
    /// Whether its code came from the cache of compiled plugins.
    compiled: Compiled,
}

impl WasmPlugin {
    pub(crate) fn new(
        engine: PluginEngine,
        name: &str,
        pre: Contract,
        settings: &str,
        compiled: Compiled,
    ) -> Result<Self, LoadError> {
        let log = Arc::new(LogBudget::new(engine.limits.log_lines_per_second));
        let placeholder = PluginInfo { name: name.to_string(), version: String::new(), hooks: Vec::new() };
        let timers = HOOKS.map(|hook| {
            let hook = super::hook_names(&[hook]).remove(0);
            crate::metrics::histogram("eligo_plugin_call_seconds", &[("plugin", name), ("hook", &hook)])
        });
        let plugin = WasmPlugin {
            engine,
            name: name.into(),
            pre,
            settings: settings.into(),
            info: placeholder,
            idle: Mutex::new(Vec::new()),
            log,
            timers,
            compiled,
        };
        // The first instance tells whether the plugin takes its settings at all.
        let first = plugin.instantiate().map_err(|e| match e {
            InstantiateError::SettingsRefused(reason) => LoadError::Settings(reason),
            InstantiateError::Failed(e) => LoadError::Info(e),
        })?;
        if let Ok(mut idle) = plugin.idle.lock() {
            idle.push(first);
        }
        let load = Budget::load(&plugin.engine.limits);
        let info = plugin.run(|b, s| b.info(s), load, false).0.map_err(|e| LoadError::Info(e.to_string()))?;
        Ok(WasmPlugin { info, ..plugin })
    }

    /// The name logs and metrics use for this plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings it was configured with (JSON text; `{}` for none).
    pub fn settings(&self) -> &str {
        &self.settings
    }

    /// Whether its code was compiled at this load or taken from the cache.
    pub fn compiled(&self) -> Compiled {
        self.compiled
    }

    /// A new instance, configured, made under the load budget.
    fn instantiate(&self) -> Result<Instance, InstantiateError> {
        let limits = &self.engine.limits;
        let mut store =
            Store::new(&self.engine.engine, HostState::new(self.name.clone(), limits.memory_bytes, self.log.clone()));
        store.limiter(|s| &mut s.memory);
        let budget = Budget::load(limits);
        self.arm(&mut store, budget);
        let failed = |e: wasmtime::Error| InstantiateError::Failed(load_failure(e, budget));
        let exports = match &self.pre {
            Contract::V0_1(pre) => Exports::V0_1(pre.instantiate(&mut store).map_err(failed)?),
            Contract::Current(pre) => Exports::Current(pre.instantiate(&mut store).map_err(failed)?),
        };
        match exports.configure(&mut store, &self.settings) {
            Ok(Ok(())) => Ok(Instance { store, exports }),
            Ok(Err(reason)) => Err(InstantiateError::SettingsRefused(reason)),
            Err(e) => {
                Err(InstantiateError::Failed(format!("its configure() call failed: {}", load_failure(e, budget))))
            }
        }
    }

    /// Runs `f` on an instance under the call limits, and says what it cost.
    pub fn call_measured<R>(
        &self,
        f: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (Decision<R>, Cost) {
        self.run(f, Budget::call(&self.engine.limits), true)
    }

    fn run<R>(
        &self,
        f: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<R>,
        budget: Budget,
        measure: bool,
    ) -> (Decision<R>, Cost) {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match idle.map(Ok).unwrap_or_else(|| self.instantiate()) {
            Ok(i) => i,
            Err(InstantiateError::Failed(e)) => return (Err(PolicyError::Instantiate(e)), Cost::default()),
            Err(InstantiateError::SettingsRefused(reason)) => {
                let error = format!("a new instance refused the settings its first one took: {reason}");
                return (Err(PolicyError::Instantiate(error)), Cost::default());
            }
        };
        let limits = &self.engine.limits;
        self.arm(&mut instance.store, budget);
        instance.store.data_mut().memory.refused = false;
        // Reading the clock costs ~25 ns, a twentieth of the smallest call: only when asked.
        let started = measure.then(Instant::now);
        let result = f(&instance.exports, &mut instance.store);
        let cost = Cost {
            elapsed: started.map(|s| s.elapsed()).unwrap_or_default(),
            fuel: budget.fuel.saturating_sub(instance.store.get_fuel().unwrap_or(budget.fuel)),
            memory_bytes: instance.store.data().memory.peak,
        };
        match result {
            Ok(value) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < limits.idle_instances {
                        idle.push(instance);
                    }
                }
                (Ok(value), cost)
            }
            // A trapped instance is dropped: its memory may be half-updated and
            // the component model forbids entering it again.
            Err(e) => (Err(self.classify(e, &instance.store, budget)), cost),
        }
    }

    /// Runs a hook and records its call time.
    fn call<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Decision<R> {
        let (decision, cost) = self.run(f, Budget::call(&self.engine.limits), true);
        if let Some(timer) = HOOKS.iter().position(|h| *h == hook).and_then(|i| self.timers.get(i)) {
            timer.record(cost.elapsed.as_secs_f64());
        }
        decision
    }

    fn classify(&self, error: wasmtime::Error, store: &Store<HostState>, budget: Budget) -> PolicyError {
        let failure = if store.data().memory.refused {
            PolicyError::Memory(store.data().memory.cap())
        } else {
            match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => PolicyError::Fuel(budget.fuel),
                Some(Trap::Interrupt) => PolicyError::Deadline(budget.deadline_ms),
                _ => PolicyError::Trap(format!("{error:#}")),
            }
        };
        crate::metrics::plugin_failure(&self.name, failure.kind());
        tracing::warn!(plugin = %self.name, kind = failure.kind(), error = %failure, "plugin call failed closed");
        failure
    }

    fn check_input(&self, what: &str, len: usize, max: usize) -> Decision<()> {
        if len > max {
            crate::metrics::plugin_failure(&self.name, "input_too_large");
            return Err(PolicyError::InputTooLarge(format!("{what} has {len}, at most {max} are passed to a plugin")));
        }
        Ok(())
    }

    fn check_output(&self, what: &str, len: usize, max: usize) -> Decision<()> {
        if len > max {
            crate::metrics::plugin_failure(&self.name, "bad_output");
            return Err(PolicyError::BadOutput(format!("{what} of {len} bytes, at most {max} are accepted")));
        }
        Ok(())
    }

    fn blob_limit(&self) -> usize {
        self.engine.limits.max_blob_bytes
    }

    fn counted<T>(&self, decision: Decision<T>) -> Decision<T> {
        if let Err(e) = &decision {
            if matches!(e, PolicyError::BadOutput(_)) {
                crate::metrics::plugin_failure(&self.name, e.kind());
            }
        }
        decision
    }
}

impl WasmPlugin {
    /// Sets the fuel and deadline of what runs next on `store`.
    fn arm(&self, store: &mut Store<HostState>, budget: Budget) {
        if budget.fuel > 0 {
            // Refused only when fuel is off in the engine, which it is not when fuel > 0.
            let _ = store.set_fuel(budget.fuel);
        }
        store.set_epoch_deadline(deadline_ticks(budget.deadline_ms, self.engine.tick));
    }
}

/// Ticks of `tick` that last at least `deadline_ms`: the next tick may come at
/// any moment, so one more than the deadline holds whole.
fn deadline_ticks(deadline_ms: u64, tick: Duration) -> u64 {
    let tick = (tick.as_millis() as u64).max(1);
    deadline_ms.div_ceil(tick).max(1) + 1
}

/// Why making an instance failed, naming the load limit it hit, if one.
fn load_failure(error: wasmtime::Error, budget: Budget) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "its start-up ran past the load deadline of {} ms ([plugins.limits] load_deadline_ms)",
            budget.deadline_ms
        ),
        Some(Trap::OutOfFuel) => {
            format!("its start-up used up the load fuel of {} ([plugins.limits] load_fuel)", budget.fuel)
        }
        _ => format!("{error:#}"),
    }
}

fn reason(r: String) -> String {
    truncate(&r, MAX_REASON).to_string()
}

impl Policy for WasmPlugin {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn admit_connection(&self, request: &ConnectionRequest, now_ms: u64) -> Decision<Verdict<()>> {
        let credential_len = request.credential.as_ref().map_or(0, String::len);
        self.check_input("credential", credential_len + request.path.len(), self.blob_limit())?;
        self.call(Hook::AdmitConnection, |b, s| b.admit_connection(s, request, now_ms)).map(|v| v.map_err(reason))
    }

    fn admit_worker(&self, welcome: &Welcome, now_ms: u64) -> Decision<Verdict<WorkerAdmission>> {
        let size = welcome.ip.len()
            + welcome.address.len()
            + welcome.hardware.len()
            + welcome.hardware_id.len()
            + welcome.caption.len();
        self.check_input("welcome", size, self.blob_limit())?;
        let verdict = self.call(Hook::AdmitWorker, |b, s| b.admit_worker(s, welcome, now_ms))?;
        if let Ok(admission) = &verdict {
            let p = &admission.profile;
            let size: usize = p.tags.iter().map(String::len).sum::<usize>()
                + p.limits.iter().map(|(n, _)| n.len() + 8).sum::<usize>();
            self.check_output("worker profile", size, self.blob_limit())?;
        }
        Ok(verdict.map_err(reason))
    }

    fn admit_job(&self, job: &JobSubmission, state: &[u8], now_ms: u64) -> Decision<Verdict<JobAdmission>> {
        self.check_input("epoch_challenge", job.epoch_challenge.len(), self.blob_limit())?;
        self.check_input("node state", state.len(), self.blob_limit())?;
        let verdict = self.call(Hook::AdmitJob, |b, s| b.admit_job(s, job, state, now_ms))?;
        if let Ok(admission) = &verdict {
            self.check_output("node state", admission.state.len(), self.blob_limit())?;
            self.check_output("epoch_challenge", admission.job.epoch_challenge.len(), self.blob_limit())?;
        }
        Ok(verdict.map_err(reason))
    }

    fn offer_job(&self, job: &Job, profiles: &[WorkerProfile], workers: &Workers, now_ms: u64) -> Decision<JobOffer> {
        let max = self.engine.limits.max_batch;
        self.check_input("epoch_challenge", job.epoch_challenge.len(), self.blob_limit())?;
        self.check_input("workers", workers.states.len(), max)?;
        self.check_input("profiles", profiles.len(), max)?;
        if workers.profiles.len() != workers.states.len() {
            return Err(PolicyError::InputTooLarge("workers.profiles and workers.states differ in length".into()));
        }
        let offer = self.call(Hook::OfferJob, |b, s| b.offer_job(s, job, profiles, workers, now_ms))?;
        self.counted(check_job_offer(&offer, workers.states.len()))?;
        Ok(offer)
    }

    fn validate_solution(&self, job: &Job, solution: &Solution) -> Decision<Verdict<()>> {
        self.check_input("epoch_challenge", job.epoch_challenge.len(), self.blob_limit())?;
        self.check_input("solution", solution.solution.len(), self.blob_limit())?;
        self.call(Hook::ValidateSolution, |b, s| b.validate_solution(s, job, solution)).map(|v| v.map_err(reason))
    }

    fn offer_solution(&self, job: &Job, solution: &Solution, nodes: &[NodeView], now_ms: u64) -> Decision<Vec<u32>> {
        self.check_input("nodes", nodes.len(), self.engine.limits.max_batch)?;
        self.check_input("solution", solution.solution.len(), self.blob_limit())?;
        let chosen = self.call(Hook::OfferSolution, |b, s| b.offer_solution(s, job, solution, nodes, now_ms))?;
        self.counted(check_indices(&chosen, nodes.len(), "node"))?;
        Ok(chosen)
    }

    fn challenge_answer(&self, request: &ConnectionRequest, once: &str) -> Decision<Verdict<String>> {
        self.check_input("once", once.len(), MAX_REASON)?;
        let answer = self.call(Hook::AdmitConnection, |b, s| b.challenge_answer(s, request, once))?;
        if let Ok(answer) = &answer {
            self.check_output("challenge answer", answer.len(), MAX_REASON)?;
        }
        Ok(answer.map_err(reason))
    }

    fn check_challenge(
        &self,
        request: &ConnectionRequest,
        once: &str,
        answer: Option<&str>,
        now_ms: u64,
    ) -> Decision<Verdict<()>> {
        self.check_input("challenge answer", answer.map_or(0, str::len), MAX_REASON)?;
        self.call(Hook::AdmitConnection, |b, s| b.check_challenge(s, request, once, answer, now_ms))
            .map(|v| v.map_err(reason))
    }

    fn contract(&self) -> &str {
        self.pre.version()
    }

    fn settings(&self) -> &str {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::epoch_tick;
    use super::{deadline_ticks, Limits};
    use std::time::Duration;

    #[test]
    fn the_tick_is_a_tenth_of_the_deadline_and_deadlines_are_never_cut_short() {
        let ms = Duration::from_millis;
        assert_eq!(epoch_tick(&Limits::default()), ms(100), "ten wake-ups a second by default");
        assert_eq!(epoch_tick(&Limits { deadline_ms: 20, ..Limits::default() }), ms(10));
        assert_eq!(epoch_tick(&Limits { deadline_ms: 60_000, ..Limits::default() }), ms(100));
        // The next tick may come at once: one more than the deadline holds it whole.
        assert_eq!(deadline_ticks(1_000, ms(100)), 11);
        assert_eq!(deadline_ticks(30_000, ms(100)), 301);
        assert_eq!(deadline_ticks(5, ms(10)), 2);
    }
}
