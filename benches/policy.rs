//! What a decision costs as a WebAssembly plugin, against the same decision made
//! natively, measured in one run so that both see the same machine.
//!
//! `cargo bench --bench policy` prints a table; nothing is asserted, the targets
//! are printed next to the numbers. Plugins are called the way the server calls
//! them: through the `Policy` trait of a `WasmPlugin` from `load_file`. Without
//! `--bench` (as `cargo test --benches` runs it) every case runs once, to check
//! that the bench still works without spending time on numbers.

#[path = "../examples/solver/mod.rs"]
mod solver;

use eligo::plugin::{
    loaded_policy, ConnectionRequest, Decision, Hook, Job, JobAdmission, JobOffer, JobSubmission, Limits,
    NativeSeedRules, NodeView, PluginEngine, PluginInfo, Policy, PolicySet, Shadow, ShadowReport, Solution, Verdict,
    Welcome, WorkerAdmission, WorkerProfile, WorkerState, Workers,
};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Long enough for the instance pool, caches and branch predictors to settle.
const WARM_UP: Duration = Duration::from_millis(200);
/// One timed run; long enough that `Instant`'s resolution does not matter.
const RUN: Duration = Duration::from_millis(50);
/// Odd, so the median is one of the runs. The median rather than the mean
/// because other builds share this machine and only ever make runs slower.
const RUNS: usize = 11;
/// The same key for plugin and native policy, as the server would key a file stem.
const KEY: &str = "seed-rules";
const NOW: u64 = 1_700_000_000_000;
/// A realistic `epoch_challenge`: hashed by pow-check, copied into every call.
const CHALLENGE: &str = concat!(
    r#"{"degree":8191,"epoch_block_hash":"ab1qqqy4ffz0de4rnvqa4wp8cwl8xyjyns7rrh8tmhrxc8ygsjrxnq5s0t0wyq","#,
    r#""epoch_number":2048}"#
);

struct Timer {
    /// Run each case once instead, without timing it.
    smoke: bool,
}

impl Timer {
    /// The median over `RUNS` runs of the mean time per call of `f`.
    fn ns_per_call(&self, mut f: impl FnMut()) -> f64 {
        if self.smoke {
            f();
            return f64::NAN;
        }
        let started = Instant::now();
        let mut calls = 0_u64;
        while calls < 3 || started.elapsed() < WARM_UP {
            f();
            calls += 1;
        }
        let estimate = started.elapsed().as_nanos() as f64 / calls as f64;
        let per_run = ((RUN.as_nanos() as f64 / estimate) as u64).max(1);
        let mut runs: Vec<f64> = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..per_run {
                    f();
                }
                started.elapsed().as_nanos() as f64 / per_run as f64
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[RUNS / 2]
    }
}

#[derive(Clone, Copy)]
enum Target {
    /// A single small call should take under a microsecond.
    SmallCall,
    /// A batch should cost at most twice native per item.
    FanOut,
}

struct Row {
    operation: &'static str,
    items: usize,
    wasm_ns: f64,
    native_ns: f64,
    target: Target,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.wasm_ns / self.native_ns
    }

    fn target(&self) -> (&'static str, bool) {
        match self.target {
            Target::SmallCall => ("< 1 µs per call", self.wasm_ns < 1_000.0),
            Target::FanOut => ("<= 2x native per item", self.ratio() <= 2.0),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<26} {:>6} {:>13} {:>14} {:>12} {:>14} {:>11}  {:<22} met",
        "operation",
        "items",
        "wasm ns/call",
        "native ns/call",
        "wasm ns/item",
        "native ns/item",
        "wasm/native",
        "target"
    );
    for row in rows {
        let (target, met) = row.target();
        let per_item = |ns: f64| if row.items > 1 { format!("{:.1}", ns / row.items as f64) } else { "-".into() };
        println!(
            "{:<26} {:>6} {:>13.0} {:>14.0} {:>12} {:>14} {:>11.2}  {:<22} {}",
            row.operation,
            row.items,
            row.wasm_ns,
            row.native_ns,
            per_item(row.wasm_ns),
            per_item(row.native_ns),
            row.ratio(),
            target,
            if met { "yes" } else { "NO" }
        );
    }
}

