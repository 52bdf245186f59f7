//! Entry points for fuzzing every parser of untrusted input: the `fuzz/` crate
//! (cargo fuzz, libFuzzer) drives them for long runs, and eligo's
//! `tests/fuzz_smoke.rs` replays the corpus and random inputs through them in
//! every test run. A crate of their own beside the fuzz binaries, so the server
//! and the library's users do not carry them, and the test run does not build
//! libFuzzer.
//!
//! Each takes arbitrary bytes and panics only on a broken invariant (a bug).
//! Rejecting the input with an error is the expected outcome for most of them.

use eligo::authoring::runner;
use eligo::plugin::{check_indices, check_job_offer, loaded_policy, NativeSeedRules, NodeState, PolicySet, ALL_HOOKS};
use eligo::plugin::{
    ConnectionRequest, Decision, Job, JobAdmission, JobOffer, JobSubmission, NodeView, PluginInfo, Policy, PolicyError,
    Solution, Verdict, Welcome, WorkerAdmission, WorkerProfile, Workers,
};
use eligo::protocol::{
    ack_frame, canonical_json, refusal_frame, verdict_frame, Acked, FieldLimits, FrameId, JobFrame, SolutionFrame,
    SolutionMessage, VerdictEvent, WelcomeFrame,
};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// A fuzz target: the bytes the fuzzer made.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the `fuzz/` crate has one binary per entry).
pub const TARGETS: &[(&str, Target)] = &[
    ("welcome_frame", welcome_frame),
    ("job_frame", job_frame),
    ("solution_frame", solution_frame),
    ("canonical_json", canonical),
    ("case_file", case_file),
    ("plugin_answers", plugin_answers),
    ("queue_messages", queue_messages),
];

/// A worker's welcome: accepted fields are within their limits.
pub fn welcome_frame(data: &[u8]) {
    let limits = FieldLimits::default();
    if let Ok(frame) = WelcomeFrame::parse_within(data, &limits) {
        for field in [&frame.ip, &frame.address, &frame.hardware, &frame.hardware_id, &frame.caption] {
            assert!(field.len() <= limits.text_bytes, "an accepted field is over the limit");
        }
    }
}

/// A node's job, as the node server reads it: an accepted challenge has one
/// canonical spelling, within limits; its id (if any) is answered as sent.
pub fn job_frame(data: &[u8]) {
    let limits = FieldLimits::default();
    let read = JobFrame::read_within(data, &limits);
    check_answers(data, &read);
    if let Ok(frame) = read.frame {
        let canonical = canonical_json(&Value::Object(frame.epoch_challenge.clone()));
        assert!(canonical.len() <= limits.object_bytes, "an accepted challenge is over the limit");
        assert_canonical_round_trip(&Value::Object(frame.epoch_challenge));
    }
}

/// A worker's solution frame, as the worker server reads it: accepted fields are
/// within limits; its id (if any) is answered, and judged, as sent.
pub fn solution_frame(data: &[u8]) {
    let limits = FieldLimits::default();
    let read = SolutionFrame::read_within(data, &limits);
    check_answers(data, &read);
    if let Ok(frame) = read.frame {
        assert!(frame.task_id.len() <= limits.text_bytes);
        assert_canonical_round_trip(&Value::Object(frame.solution));
    }
}

/// The answers of the acknowledged protocol to a frame read as `read`: an id is a
/// string of at most 64 characters or an integer, and every answer (ack, refusal,
/// verdict) is JSON carrying exactly that id; a frame without a usable id is
/// refused with an error frame.
fn check_answers<T>(data: &[u8], read: &Acked<T>) {
    let answers = match &read.id {
        Some(id) => {
            match serde_json::to_value(id).expect("an id serializes") {
                Value::String(s) => assert!(s.chars().count() <= FrameId::MAX_CHARS, "an accepted id is too long"),
                Value::Number(n) => assert!(n.is_i64() || n.is_u64(), "an accepted id is not an integer"),
                other => panic!("an accepted id is {other}"),
            }
            vec![ack_frame(id, None), ack_frame(id, Some("r")), verdict_frame(id, "t", Some("r"))]
        }
        None => Vec::new(),
    };
    for answer in answers.iter().chain([&refusal_frame(data, "r")]) {
        let parsed: Value = serde_json::from_str(answer).expect("an answer is JSON");
        match &read.id {
            Some(id) => assert_eq!(parsed["id"], serde_json::to_value(id).expect("an id"), "the id as sent"),
            None => assert!(parsed.get("id").is_none() || parsed["type"] == "ack", "no id without one sent"),
        }
    }
}

