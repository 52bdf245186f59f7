//! The solution processor: consumes the `solution` queue in batches, stores each
//! solution once per nonce, asks the validators, and produces valid (or, with no
//! validator, unchecked) solutions to the `solution` topic once.
//!
//! A batch is: parse; insert the new solutions (one transaction); look up their
//! jobs; validate (off the async threads); produce the batch to the log and wait
//! for every delivery report; record verdicts, broadcasts and rejected messages
//! (one transaction); ack the batch. A solution produced twice after a crash is
//! delivered once per node connection: node servers remember what each
//! connection got.
//!
//! Solutions are keyed in the log by their job's task id, so one job's solutions
//! share a partition and every node server reads them in the order they were
//! judged: what a node gets of one job comes in that order, whichever partition
//! count the topic has. Node servers read every partition, so the key costs no
//! reader parallelism; it puts one job's solutions on one partition leader.

use crate::pipeline::consume::{consume_until, BatchSettings, Retry};
use crate::pipeline::Services;
use crate::plugin::{Hook, Job, Lane, Solution, Validation};
use crate::protocol::{canonical_json, Origin, Reply, SolutionEvent, SolutionMessage, Tally, TallyEvent, VerdictEvent};
use crate::store::{Inserted, NewSolution, Rejected, Settlement, StoredJob, StoredSolution, Verdict};
use crate::transport::{Stream, Topic};
use std::collections::{HashMap, HashSet};
use tokio_util::sync::CancellationToken;

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Valid or unchecked: produced to the log.
    Broadcast,
    /// Its nonce was stored and broadcast before: dropped.
    Duplicate,
    /// A validator refused it: stored with the reason, not broadcast.
    Invalid(String),
    /// Not usable (not a solution, no nonce, unknown task): recorded and dropped.
    Rejected(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Broadcast => "broadcast",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid(_) => "invalid",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// Consumes the `solution` queue until `shutdown`.
pub async fn run(services: Services, settings: BatchSettings, shutdown: CancellationToken) {
    consume_until(Stream::Solution, services, settings, shutdown, |s, p| {
        Box::pin(async move { Ok(process_batch(s, p).await?.iter().map(Outcome::label).collect()) })
    })
    .await
}

/// The policies' view of a stored job.
pub fn job_view(job: &StoredJob) -> Job {
    Job {
        task_id: job.task_id.clone(),
        block_height: job.block_height,
        proof_target: job.proof_target,
        epoch_challenge: job.epoch_challenge.clone(),
    }
}

/// The event node servers receive for a stored solution of a stored job.
pub fn solution_event(job: &StoredJob, solution: &StoredSolution) -> SolutionEvent {
    SolutionEvent {
        task_id: solution.task_id.clone(),
        solution_target: solution.solution_target,
        solution: serde_json::from_str(&solution.solution).unwrap_or(serde_json::Value::Null),
        solution_height: job.block_height,
        unique_key: solution.unique_key.clone(),
        hardware_id: solution.hardware_id.clone(),
        caption: solution.caption.clone(),
        proof_target: job.proof_target,
        epoch_challenge: serde_json::from_str(&job.epoch_challenge).unwrap_or(serde_json::Value::Null),
    }
}

/// Where a message's verdict goes, if its worker asked for one: the reply and the task.
type Asked = Option<(Reply, String)>;

/// Who sent a message and who asked for its verdict.
#[derive(Default)]
struct Senders {
    asked: Asked,
    origin: Option<Origin>,
}

/// The solution a message carries, or why it carries none; and who sent it.
fn parse(payload: &[u8]) -> (Result<NewSolution, String>, Senders) {
    let message: SolutionMessage = match serde_json::from_slice(payload) {
        Ok(message) => message,
        Err(e) => return (Err(format!("not a solution message: {e}")), Senders::default()),
    };
    let asked = message.reply.clone().map(|reply| (reply, message.task_id.clone()));
    let senders = Senders { asked, origin: message.origin.clone() };
    let Some(unique_key) = message.unique_key() else {
        return (Err("solution has no partial_solution.nonce".into()), senders);
    };
    let solution = NewSolution {
        solution: canonical_json(&serde_json::Value::Object(message.solution)),
        unique_key,
        hardware_id: message.hardware_id,
        caption: message.caption,
        task_id: message.task_id,
        solution_target: message.solution_target,
        // An empty address pays no one: stored as none.
        address: message.address.filter(|a| !a.is_empty()),
    };
    (Ok(solution), senders)
}

/// Per worker server, what became of its connections' solutions in a batch:
/// one event each. `unknown` are the messages refused for naming no stored job.
fn tallies(origins: &[Option<Origin>], outcomes: &[Outcome], unknown: &HashSet<usize>) -> Vec<TallyEvent> {
    let mut by_server: HashMap<&str, HashMap<u64, Tally>> = HashMap::new();
    for (i, (origin, outcome)) in origins.iter().zip(outcomes).enumerate() {
        let Some(origin) = origin else { continue };
        let tally = by_server
            .entry(&origin.server)
            .or_default()
            .entry(origin.connection)
            .or_insert_with(|| Tally { connection: origin.connection, ..Tally::default() });
        let slot = match outcome {
            Outcome::Broadcast => {
                tally.valid += 1;
                continue;
            }
            Outcome::Duplicate => 0,
            Outcome::Invalid(_) => 1,
            Outcome::Rejected(_) if unknown.contains(&i) => 2,
            Outcome::Rejected(_) => 3,
        };
        tally.invalid[slot] += 1;
    }
    by_server
        .into_iter()
        .map(|(server, tallies)| TallyEvent { server: server.to_string(), tallies: tallies.into_values().collect() })
        .collect()
}

/// The verdict a worker that asked is sent for a message's outcome.
fn verdict_event((reply, task_id): (Reply, String), outcome: &Outcome) -> VerdictEvent {
    let reason = match outcome {
        Outcome::Broadcast => None,
        Outcome::Duplicate => Some("duplicate: a solution with this nonce was stored before".to_string()),
        Outcome::Invalid(reason) | Outcome::Rejected(reason) => Some(reason.clone()),
    };
    VerdictEvent { reply, task_id, valid: reason.is_none(), reason }
}

/// Stores, validates and broadcasts one solution message.
pub async fn process(services: &Services, payload: &[u8]) -> Result<Outcome, Retry> {
    crate::pipeline::consume::only(process_batch(services, &[payload.to_vec()]).await?)
}

/// Stores, validates and broadcasts a batch of solution messages; says what became
/// of each, in order. A failure leaves nothing acked: the batch is retried.
pub async fn process_batch(services: &Services, payloads: &[Vec<u8>]) -> Result<Vec<Outcome>, Retry> {
    let mut batch = Batch::parse(payloads);
    let stored = if batch.new.is_empty() {
        Vec::new()
    } else {
        services.store.insert_solutions(&batch.new).await.map_err(Retry::store)?
    };
    let jobs = jobs_of(services, &stored).await?;
    let mut pending = batch.still_to_decide(stored, &jobs, payloads);
    let verdicts = validate(services, &jobs, &mut pending).await?;
    let (events, broadcast) = batch.judge(&pending, &jobs)?;
    let (outcomes, verdict_events) = batch.finish()?;
    // Verdicts go out with the solutions, before the batch is settled: if the batch
    // is redelivered, the worker server has already passed on the first verdict and
    // drops the second.
    produce_all(services, &events, &verdict_events).await?;
    let rejected = &batch.rejected;
    let settlement =
        Settlement { verdicts: &verdicts, solutions_broadcast: &broadcast, rejected, ..Default::default() };
    services.store.settle(&settlement).await.map_err(Retry::store)?;
    for r in rejected {
        tracing::warn!(reason = %r.reason, "solution message rejected");
    }
    tracing::debug!(broadcast = broadcast.len(), "solution batch broadcast");
    Ok(outcomes)
}

/// One batch on its way: what each message became so far, and what the next
/// steps need of them.
struct Batch {
    outcomes: Vec<Option<Outcome>>,
    rejected: Vec<Rejected>,
    /// The solutions new to this batch (each nonce once), to insert.
    new: Vec<NewSolution>,
    /// The message each of `new` came from.
    message_of: Vec<usize>,
    asked: Vec<Asked>,
    origins: Vec<Option<Origin>>,
    /// The messages refused for naming no stored job.
    unknown: HashSet<usize>,
}

/// An event to produce: its key in the log and its bytes.
type Event = (String, Vec<u8>);

impl Batch {
    /// Parses every message; a repeat of a nonce within the batch is a duplicate
    /// of the first, an unusable message is rejected.
    fn parse(payloads: &[Vec<u8>]) -> Self {
        let mut batch = Batch {
            outcomes: payloads.iter().map(|_| None).collect(),
            rejected: Vec::new(),
            new: Vec::new(),
            message_of: Vec::new(),
            asked: Vec::with_capacity(payloads.len()),
            origins: Vec::with_capacity(payloads.len()),
            unknown: HashSet::new(),
        };
        let mut keys = HashSet::new();
        for (i, payload) in payloads.iter().enumerate() {
            let (solution, senders) = parse(payload);
            batch.asked.push(senders.asked);
            batch.origins.push(senders.origin);
            match solution {
                Ok(solution) if keys.insert(solution.unique_key.clone()) => {
                    batch.new.push(solution);
                    batch.message_of.push(i);
                }
                Ok(_) => batch.outcomes[i] = Some(Outcome::Duplicate),
                Err(reason) => batch.reject(i, payload, reason, false),
            }
        }
        batch
    }

    fn reject(&mut self, i: usize, payload: &[u8], reason: String, unknown_job: bool) {
        self.rejected.push(Rejected::new("solution", payload, reason.clone()));
        self.outcomes[i] = Some(Outcome::Rejected(reason));
        if unknown_job {
            self.unknown.insert(i);
        }
    }

    /// Of the stored solutions, those still to decide on: not broadcast before
    /// (else a duplicate), of a known job (else rejected).
    fn still_to_decide(
        &mut self,
        stored: Vec<Inserted<StoredSolution>>,
        jobs: &HashMap<String, StoredJob>,
        payloads: &[Vec<u8>],
    ) -> Vec<(usize, StoredSolution)> {
        let mut pending = Vec::new();
        let message_of = std::mem::take(&mut self.message_of);
        for (inserted, i) in stored.into_iter().zip(message_of) {
            let solution = inserted.row;
            if solution.broadcast {
                self.outcomes[i] = Some(Outcome::Duplicate);
            } else if !jobs.contains_key(&solution.task_id) {
                self.reject(i, &payloads[i], format!("unknown task_id {}", solution.task_id), true);
            } else {
                pending.push((i, solution));
            }
        }
        pending
    }

    /// The validators' verdicts as outcomes: invalid ones stay, valid (and
    /// unchecked) ones become the events to broadcast (keyed by task id), with
    /// their unique keys.
    fn judge(
        &mut self,
        pending: &[(usize, StoredSolution)],
        jobs: &HashMap<String, StoredJob>,
    ) -> Result<(Vec<Event>, Vec<String>), Retry> {
        let (mut events, mut broadcast) = (Vec::new(), Vec::new());
        for (i, solution) in pending {
            if solution.checked && !solution.valid {
                self.outcomes[*i] = Some(Outcome::Invalid(solution.invalid_reason.clone().unwrap_or_default()));
                tracing::debug!(unique_key = %solution.unique_key, reason = ?solution.invalid_reason, "solution invalid");
                continue;
            }
            let Some(job) = jobs.get(&solution.task_id) else { continue };
            let bytes = serde_json::to_vec(&solution_event(job, solution)).map_err(Retry::from)?;
            events.push((solution.task_id.clone(), bytes));
            broadcast.push(solution.unique_key.clone());
            self.outcomes[*i] = Some(Outcome::Broadcast);
        }
        Ok((events, broadcast))
    }

    /// Every message's outcome, and the `verdict` topic's events: a verdict for
    /// each worker that asked, and a tally per worker server.
    fn finish(&mut self) -> Result<(Vec<Outcome>, Vec<Event>), Retry> {
        let outcomes: Vec<Outcome> =
            std::mem::take(&mut self.outcomes).into_iter().map(|o| o.unwrap_or(Outcome::Duplicate)).collect();
        let mut verdict_events = Vec::new();
        for (asker, outcome) in std::mem::take(&mut self.asked).into_iter().zip(&outcomes) {
            if let Some(asker) = asker {
                let event = verdict_event(asker, outcome);
                verdict_events.push((event.reply.server.clone(), serde_json::to_vec(&event).map_err(Retry::from)?));
            }
        }
        for event in tallies(&self.origins, &outcomes, &self.unknown) {
            verdict_events.push((event.server.clone(), serde_json::to_vec(&event).map_err(Retry::from)?));
        }
        Ok((outcomes, verdict_events))
    }
}

/// The stored jobs of the solutions not broadcast before, by task id.
async fn jobs_of(
    services: &Services,
    stored: &[Inserted<StoredSolution>],
) -> Result<HashMap<String, StoredJob>, Retry> {
    let task_ids: Vec<String> = stored
        .iter()
        .filter(|s| !s.row.broadcast)
        .map(|s| s.row.task_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if task_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let found = services.store.jobs_by_task(&task_ids).await.map_err(Retry::store)?;
    Ok(found.into_iter().map(|j| (j.task_id.clone(), j)).collect())
}

/// Produces the solutions and the verdict events, pipelined: every produce is in
/// flight at once, and all must be confirmed.
async fn produce_all(services: &Services, solutions: &[Event], verdicts: &[Event]) -> Result<(), Retry> {
    let solutions = solutions.iter().map(|(key, bytes)| services.log.produce(Topic::Solution, key, bytes));
    let verdicts = verdicts.iter().map(|(server, bytes)| services.log.produce(Topic::Verdict, server, bytes));
    let produced = futures::future::join_all(solutions.chain(verdicts)).await;
    match produced.into_iter().find(Result::is_err) {
        Some(Err(e)) => Err(Retry::from(e)),
        _ => Ok(()),
    }
}

/// Asks the validators about the solutions not checked yet, off the async threads
/// (a validator may be costly); updates them and returns the verdicts to record.
async fn validate(
    services: &Services,
    jobs: &HashMap<String, StoredJob>,
    pending: &mut [(usize, StoredSolution)],
) -> Result<Vec<Verdict>, Retry> {
    let unchecked: Vec<(usize, Job, Solution)> = pending
        .iter()
        .enumerate()
        .filter(|(_, (_, s))| !s.checked)
        .filter_map(|(at, (_, s))| {
            let job = jobs.get(&s.task_id)?;
            let view = Solution {
                task_id: s.task_id.clone(),
                hardware_id: s.hardware_id.clone(),
                caption: s.caption.clone(),
                solution: s.solution.clone(),
                solution_target: s.solution_target,
                unique_key: s.unique_key.clone(),
            };
            Some((at, job_view(job), view))
        })
        .collect();
    if unchecked.is_empty() {
        return Ok(Vec::new());
    }
    let decided = services
        .decide(Lane::Urgent, Hook::ValidateSolution, move |policies| {
            unchecked
                .into_iter()
                .map(|(at, job, solution)| (at, policies.validate_solution(&job, &solution)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Retry::from(format!("validation did not finish: {e}")))?;
    let mut verdicts = Vec::with_capacity(decided.len());
    for (at, validation) in decided {
        let (valid, checked, reason) = match validation {
            Validation::Unchecked => (false, false, None),
            Validation::Valid => (true, true, None),
            Validation::Invalid(refusal) => (false, true, Some(refusal.to_string())),
        };
        let Some((_, solution)) = pending.get_mut(at) else { continue };
        solution.valid = valid;
        solution.checked = checked;
        solution.invalid_reason = reason.clone();
        if checked {
            verdicts.push(Verdict { unique_key: solution.unique_key.clone(), valid, checked, invalid_reason: reason });
        }
    }
    Ok(verdicts)
}