/// The pow-check plugin's rule (plugins/pow-check), natively: the baseline for
/// `validate-solution`, reached through the same trait as the plugin.
struct NativePowCheck {
    info: PluginInfo,
}

impl NativePowCheck {
    fn new() -> Self {
        NativePowCheck {
            info: PluginInfo {
                name: "pow-check (native)".into(),
                version: String::new(),
                hooks: vec![Hook::ValidateSolution],
            },
        }
    }
}

impl Policy for NativePowCheck {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn admit_connection(&self, _: &ConnectionRequest, _: u64) -> Decision<Verdict<()>> {
        Ok(Ok(()))
    }

    fn admit_worker(&self, _: &Welcome, _: u64) -> Decision<Verdict<WorkerAdmission>> {
        Ok(Ok(WorkerAdmission { profile: WorkerProfile { tags: Vec::new(), limits: Vec::new() }, state: 0 }))
    }

    fn admit_job(&self, job: &JobSubmission, state: &[u8], _: u64) -> Decision<Verdict<JobAdmission>> {
        Ok(Ok(JobAdmission { job: job.clone(), state: state.to_vec() }))
    }

    fn offer_job(&self, _: &Job, _: &[WorkerProfile], workers: &Workers, _: u64) -> Decision<JobOffer> {
        Ok(JobOffer { workers: (0..workers.states.len() as u32).collect(), states: workers.states.clone() })
    }

    fn validate_solution(&self, job: &Job, solution: &Solution) -> Decision<Verdict<()>> {
        let Ok(nonce) = solution.unique_key.parse::<u64>() else {
            return Ok(Err(format!("nonce {:?} is not an unsigned 64-bit integer", solution.unique_key)));
        };
        let reached = solver::reached(&job.epoch_challenge, nonce);
        if reached < job.proof_target {
            return Ok(Err(format!("proof of work reaches target {reached}, the job needs {}", job.proof_target)));
        }
        if solution.solution_target > reached {
            return Ok(Err(format!(
                "solution claims target {}, its proof of work reaches {reached}",
                solution.solution_target
            )));
        }
        Ok(Ok(()))
    }

    fn offer_solution(&self, _: &Job, _: &Solution, nodes: &[NodeView], _: u64) -> Decision<Vec<u32>> {
        Ok((0..nodes.len() as u32).collect())
    }
}

fn plugin_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/plugins").join(format!("{name}.wasm"));
    if !path.is_file() {
        eprintln!("{} is missing: build the plugins first with `cargo xtask plugins`", path.display());
        std::process::exit(2);
    }
    path
}

fn load(name: &str) -> Arc<dyn Policy> {
    load_with(name, Limits::default())
}

/// Loads a plugin as the server does, under `limits`.
fn load_with(name: &str, limits: Limits) -> Arc<dyn Policy> {
    let loaded = std::fs::read(plugin_file(name))
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(PluginEngine::new(limits)?.load(name, &bytes)?));
    match loaded {
        Ok(plugin) => Arc::new(plugin),
        Err(e) => {
            eprintln!("{name}.wasm does not load ({e:#}): rebuild the plugins with `cargo xtask plugins`");
            std::process::exit(2);
        }
    }
}

fn job(height: i64, proof_target: u64) -> Job {
    Job {
        task_id: "0b6f3f0e-7c1d-4b8e-9a51-2f4c1e6d9a70".into(),
        block_height: height,
        proof_target,
        epoch_challenge: CHALLENGE.into(),
    }
}