/// What the pipeline's own queues and topics carry (solution messages, presence
/// events, verdicts, jobs): what parses is written back the same, so a message
/// redelivered or relayed means what it meant.
pub fn queue_messages(data: &[u8]) {
    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
        if let Ok(message) = serde_json::from_slice::<T>(data) {
            let bytes = serde_json::to_vec(&message).expect("a message serializes");
            let back: T = serde_json::from_slice(&bytes).expect("a written message parses");
            assert_eq!(back, message, "a message keeps its meaning when written again");
        }
    }
    round_trip::<SolutionMessage>(data);
    round_trip::<VerdictEvent>(data);
    round_trip::<JobFrame>(data);
    if let Ok(message) = serde_json::from_slice::<SolutionMessage>(data) {
        // Its unique key is the nonce as text, if the solution has one.
        let _ = message.unique_key();
    }
    if let Ok(events) = eligo::pipeline::processors::presence::read_events(data) {
        let bytes = serde_json::to_vec(&events).expect("events serialize");
        assert_eq!(eligo::pipeline::processors::presence::read_events(&bytes).ok(), Some(events));
    }
}

/// Any JSON value: its canonical form parses back to the same value and is a
/// fixed point.
pub fn canonical(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        assert_canonical_round_trip(&value);
    }
}

fn assert_canonical_round_trip(value: &Value) {
    let text = canonical_json(value);
    let back: Value = serde_json::from_str(&text).expect("canonical JSON parses");
    assert_eq!(&back, value, "canonical JSON keeps the value");
    assert_eq!(canonical_json(&back), text, "canonical JSON is a fixed point");
}

/// A plugin's `cases.json`, run against the native seed rules: a file that
/// parses runs to outcomes, whatever its steps say.
pub fn case_file(data: &[u8]) {
    if let Ok(cases) = serde_json::from_slice::<runner::CaseFile>(data) {
        let steps: usize = cases.cases.iter().map(|c| c.steps.len()).sum();
        // Bounded work per input: the fuzzer's own limits would otherwise call a
        // big, valid file a hang.
        if steps <= 256 {
            let outcomes = runner::run_cases(Arc::new(NativeSeedRules::default()), &cases);
            assert_eq!(outcomes.len(), cases.cases.len(), "one outcome per case");
        }
    }
}

/// What a plugin may answer, from the fuzzer: answers that pass the host's
/// contract checks (the ones every WebAssembly plugin's answers go through)
/// must never make the host index out of bounds or choose a connection twice.
pub fn plugin_answers(data: &[u8]) {
    let mut bytes = Bytes(data);
    let workers = usize::from(bytes.byte() % 32);
    let nodes = usize::from(bytes.byte() % 16);
    let answers = FuzzedPolicy::new(bytes.0);
    let set = PolicySet::new(vec![
        loaded_policy("10-fuzzed".into(), std::path::Path::new(""), "", Arc::new(answers)),
        NativeSeedRules::builtin(),
    ]);
    let welcome = |i: usize| Welcome {
        ip: "10.0.0.1".into(),
        address: "a".into(),
        hardware: "cpu".into(),
        hardware_id: format!("hw-{i}"),
        caption: "c".into(),
    };
    let mut admitted: Vec<_> = (0..workers).filter_map(|i| set.admit_worker(&welcome(i), 1).ok()).collect();
    let submission = JobSubmission { block_height: 7, proof_target: 1, epoch_challenge: "{}".into() };
    let mut node_states: Vec<NodeState> = (0..nodes).map(|_| NodeState::default()).collect();
    let job = match node_states.first_mut().map(|node| set.admit_job(&submission, node, 1)) {
        Some(Ok(job)) => job,
        _ => submission,
    };
    let job = Job {
        task_id: "t".into(),
        block_height: job.block_height,
        proof_target: job.proof_target,
        epoch_challenge: job.epoch_challenge,
    };
    let mut states: Vec<_> = admitted.iter_mut().collect();
    let chosen = set.offer_job(&job, &mut states, 2);
    assert!(chosen.windows(2).all(|w| w[0] < w[1]), "chosen workers ascending, once each");
    assert!(chosen.iter().all(|&i| i < states.len()), "chosen workers exist");
    let solution = Solution {
        task_id: "t".into(),
        hardware_id: "hw-0".into(),
        caption: "c".into(),
        solution: "{}".into(),
        solution_target: 1,
        unique_key: "1".into(),
    };
    let _ = set.validate_solution(&job, &solution);
    let views: Vec<&NodeState> = node_states.iter().collect();
    let chosen = set.offer_solution(&job, &solution, &views, 3);
    assert!(chosen.iter().all(|&i| i < views.len()), "chosen nodes exist");
}

