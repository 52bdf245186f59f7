//! The `seed-rules` plugin against its native twin, `NativeSeedRules`, on random
//! inputs: both must make the same decisions and leave the same per-connection
//! state behind, so that the native one can serve as oracle and baseline.

mod support;

use eligo::plugin::{
    loaded_policy, Job, JobSubmission, NativeSeedRules, NodeState, NodeView, Policy, PolicySet, Solution, Welcome,
    WorkerProfile, WorkerState, Workers, NOTHING_SENT, WAIT_MS,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The same key on both sides: per-connection state is looked up by key, so the
/// two sets' states can be compared slot for slot.
const KEY: &str = "seed-rules";

/// Compiling the component takes tens of milliseconds; every case shares one.
fn wasm() -> Arc<dyn Policy> {
    static PLUGIN: OnceLock<Arc<dyn Policy>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| {
            Arc::new(eligo::plugin::load_file(support::plugin_path("seed-rules")).expect("seed-rules.wasm loads"))
        })
        .clone()
}

fn native() -> Arc<dyn Policy> {
    Arc::new(NativeSeedRules::default())
}

fn set_of(policy: Arc<dyn Policy>) -> PolicySet {
    PolicySet::new(vec![loaded_policy(KEY.into(), Path::new(""), "", policy)])
}

fn config() -> ProptestConfig {
    // Shrunk failures are printed in full; no regression files are written into
    // the source tree.
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

fn welcome(i: usize) -> Welcome {
    Welcome {
        ip: format!("10.0.0.{i}"),
        address: format!("aleo1worker{i}"),
        hardware: "NVIDIA H100".into(),
        hardware_id: format!("hw-{i}"),
        caption: String::new(),
    }
}

fn job(height: i64, target: u64) -> Job {
    Job {
        task_id: format!("t{height}-{target}"),
        block_height: height,
        proof_target: target,
        epoch_challenge: "{}".into(),
    }
}

fn solution(target: u64) -> Solution {
    Solution {
        task_id: "t".into(),
        hardware_id: "hw-0".into(),
        caption: String::new(),
        solution: "{}".into(),
        solution_target: target,
        unique_key: "0".into(),
    }
}

/// Heights cluster on a few values so that repeats, decreases and matches with
/// earlier submissions are common; the extremes probe the `i64` edges, where
/// `i64::MIN` is also the "nothing sent" state word.
fn height() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => -2_i64..8,
        1 => any::<i64>(),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ]
}

/// Targets cluster too, so that a solution's target sometimes equals, exceeds and
/// falls short of what a node waits on.
fn target() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0_u64..5,
        1 => any::<u64>(),
        1 => Just(u64::MAX),
    ]
}

/// How far `now` moves before an event. Steps of exactly `WAIT_MS` and one past it
/// land on the expiry boundary of a wait submitted one step earlier.
fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => 0_u64..60_000,
        2 => 0_u64..2 * WAIT_MS,
        1 => Just(WAIT_MS),
        1 => Just(WAIT_MS + 1),
        1 => WAIT_MS..10 * WAIT_MS,
    ]
}

/// Where the clock starts; the last one makes `now + WAIT_MS` saturate.
fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0_u64..(1 << 45),
        1 => Just(0_u64),
        1 => (u64::MAX - 3 * WAIT_MS)..=u64::MAX,
    ]
}

#[derive(Clone, Debug)]
enum Event {
    AdmitWorker,
    AdmitJob {
        node: usize,
        height: i64,
        target: u64,
    },
    OfferJob {
        height: i64,
        target: u64,
    },
    /// `answers` picks one of the last jobs submitted, whose height the solution
    /// then has and whose target it misses, meets or beats by one: random
    /// solutions rarely match any wait.
    OfferSolution {
        height: i64,
        target: u64,
        answers: Option<(Index, i64)>,
    },
}

fn event(nodes: usize) -> impl Strategy<Value = (u64, Event)> {
    let event = prop_oneof![
        1 => Just(Event::AdmitWorker),
        4 => (0..nodes, height(), target()).prop_map(|(node, height, target)| Event::AdmitJob { node, height, target }),
        3 => (height(), target()).prop_map(|(height, target)| Event::OfferJob { height, target }),
        3 => (height(), target(), prop::option::weighted(0.7, (any::<Index>(), -1_i64..=1)))
            .prop_map(|(height, target, answers)| Event::OfferSolution { height, target, answers }),
    ];
    (advance(), event)
}

fn scenario() -> impl Strategy<Value = (usize, usize, u64, Vec<(u64, Event)>)> {
    (1_usize..6, 1_usize..5).prop_flat_map(|(workers, nodes)| {
        (Just(workers), Just(nodes), start(), prop::collection::vec(event(nodes), 1..48))
    })
}

/// One side of the comparison: a set and the connections it keeps state for.
struct Side {
    set: PolicySet,
    workers: Vec<WorkerState>,
    nodes: Vec<NodeState>,
}

impl Side {
    fn new(policy: Arc<dyn Policy>, nodes: usize) -> Self {
        Side { set: set_of(policy), workers: Vec::new(), nodes: vec![NodeState::default(); nodes] }
    }