fn solution(nonce: u64, solution_target: u64) -> Solution {
    Solution {
        task_id: "0b6f3f0e-7c1d-4b8e-9a51-2f4c1e6d9a70".into(),
        hardware_id: "9f86d081884c7d659a2feaa0c55ad015".into(),
        caption: "rig-07".into(),
        solution: format!(
            r#"{{"partial_solution":{{"address":"aleo1qqqy4ffz0de4rnv","nonce":{nonce}}},"target":{solution_target}}}"#
        ),
        solution_target,
        unique_key: nonce.to_string(),
    }
}

fn submission(height: i64, proof_target: u64) -> JobSubmission {
    JobSubmission { block_height: height, proof_target, epoch_challenge: CHALLENGE.into() }
}

/// A node's state after submitting `heights`, as the seed rules write it.
fn node_state(heights: impl IntoIterator<Item = i64>) -> Vec<u8> {
    let native = NativeSeedRules::default();
    heights.into_iter().fold(Vec::new(), |state, height| {
        native.admit_job(&submission(height, 100), &state, NOW).expect("decides").expect("admits").state
    })
}

/// `offer-job` to `n` workers that all were sent the previous height, so every
/// one of them is chosen: the largest answer a batch can have. With
/// `profile_each`, every worker brings its own profile: the worst case, when a
/// policy derives a distinct profile per worker (`PolicySet` interns equal ones).
fn offer_job_row(timer: &Timer, wasm: &dyn Policy, native: &dyn Policy, n: usize, profile_each: bool) -> Row {
    let job = job(1_000, 100);
    let profiles = vec![WorkerProfile { tags: Vec::new(), limits: Vec::new() }; if profile_each { n } else { 1 }];
    let views =
        Workers { profiles: (0..n).map(|i| if profile_each { i as u32 } else { 0 }).collect(), states: vec![999; n] };
    let w = wasm.offer_job(&job, &profiles, &views, NOW).expect("plugin decides");
    assert_eq!(w, native.offer_job(&job, &profiles, &views, NOW).expect("native decides"));
    assert_eq!(w.workers.len(), n);
    let time = |p: &dyn Policy| {
        timer.ns_per_call(|| {
            black_box(p.offer_job(black_box(&job), black_box(&profiles), black_box(&views), NOW)).ok();
        })
    };
    let operation = if profile_each { "offer-job, a profile each" } else { "offer-job" };
    Row { operation, items: n, wasm_ns: time(wasm), native_ns: time(native), target: batch_target(n) }
}

fn batch_target(items: usize) -> Target {
    if items == 1 {
        Target::SmallCall
    } else {
        Target::FanOut
    }
}

fn validate_solution_row(timer: &Timer, wasm: &dyn Policy, native: &dyn Policy) -> Row {
    let proof_target = 1_000;
    let job = job(1_000, proof_target);
    let nonce = (0..).find(|&n| solver::reached(CHALLENGE, n) >= proof_target).expect("a nonce");
    let valid = solution(nonce, proof_target);
    assert_eq!(wasm.validate_solution(&job, &valid), Ok(Ok(())), "pow-check accepts the found nonce");
    assert_eq!(native.validate_solution(&job, &valid), Ok(Ok(())));
    let wrong = solution(nonce, u64::MAX);
    assert_eq!(
        wasm.validate_solution(&job, &wrong),
        native.validate_solution(&job, &wrong),
        "the native check refuses as the plugin does"
    );
    let time = |p: &dyn Policy| {
        timer.ns_per_call(|| {
            black_box(p.validate_solution(black_box(&job), black_box(&valid))).ok();
        })
    };
    Row {
        operation: "validate-solution (pow)",
        items: 1,
        wasm_ns: time(wasm),
        native_ns: time(native),
        target: Target::SmallCall,
    }
}

/// A node re-submitting its newest of four live jobs: the wait is refreshed.
fn admit_job_row(timer: &Timer, wasm: &dyn Policy, native: &dyn Policy) -> Row {
    let state = node_state(997..=1_000);
    let job = submission(1_000, 100);
    let now = NOW + 1_000;
    assert_eq!(wasm.admit_job(&job, &state, now), native.admit_job(&job, &state, now));
    let time = |p: &dyn Policy| {
        timer.ns_per_call(|| {
            black_box(p.admit_job(black_box(&job), black_box(&state), now)).ok();
        })
    };
    Row { operation: "admit-job", items: 1, wasm_ns: time(wasm), native_ns: time(native), target: Target::SmallCall }
}

