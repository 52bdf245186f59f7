//! A loaded plugin: pre-instantiated once, instances reused, every call limited.

use super::bindings::{
    ConnectionRequest, Hook, Job, JobAdmission, JobOffer, JobSubmission, NodeView, PluginInfo, Policy as PolicyWorld,
    PolicyPre, Solution, Welcome, WorkerAdmission, WorkerProfile, Workers,
};
use super::engine::{LoadError, PluginEngine, EPOCH_TICK};
use super::host_state::{truncate, HostState, LogBudget};
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
pub(crate) const HOOKS: [Hook; 6] = [
    Hook::AdmitConnection,
    Hook::AdmitWorker,
    Hook::AdmitJob,
    Hook::OfferJob,
    Hook::ValidateSolution,
    Hook::OfferSolution,
];

struct Instance {
    store: Store<HostState>,
    bindings: PolicyWorld,
}

/// A plugin ready to decide. Cheap to call from many threads at once: each call
/// takes an idle instance (or makes one from the pre-instantiated component) and
/// gives it back afterwards, unless the call trapped.
pub struct WasmPlugin {
    engine: PluginEngine,
    name: Arc<str>,
    pre: PolicyPre<HostState>,
    info: PluginInfo,
    idle: Mutex<Vec<Instance>>,
    log: Arc<LogBudget>,
    /// Call time per hook (`eligo_plugin_call_seconds`), resolved at load so a call
    /// records without a look-up; indexed like [`HOOKS`].
    timers: [metrics::Histogram; HOOKS.len()],
}

impl WasmPlugin {
    pub(crate) fn new(engine: PluginEngine, name: &str, pre: PolicyPre<HostState>) -> Result<Self, LoadError> {
        let log = Arc::new(LogBudget::new(engine.limits.log_lines_per_second));
        let placeholder = PluginInfo { name: name.to_string(), version: String::new(), hooks: Vec::new() };
        let timers = HOOKS.map(|hook| {
            let hook = super::hook_names(&[hook]).remove(0);
            crate::metrics::histogram("eligo_plugin_call_seconds", &[("plugin", name), ("hook", &hook)])
        });
        let mut plugin =
            WasmPlugin { engine, name: name.into(), pre, info: placeholder, idle: Mutex::new(Vec::new()), log, timers };
        let info = plugin
            .run(|b, s| b.eligo_policy_decisions().call_info(s), false)
            .0
            .map_err(|e| LoadError::Info(e.to_string()))?;
        plugin.info = info;
        Ok(plugin)
    }