/// Reads fuzz bytes as answers; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn list<T>(&mut self, max: u8, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.byte() % max.max(1);
        (0..n).map(|_| item(self)).collect()
    }

    fn text(&mut self) -> String {
        let bytes = self.list(24, |b| b.byte());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A policy whose every answer comes from the fuzzer, passed through the same
/// contract checks as a WebAssembly plugin's.
struct FuzzedPolicy {
    info: PluginInfo,
    answers: Mutex<Vec<u8>>,
}

impl FuzzedPolicy {
    fn new(answers: &[u8]) -> Self {
        let info = PluginInfo { name: "fuzzed".into(), version: "0".into(), hooks: ALL_HOOKS.to_vec() };
        FuzzedPolicy { info, answers: Mutex::new(answers.to_vec()) }
    }

    /// Runs `read` over the unread answers and consumes what it read.
    fn next<T>(&self, read: impl FnOnce(&mut Bytes<'_>) -> T) -> T {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = Bytes(&answers);
        let value = read(&mut bytes);
        let used = answers.len() - bytes.0.len();
        answers.drain(..used);
        value
    }

    fn verdict<T>(&self, accept: impl FnOnce(&mut Bytes<'_>) -> T) -> Decision<Verdict<T>> {
        self.next(|b| match b.byte() % 4 {
            0 => Err(PolicyError::Trap("fuzzed trap".into())),
            1 => Ok(Err(b.text())),
            _ => Ok(Ok(accept(b))),
        })
    }
}

impl Policy for FuzzedPolicy {
    fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn admit_connection(&self, _: &ConnectionRequest, _: u64) -> Decision<Verdict<()>> {
        self.verdict(|_| ())
    }

    fn admit_worker(&self, _: &Welcome, _: u64) -> Decision<Verdict<WorkerAdmission>> {
        self.verdict(|b| WorkerAdmission {
            profile: WorkerProfile {
                tags: b.list(4, Bytes::text),
                limits: b.list(4, |b| (b.text(), u64::from(b.u32()))),
            },
            state: u64::from(b.u32()),
        })
    }

    fn admit_job(&self, job: &JobSubmission, _: &[u8], _: u64) -> Decision<Verdict<JobAdmission>> {
        self.verdict(|b| JobAdmission {
            job: JobSubmission {
                block_height: i64::from(b.u32() as i32),
                proof_target: u64::from(b.u32()),
                epoch_challenge: if b.byte() % 2 == 0 { job.epoch_challenge.clone() } else { b.text() },
            },
            state: b.list(64, |b| b.byte()),
        })
    }

    fn offer_job(&self, _: &Job, _: &[WorkerProfile], workers: &Workers, _: u64) -> Decision<JobOffer> {
        let offer = self
            .next(|b| JobOffer { workers: b.list(40, |b| b.u32() % 40), states: b.list(40, |b| u64::from(b.u32())) });
        check_job_offer(&offer, workers.states.len())?;
        Ok(offer)
    }

    fn validate_solution(&self, _: &Job, _: &Solution) -> Decision<Verdict<()>> {
        self.verdict(|_| ())
    }

    fn offer_solution(&self, _: &Job, _: &Solution, nodes: &[NodeView], _: u64) -> Decision<Vec<u32>> {
        let chosen = self.next(|b| b.list(20, |b| b.u32() % 20));
        check_indices(&chosen, nodes.len(), "node")?;
        Ok(chosen)
    }
}