/// `n` nodes waiting on three heights each; half of them on the solution's.
fn offer_solution_row(timer: &Timer, wasm: &dyn Policy, native: &dyn Policy, n: usize) -> Row {
    let waiting = node_state(998..=1_000);
    let elsewhere = node_state(995..=997);
    let nodes: Vec<NodeView> =
        (0..n).map(|i| NodeView { state: if i % 2 == 0 { waiting.clone() } else { elsewhere.clone() } }).collect();
    let job = job(1_000, 100);
    let solution = solution(7, 150);
    let now = NOW + 1_000;
    let w = wasm.offer_solution(&job, &solution, &nodes, now).expect("plugin decides");
    assert_eq!(w, native.offer_solution(&job, &solution, &nodes, now).expect("native decides"));
    assert_eq!(w.len(), n.div_ceil(2));
    let time = |p: &dyn Policy| {
        timer.ns_per_call(|| {
            black_box(p.offer_solution(black_box(&job), black_box(&solution), black_box(&nodes), now)).ok();
        })
    };
    Row { operation: "offer-solution", items: n, wasm_ns: time(wasm), native_ns: time(native), target: Target::FanOut }
}

/// The host's composition: views gathered from every worker's state, the plugin
/// called, the chosen workers' states committed. Each call is a new height, so
/// every worker is chosen and every state written.
fn policy_set_row(timer: &Timer, wasm: Arc<dyn Policy>, native: Arc<dyn Policy>, n: usize) -> Row {
    Row {
        operation: "PolicySet::offer_job",
        items: n,
        wasm_ns: policy_set_ns(timer, wasm, None, n),
        native_ns: policy_set_ns(timer, native, None, n),
        target: Target::FanOut,
    }
}

/// `PolicySet::offer_job` to `n` workers with `policy`, shadowed by `shadow` if given.
fn policy_set_ns(timer: &Timer, policy: Arc<dyn Policy>, shadow: Option<Arc<Shadow>>, n: usize) -> f64 {
    {
        let mut loaded = loaded_policy(KEY.into(), std::path::Path::new(""), "", policy);
        loaded.shadow = shadow;
        let set = PolicySet::new(vec![loaded]);
        let mut workers: Vec<WorkerState> = (0..n)
            .map(|i| {
                let welcome = Welcome {
                    ip: "10.0.0.1".into(),
                    address: "aleo1qqqy4ffz0de4rnvqa4wp8cwl8x".into(),
                    hardware: "NVIDIA H100".into(),
                    hardware_id: format!("hw-{i}"),
                    caption: String::new(),
                };
                set.admit_worker(&welcome, NOW).expect("admitted")
            })
            .collect();
        let mut workers: Vec<&mut WorkerState> = workers.iter_mut().collect();
        let mut job = job(1, 100);
        assert_eq!(set.offer_job(&job, &mut workers, NOW).len(), n, "a new height reaches every worker");
        timer.ns_per_call(|| {
            job.block_height += 1;
            black_box(set.offer_job(black_box(&job), &mut workers, NOW));
        })
    }
}