    fn worker_states(&self) -> Vec<Option<u64>> {
        self.workers.iter().map(|w| w.state_of(KEY)).collect()
    }

    fn node_states(&self) -> Vec<Vec<u8>> {
        self.nodes.iter().map(|n| n.state_of(KEY).to_vec()).collect()
    }
}

/// `(height, target, expires_ms)`, as the seed rules store a wait.
type Wait = (i64, u64, u64);

/// Decodes a node's waits, for comparisons whose failure messages a person reads.
fn waits_of(state: &[u8]) -> Vec<Wait> {
    state
        .chunks_exact(24)
        .map(|c| {
            let word = |i: usize| <[u8; 8]>::try_from(&c[i..i + 8]).expect("8 bytes");
            (i64::from_le_bytes(word(0)), u64::from_le_bytes(word(8)), u64::from_le_bytes(word(16)))
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// Workers and nodes come and go through a random history; after every event
    /// the two sets must have decided alike and hold the same states.
    #[test]
    fn wasm_and_native_agree_on_every_step_of_a_random_history(
        (initial_workers, node_count, start, events) in scenario()
    ) {
        let mut wasm = Side::new(wasm(), node_count);
        let mut native = Side::new(native(), node_count);
        let mut now = start;
        let mut submitted = Vec::new();
        for side in [&mut wasm, &mut native] {
            for i in 0..initial_workers {
                side.workers.push(side.set.admit_worker(&welcome(i), now).expect("seed rules admit every worker"));
            }
        }
        for (step, (advance, event)) in events.iter().enumerate() {
            now = now.saturating_add(*advance);
            match event {
                Event::AdmitWorker => {
                    let i = wasm.workers.len();
                    let w = wasm.set.admit_worker(&welcome(i), now);
                    let n = native.set.admit_worker(&welcome(i), now);
                    prop_assert_eq!(w.is_ok(), n.is_ok(), "step {} admit-worker", step);
                    if let (Ok(w), Ok(n)) = (w, n) {
                        wasm.workers.push(w);
                        native.workers.push(n);
                    }
                }
                Event::AdmitJob { node, height, target } => {
                    let submission =
                        JobSubmission { block_height: *height, proof_target: *target, epoch_challenge: "{}".into() };
                    let w = wasm.set.admit_job(&submission, &mut wasm.nodes[*node], now);
                    let n = native.set.admit_job(&submission, &mut native.nodes[*node], now);
                    prop_assert_eq!(w, n, "step {} admit-job on node {} at {}", step, node, now);
                    submitted.push((*height, *target));
                }
                Event::OfferJob { height, target } => {
                    let job = job(*height, *target);
                    let w = wasm.set.offer_job(&job, &mut wasm.workers.iter_mut().collect::<Vec<_>>(), now);
                    let n = native.set.offer_job(&job, &mut native.workers.iter_mut().collect::<Vec<_>>(), now);
                    prop_assert_eq!(w, n, "step {} offer-job of height {}", step, height);
                }
                Event::OfferSolution { height, target, answers } => {
                    let (height, target) = match answers {
                        Some((pick, delta)) if !submitted.is_empty() => {
                            let recent = submitted.len().min(4);
                            let (h, t) = submitted[submitted.len() - 1 - pick.index(recent)];
                            (h, t.saturating_add_signed(*delta))
                        }
                        _ => (*height, *target),
                    };
                    let job = job(height, 0);
                    let solution = solution(target);
                    let w = wasm.set.offer_solution(&job, &solution, &wasm.nodes.iter().collect::<Vec<_>>(), now);
                    let n = native.set.offer_solution(&job, &solution, &native.nodes.iter().collect::<Vec<_>>(), now);
                    prop_assert_eq!(
                        w, n,
                        "step {} offer-solution (height {}, target {}) at {} to nodes waiting on {:?}",
                        step, height, target, now, native.node_states().iter().map(|s| waits_of(s)).collect::<Vec<_>>()
                    );
                }
            }
            prop_assert_eq!(wasm.worker_states(), native.worker_states(), "worker states after step {}", step);
            prop_assert_eq!(wasm.node_states(), native.node_states(), "node states after step {}", step);
        }
    }

    /// One `offer-job` call on a random batch, with state words no history would
    /// produce as well as those it would.
    #[test]
    fn wasm_and_native_offer_a_job_to_the_same_workers(
        height in prop_oneof![3 => height(), 1 => Just(i64::MIN + 1), 1 => Just(-1_i64)],
        target in target(),
        profile_count in 1_usize..4,
        workers in prop::collection::vec(
            (0_u32..4, prop_oneof![
                2 => any::<u64>(),
                2 => Just(NOTHING_SENT),
                3 => (-3_i64..9).prop_map(|h| h as u64),
                1 => Just(i64::MAX as u64),
                1 => Just(u64::MAX),
                1 => Just(0_u64),
            ]),
            0..300,
        ),
        now in any::<u64>(),
    ) {
        let profiles: Vec<WorkerProfile> = (0..profile_count)
            .map(|i| WorkerProfile { tags: vec![format!("tag{i}")], limits: vec![("max-target".into(), i as u64)] })
            .collect();
        let views = Workers {
            profiles: workers.iter().map(|&(profile, _)| profile % profile_count as u32).collect(),
            states: workers.iter().map(|&(_, state)| state).collect(),
        };
        let job = job(height, target);
        let w = wasm().offer_job(&job, &profiles, &views, now).expect("the plugin decides");
        let n = native().offer_job(&job, &profiles, &views, now).expect("native decides");
        prop_assert_eq!(w, n);
    }

    /// One `admit-job` call on a node state the plugin could have written: unique
    /// `(height, target)` pairs, some expired, some expiring exactly now; the job
    /// is often one the node already waits on.
    #[test]
    fn wasm_and_native_admit_a_job_alike_on_any_state_the_plugin_writes(
        waits in prop::collection::vec(relative_wait(), 0..8),
        submitted in prop::option::of(any::<Index>()),
        (height, target) in (height(), target()),
        now in start(),
    ) {
        let mut seen = std::collections::HashSet::new();
        let waits: Vec<_> = waits.into_iter().filter(|&(h, t, _)| seen.insert((h, t))).collect();
        let (height, target) = resubmitted(&waits, submitted).unwrap_or((height, target));
        let state = encode(&waits, now);
        let w = admit_job(&wasm(), height, target, &state, now);
        let n = admit_job(&native(), height, target, &state, now);
        prop_assert_eq!(w, n, "node waiting on {:?}", waits_of(&state));
    }

    /// The same on any blob at all: repeated pairs (which the plugin never writes,
    /// but a reloaded plugin of the same key may find) and a trailing partial record.
    #[test]
    fn wasm_and_native_admit_a_job_alike_on_any_state_blob(
        mut waits in prop::collection::vec(relative_wait(), 0..8),
        copies in prop::collection::vec((any::<Index>(), any::<Index>(), offset()), 0..3),
        submitted in prop::option::of(any::<Index>()),
        (height, target) in (height(), target()),
        now in start(),
        tail in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        if !waits.is_empty() {
            for (from, to, offset) in copies {
                let (h, t, _) = waits[from.index(waits.len())];
                let at = to.index(waits.len() + 1);
                waits.insert(at, (h, t, offset));
            }
        }
        let (height, target) = resubmitted(&waits, submitted).unwrap_or((height, target));
        let mut state = encode(&waits, now);
        state.extend_from_slice(&tail);
        let w = admit_job(&wasm(), height, target, &state, now);
        let n = admit_job(&native(), height, target, &state, now);
        prop_assert_eq!(w, n, "node waiting on {:?}", waits_of(&state));
    }

    /// One `offer-solution` call on random node blobs.
    #[test]
    fn wasm_and_native_offer_a_solution_to_the_same_nodes(
        height in height(),
        target in target(),
        now in start(),
        nodes in prop::collection::vec(
            (prop::collection::vec(relative_wait(), 0..5), prop::collection::vec(any::<u8>(), 0..24)),
            0..40,
        ),
    ) {
        let views: Vec<NodeView> = nodes
            .iter()
            .map(|(waits, tail)| {
                let mut state = encode(waits, now);
                state.extend_from_slice(tail);
                NodeView { state }
            })
            .collect();
        let job = job(height, 0);
        let solution = solution(target);
        let w = wasm().offer_solution(&job, &solution, &views, now).expect("the plugin decides");
        let n = native().offer_solution(&job, &solution, &views, now).expect("native decides");
        prop_assert_eq!(w, n);
    }
}

/// A wait whose expiry is an offset from `now`, so that expired, live and
/// exactly-now waits all occur whatever the clock.
type RelativeWait = (i64, u64, i64);

fn relative_wait() -> impl Strategy<Value = RelativeWait> {
    (height(), target(), offset())
}

/// Expired, expiring exactly now, live for the whole wait, and anything at all.
fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0_i64), -5_i64..5, Just(WAIT_MS as i64), any::<i64>()]
}

/// The `(height, target)` of one of `waits`, if `pick` says to resubmit one: a
/// random job rarely matches a wait, and matching is where refreshing happens.
fn resubmitted(waits: &[RelativeWait], pick: Option<Index>) -> Option<(i64, u64)> {
    let pick = pick?;
    (!waits.is_empty()).then(|| {
        let (h, t, _) = waits[pick.index(waits.len())];
        (h, t)
    })
}

/// The job an admission returns and the node's waits after it, decoded so that a
/// failure reads as waits rather than bytes.
fn admit_job(
    policy: &Arc<dyn Policy>,
    height: i64,
    target: u64,
    state: &[u8],
    now: u64,
) -> Result<(JobSubmission, Vec<Wait>), String> {
    let submission = JobSubmission { block_height: height, proof_target: target, epoch_challenge: "{}".into() };
    let admission = policy.admit_job(&submission, state, now).expect("decides")?;
    Ok((admission.job, waits_of(&admission.state)))
}

fn encode(waits: &[RelativeWait], now: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(waits.len() * 24);
    for &(height, target, offset) in waits {
        let expires = now.saturating_add_signed(offset);
        for word in [height as u64, target, expires] {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
    out
}