    /// The name logs and metrics use for this plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn instantiate(&self) -> Result<Instance, PolicyError> {
        let limits = &self.engine.limits;
        let mut store =
            Store::new(&self.engine.engine, HostState::new(self.name.clone(), limits.memory_bytes, self.log.clone()));
        store.limiter(|s| &mut s.memory);
        arm(&mut store, limits.fuel, limits.deadline_ms);
        let bindings = self.pre.instantiate(&mut store).map_err(|e| PolicyError::Instantiate(format!("{e:#}")))?;
        Ok(Instance { store, bindings })
    }

    /// Runs `f` on an instance under the call limits, and says what it cost.
    pub fn call_measured<R>(
        &self,
        f: impl FnOnce(&PolicyWorld, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> (Decision<R>, Cost) {
        self.run(f, true)
    }

    fn run<R>(
        &self,
        f: impl FnOnce(&PolicyWorld, &mut Store<HostState>) -> wasmtime::Result<R>,
        measure: bool,
    ) -> (Decision<R>, Cost) {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match idle.map(Ok).unwrap_or_else(|| self.instantiate()) {
            Ok(i) => i,
            Err(e) => return (Err(e), Cost::default()),
        };
        let limits = &self.engine.limits;
        arm(&mut instance.store, limits.fuel, limits.deadline_ms);
        instance.store.data_mut().memory.refused = false;
        // Reading the clock costs ~25 ns, a twentieth of the smallest call: only when asked.
        let started = measure.then(Instant::now);
        let result = f(&instance.bindings, &mut instance.store);
        let cost = Cost {
            elapsed: started.map(|s| s.elapsed()).unwrap_or_default(),
            fuel: limits.fuel.saturating_sub(instance.store.get_fuel().unwrap_or(limits.fuel)),
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
            Err(e) => (Err(self.classify(e, &instance.store)), cost),
        }
    }

    /// Runs a hook and records its call time.
    fn call<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&PolicyWorld, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Decision<R> {
        let (decision, cost) = self.run(f, true);
        if let Some(timer) = HOOKS.iter().position(|h| *h == hook).and_then(|i| self.timers.get(i)) {
            timer.record(cost.elapsed.as_secs_f64());
        }
        decision
    }

    fn classify(&self, error: wasmtime::Error, store: &Store<HostState>) -> PolicyError {
        let limits = &self.engine.limits;
        let failure = if store.data().memory.refused {
            PolicyError::Memory(store.data().memory.cap())
        } else {
            match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => PolicyError::Fuel(limits.fuel),
                Some(Trap::Interrupt) => PolicyError::Deadline(limits.deadline_ms),
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

/// Sets the fuel and deadline of the next call.
fn arm(store: &mut Store<HostState>, fuel: u64, deadline_ms: u64) {
    if fuel > 0 {
        // Refused only when fuel is off in the engine, which it is not when fuel > 0.
        let _ = store.set_fuel(fuel);
    }
    let tick = EPOCH_TICK.as_millis().max(1) as u64;
    store.set_epoch_deadline(deadline_ms.div_ceil(tick).max(1));
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
        self.call(Hook::AdmitConnection, |b, s| b.eligo_policy_decisions().call_admit_connection(s, request, now_ms))
            .map(|v| v.map_err(reason))
    }

    fn admit_worker(&self, welcome: &Welcome, now_ms: u64) -> Decision<Verdict<WorkerAdmission>> {
        let size = welcome.ip.len()
            + welcome.address.len()
            + welcome.hardware.len()
            + welcome.hardware_id.len()
            + welcome.caption.len();
        self.check_input("welcome", size, self.blob_limit())?;
        let verdict =
            self.call(Hook::AdmitWorker, |b, s| b.eligo_policy_decisions().call_admit_worker(s, welcome, now_ms))?;
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
        let verdict =
            self.call(Hook::AdmitJob, |b, s| b.eligo_policy_decisions().call_admit_job(s, job, state, now_ms))?;
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
        let offer = self.call(Hook::OfferJob, |b, s| {
            b.eligo_policy_decisions().call_offer_job(s, job, profiles, workers, now_ms)
        })?;
        self.counted(check_job_offer(&offer, workers.states.len()))?;
        Ok(offer)
    }

    fn validate_solution(&self, job: &Job, solution: &Solution) -> Decision<Verdict<()>> {
        self.check_input("epoch_challenge", job.epoch_challenge.len(), self.blob_limit())?;
        self.check_input("solution", solution.solution.len(), self.blob_limit())?;
        self.call(Hook::ValidateSolution, |b, s| b.eligo_policy_decisions().call_validate_solution(s, job, solution))
            .map(|v| v.map_err(reason))
    }

    fn offer_solution(&self, job: &Job, solution: &Solution, nodes: &[NodeView], now_ms: u64) -> Decision<Vec<u32>> {
        self.check_input("nodes", nodes.len(), self.engine.limits.max_batch)?;
        self.check_input("solution", solution.solution.len(), self.blob_limit())?;
        let chosen = self.call(Hook::OfferSolution, |b, s| {
            b.eligo_policy_decisions().call_offer_solution(s, job, solution, nodes, now_ms)
        })?;
        self.counted(check_indices(&chosen, nodes.len(), "node"))?;
        Ok(chosen)
    }
}