/// What a shadow costs the hot path: the same composed `offer_job` with and
/// without a candidate (the same plugin) answering copies on its own thread.
/// Back-to-back jobs outrun the candidate, so most copies are dropped at a full
/// queue; the copy is made either way, and that is the hot path's share.
fn shadow_overhead(timer: &Timer, seed: Arc<dyn Policy>, n: usize) -> (f64, f64, f64, ShadowReport) {
    let without = policy_set_ns(timer, seed.clone(), None, n);
    let report = loaded_policy(KEY.into(), std::path::Path::new(""), "", seed.clone()).report;
    let shadow = Shadow::start(seed.clone(), report, KEY).expect("shadow thread");
    let with = policy_set_ns(timer, seed, Some(shadow.clone()), n);
    // What the copy handed to the candidate costs by itself: the job and the columns.
    let workers = Workers { profiles: vec![0; n], states: vec![0; n] };
    let profiles = vec![WorkerProfile { tags: Vec::new(), limits: Vec::new() }];
    let job = job(1, 100);
    let copy = timer.ns_per_call(|| {
        black_box((black_box(&job).clone(), black_box(&profiles).to_vec(), black_box(&workers).clone()));
    });
    (without, with, copy, shadow.report(true))
}

fn main() {
    // Cargo passes `--bench` under `cargo bench` only.
    let timer = Timer { smoke: !std::env::args().any(|a| a == "--bench") };
    let seed = load("seed-rules");
    let pow = load("pow-check");
    let native_seed: Arc<dyn Policy> = Arc::new(NativeSeedRules::default());
    let native_pow = NativePowCheck::new();

    let mut rows: Vec<Row> =
        [1, 100, 10_000].into_iter().map(|n| offer_job_row(&timer, &*seed, &*native_seed, n, false)).collect();
    let direct = offer_job_row(&timer, &*seed, &*native_seed, 10_000, true);
    let set = policy_set_row(&timer, seed.clone(), native_seed.clone(), direct.items);
    // Against the plain call: the set interns equal profiles, so it passes one.
    // What remains is gathering the columns and committing states.
    let plain = &rows[2];
    let host_path = |set_ns: f64, call_ns: f64| (set_ns - call_ns) / set.items as f64;
    let host_path = (host_path(set.wasm_ns, plain.wasm_ns), host_path(set.native_ns, plain.native_ns));
    rows.push(direct);
    // The same decision with fuel metering off (the deadline alone bounds a call).
    let unfueled = load_with("seed-rules", Limits { fuel: 0, ..Limits::default() });
    let mut no_fuel = offer_job_row(&timer, &*unfueled, &*native_seed, 10_000, false);
    no_fuel.operation = "offer-job, fuel off";
    rows.push(no_fuel);
    rows.push(validate_solution_row(&timer, &*pow, &native_pow));
    rows.push(admit_job_row(&timer, &*seed, &*native_seed));
    rows.push(offer_solution_row(&timer, &*seed, &*native_seed, 100));
    rows.push(set);
    let overhead = [1, 10_000].map(|n| (n, shadow_overhead(&timer, seed.clone(), n)));

    if timer.smoke {
        println!("policy bench: every case ran once (no `--bench` argument); `cargo bench --bench policy` measures");
        return;
    }
    println!(
        "policy: wasm plugins (target/plugins, through the Policy trait) vs native; \
         median of {RUNS} runs of {} ms after {} ms of warm-up",
        RUN.as_millis(),
        WARM_UP.as_millis()
    );
    // Other builds share this machine; the load says how much they may have skewed a run.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    }
    println!();
    print_table(&rows);
    println!();
    println!(
        "host path (PolicySet::offer_job minus the plain offer-job call): \
         wasm {:.1} ns/worker, native {:.1} ns/worker",
        host_path.0, host_path.1
    );
    for (n, (without, with, copy, report)) in overhead {
        println!(
            "shadow on the hot path, PolicySet::offer_job to {n} workers: {:.1} µs without, {:.1} µs with a shadow \
             (+{:.0}%), of which the copy itself {:.1} µs; the candidate answered {} copies at {:.1} µs each \
             on the other core, {} dropped at its full queue",
            without / 1e3,
            with / 1e3,
            (with / without - 1.0) * 100.0,
            copy / 1e3,
            report.calls,
            report.mean_call_micros,
            report.dropped
        );
    }
    println!("targets: batch fan-out <= 2x native per worker; a single small call < 1 µs (printed, not asserted)");
}
