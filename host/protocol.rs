//! The wire formats: WebSocket frames of nodes and workers (unchanged from the
//! original system, see `docs/protocol.md`), and the messages between the stages.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a frame or message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON at all.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not the expected shape.
    #[error("frame does not match the {kind} format: {detail}")]
    Shape {
        /// Which frame was expected.
        kind: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A field is longer than eligo accepts.
    #[error("field `{field}` is {size} bytes, over the limit of {max} bytes")]
    TooLong {
        /// The field, as named in the frame.
        field: &'static str,
        /// Its length: text in UTF-8 bytes, an object as compact JSON.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A field is wider than the table column it is stored in.
    #[error("field `{field}` is {chars} characters, over its column's width of {width}")]
    TooWide {
        /// The field, as named in the frame.
        field: &'static str,
        /// Its length in characters.
        chars: usize,
        /// The column's width.
        width: usize,
    },
}

/// How long the fields of a client's frame may be, checked before a frame
/// reaches a queue, a plugin or the database. Fields with a column of fixed
/// width (`hardware_id`, `caption`, `ip`, `task_id`) are held to that width too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLimits {
    /// Any text field.
    pub text_bytes: usize,
    /// A JSON object field (`solution`, `epoch_challenge`), as compact JSON.
    pub object_bytes: usize,
    /// A solution's unique key (`partial_solution.nonce` as text): the servers
    /// remember keys, so their length is what one client could make them hold.
    pub key_bytes: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits { text_bytes: 1024, object_bytes: 16 * 1024, key_bytes: 128 }
    }
}

/// Widths of the original tables' `varchar` columns, in characters.
mod column {
    pub const IP: usize = 45;
    pub const HARDWARE_ID: usize = 255;
    pub const CAPTION: usize = 255;
    pub const TASK_ID: usize = 36;
}

impl FieldLimits {
    fn text(&self, field: &'static str, value: &str, column: Option<usize>) -> Result<(), FrameError> {
        if value.len() > self.text_bytes {
            return Err(FrameError::TooLong { field, size: value.len(), max: self.text_bytes });
        }
        if let Some(width) = column {
            let chars = value.chars().count();
            if chars > width {
                return Err(FrameError::TooWide { field, chars, width });
            }
        }
        Ok(())
    }

    fn object(&self, field: &'static str, value: &Map<String, Value>) -> Result<(), FrameError> {
        let size = json_len(value);
        if size > self.object_bytes {
            return Err(FrameError::TooLong { field, size, max: self.object_bytes });
        }
        Ok(())
    }
}

/// The length of a value as compact JSON, without building the text.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and a `Map` of `Value`s always serializes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn parse<T: serde::de::DeserializeOwned>(kind: &'static str, text: &[u8]) -> Result<T, FrameError> {
    let value: Value = serde_json::from_slice(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| FrameError::Shape { kind, detail: e.to_string() })
}

/// JSON text with object keys sorted at every level and no spaces: the one
/// spelling of a value that policies (e.g. a proof-of-work check) hash.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect::<Map<_, _>>())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Sorting into a fresh map keeps the order whichever map type serde_json uses.
    sorted(value).to_string()
}

/// Node → server: a job. An extra `"type": "job"` (or any other key) is ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobFrame {
    /// Any JSON object.
    pub epoch_challenge: Map<String, Value>,
    /// Solutions must reach at least this target.
    pub proof_target: u64,
    /// The job's height.
    pub block_height: i64,
}

impl JobFrame {
    /// Reads a node's frame.
    pub fn parse(text: &[u8]) -> Result<Self, FrameError> {
        parse("job", text)
    }

    /// Reads a node's frame and holds its fields to `limits`.
    pub fn parse_within(text: &[u8], limits: &FieldLimits) -> Result<Self, FrameError> {
        let frame = Self::parse(text)?;
        frame.check(limits)?;
        Ok(frame)
    }

    /// Reads a node's frame, its fields held to `limits`, with the id it is to be
    /// acknowledged by.
    pub fn read_within(text: &[u8], limits: &FieldLimits) -> Acked<Self> {
        read_acked("job", text, |frame: &Self| frame.check(limits))
    }

    /// [`Self::read_within`] of a body already parsed as JSON (a POSTed job, whose
    /// other fields its route reads too).
    pub fn read_value_within(value: Value, limits: &FieldLimits) -> Acked<Self> {
        read_acked_value("job", value, |frame: &Self| frame.check(limits))
    }

    fn check(&self, limits: &FieldLimits) -> Result<(), FrameError> {
        limits.object("epoch_challenge", &self.epoch_challenge)
    }
}

/// Worker → server, first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeFrame {
    /// The welcome's `ip`.
    pub ip: String,
    /// The payout address (the welcome's `address`).
    pub address: String,
    /// The welcome's `hardware`.
    pub hardware: String,
    /// The worker's hardware id (unique per rig).
    pub hardware_id: String,
    /// The worker's caption (its name for the rig).
    pub caption: String,
}

impl WelcomeFrame {
    /// Reads a worker's welcome.
    pub fn parse(text: &[u8]) -> Result<Self, FrameError> {
        parse("welcome", text)
    }

    /// Reads a worker's welcome and holds its fields to `limits`.
    pub fn parse_within(text: &[u8], limits: &FieldLimits) -> Result<Self, FrameError> {
        let frame = Self::parse(text)?;
        limits.text("ip", &frame.ip, Some(column::IP))?;
        limits.text("address", &frame.address, None)?;
        limits.text("hardware", &frame.hardware, None)?;
        limits.text("hardware_id", &frame.hardware_id, Some(column::HARDWARE_ID))?;
        limits.text("caption", &frame.caption, Some(column::CAPTION))?;
        Ok(frame)
    }
}

/// Worker → server: a solution. An extra `"type": "solution"` is ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolutionFrame {
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The worker's solution object, e.g. `{"partial_solution": {"nonce": …}, "proof.w": {…}}`.
    pub solution: Map<String, Value>,
    /// The target the solution claims to reach.
    pub solution_target: u64,
}

impl SolutionFrame {
    /// Reads a worker's solution frame.
    pub fn parse(text: &[u8]) -> Result<Self, FrameError> {
        parse("solution", text)
    }

    /// Reads a worker's solution frame and holds its fields to `limits`.
    pub fn parse_within(text: &[u8], limits: &FieldLimits) -> Result<Self, FrameError> {
        let frame = Self::parse(text)?;
        frame.check(limits)?;
        Ok(frame)
    }

    /// Reads a worker's solution frame, its fields held to `limits`, with the id it
    /// is to be acknowledged by.
    pub fn read_within(text: &[u8], limits: &FieldLimits) -> Acked<Self> {
        read_acked("solution", text, |frame: &Self| frame.check(limits))
    }

    fn check(&self, limits: &FieldLimits) -> Result<(), FrameError> {
        limits.text("task_id", &self.task_id, Some(column::TASK_ID))?;
        limits.object("solution", &self.solution)?;
        let key = match self.solution.get("partial_solution").and_then(|p| p.get("nonce")) {
            Some(Value::String(s)) => s.len(),
            Some(Value::Number(n)) => n.to_string().len(),
            _ => 0,
        };
        if key > limits.key_bytes {
            return Err(FrameError::TooLong { field: "partial_solution.nonce", size: key, max: limits.key_bytes });
        }
        Ok(())
    }
}

/// The `id` a node or worker may put on a job or solution frame to have it
/// acknowledged: a string of at most [`FrameId::MAX_CHARS`] characters, or an
/// integer. It is echoed exactly as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FrameId(Value);

impl FrameId {
    /// The longest string id, in characters.
    pub const MAX_CHARS: usize = 64;

    /// `value` as an id, if it is one.
    pub fn new(value: &Value) -> Result<Self, FrameError> {
        let valid = match value {
            Value::String(s) => s.chars().count() <= Self::MAX_CHARS,
            Value::Number(n) => n.is_i64() || n.is_u64(),
            _ => false,
        };
        if valid {
            Ok(FrameId(value.clone()))
        } else {
            let detail = format!("`id` must be a string of at most {} characters, or an integer", Self::MAX_CHARS);
            Err(FrameError::Shape { kind: "acknowledged", detail })
        }
    }

    /// The `id` of a frame read as JSON: `None` when it has none (or `null`).
    pub fn of(frame: &Value) -> Result<Option<Self>, FrameError> {
        match frame.get("id") {
            None | Some(Value::Null) => Ok(None),
            Some(id) => Self::new(id).map(Some),
        }
    }

    /// The id as one text (its JSON), to look it up by.
    pub fn key(&self) -> String {
        self.0.to_string()
    }
}

/// A client's frame as read, with the id it asked to be acknowledged by.
#[derive(Debug)]
pub struct Acked<T> {
    /// The frame's `id`; `None` when it has none (the original protocol), or when
    /// the frame is not JSON or its id is not one (then `frame` says so).
    pub id: Option<FrameId>,
    /// The frame, or why it is refused.
    pub frame: Result<T, FrameError>,
}

fn read_acked<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    text: &[u8],
    check: impl FnOnce(&T) -> Result<(), FrameError>,
) -> Acked<T> {
    match serde_json::from_slice(text) {
        Ok(value) => read_acked_value(kind, value, check),
        Err(e) => Acked { id: None, frame: Err(FrameError::NotJson(e.to_string())) },
    }
}

/// [`read_acked`] of a frame already parsed as JSON.
fn read_acked_value<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    value: Value,
    check: impl FnOnce(&T) -> Result<(), FrameError>,
) -> Acked<T> {
    let id = match FrameId::of(&value) {
        Ok(id) => id,
        Err(e) => return Acked { id: None, frame: Err(e) },
    };
    let frame = serde_json::from_value(value)
        .map_err(|e| FrameError::Shape { kind, detail: e.to_string() })
        .and_then(|frame| check(&frame).map(|()| frame));
    Acked { id, frame }
}

/// Server → client: the frame with `id` is durably queued (`refused`: `None`), or
/// is not, and why.
pub fn ack_frame(id: &FrameId, refused: Option<&str>) -> String {
    match refused {
        None => serde_json::json!({ "type": "ack", "id": id, "status": "accepted" }),
        Some(reason) => serde_json::json!({ "type": "ack", "id": id, "status": "refused", "reason": reason }),
    }
    .to_string()
}

/// Server → client: the refusal of frame `text`, as its acknowledgement when it
/// carries a valid `id` (a client that asked to be answered is answered), or else
/// as an error frame.
pub fn refusal_frame(text: &[u8], reason: &str) -> String {
    let id = serde_json::from_slice::<Value>(text).ok().and_then(|frame| FrameId::of(&frame).ok().flatten());
    refusal(id.as_ref(), reason)
}

/// Server → client: the refusal of a frame read with `id`: its acknowledgement
/// when it has one, else an error frame.
pub fn refusal(id: Option<&FrameId>, reason: &str) -> String {
    match id {
        Some(id) => ack_frame(id, Some(reason)),
        None => error_frame(reason),
    }
}

/// Server → worker: what validation found of the solution sent with `id`.
pub fn verdict_frame(id: &FrameId, task_id: &str, invalid: Option<&str>) -> String {
    match invalid {
        None => serde_json::json!({ "type": "verdict", "id": id, "task_id": task_id, "valid": true }),
        Some(reason) => {
            serde_json::json!({ "type": "verdict", "id": id, "task_id": task_id, "valid": false, "reason": reason })
        }
    }
    .to_string()
}

/// Where a solution's verdict goes: the worker-server process (`server`, drawn at
/// its start), its connection, and the frame's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The worker-server process.
    pub server: String,
    /// The connection within it.
    pub connection: u64,
    /// The solution frame's id.
    pub id: FrameId,
}

/// Solution processor → worker servers (the `verdict` topic): the verdict on a
/// solution whose worker asked for one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictEvent {
    /// Who asked.
    pub reply: Reply,
    /// The solution's job.
    pub task_id: String,
    /// Valid (or accepted unchecked) and broadcast.
    pub valid: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Server → worker: a job to work on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkFrame {
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The `epoch_challenge` object.
    pub epoch_challenge: Value,
}

/// Server → client: what was wrong with a frame. Original clients never send bad
/// frames, so they never see one.
pub fn error_frame(error: &str) -> String {
    serde_json::json!({ "type": "error", "error": error }).to_string()
}

/// Worker server → solution processor (the `solution` exchange): the worker's frame
/// plus who sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolutionMessage {
    /// The sending worker's `hardware_id`.
    pub hardware_id: String,
    /// The sending worker's `caption`.
    pub caption: String,
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The worker's `solution` object.
    pub solution: Map<String, Value>,
    /// The target the solution claims to reach.
    pub solution_target: u64,
    /// Where the verdict goes, when the worker asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// The payout address of the connection (its welcome's `address`); absent in
    /// messages of worker servers from before it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Which connection sent it, for its counters (absent from older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// A connection of a worker-server process: where a solution came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The worker-server process.
    pub server: String,
    /// The connection within it.
    pub connection: u64,
}

/// Solution processor → one worker server (the `verdict` topic, keyed by the
/// server): what became of one batch's solutions, per connection, for the
/// connections' counters. One event per batch and server, whatever the batch's size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyEvent {
    /// The worker-server process.
    pub server: String,
    /// Each connection's counts.
    pub tallies: Vec<Tally>,
}

/// One connection's share of a [`TallyEvent`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The connection within the server.
    pub connection: u64,
    /// Valid (or accepted unchecked) and broadcast.
    pub valid: u32,
    /// Invalid, by reason: duplicate, refused by a policy, unknown job, unusable message.
    pub invalid: [u32; 4],
}

/// What the `verdict` topic carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VerdictTopicEvent {
    /// The verdict on one solution whose worker asked.
    Verdict(VerdictEvent),
    /// A batch's counts.
    Tally(TallyEvent),
}

impl SolutionMessage {
    /// The solution's `partial_solution.nonce` as text: its unique key.
    pub fn unique_key(&self) -> Option<String> {
        match self.solution.get("partial_solution")?.get("nonce")? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// Worker server → presence processor (the `worker` exchange): a connection that
/// opened or ended, or a server instance that started again. The worker server
/// sends these after the fact, so a welcome never waits for the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PresenceEvent {
    /// A welcomed connection; sent when it opens and again, with its end, when it ends.
    Connection(ConnectionRecord),
    /// `instance` started again at `at`: what it left open before then has ended.
    Recovered {
        /// The instance's name.
        instance: String,
        /// When it started.
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// One welcomed worker connection, as a [`PresenceEvent`] carries it: the whole
/// record every time, so its events may be handled in any order, or twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Unique per connection.
    pub connection: String,
    /// The server instance holding it.
    pub instance: String,
    /// The welcome's fields.
    pub ip: String,
    /// The payout address (the welcome's `address`).
    pub address: String,
    /// The welcome's `hardware`.
    pub hardware: String,
    /// The welcome's `hardware_id`.
    pub hardware_id: String,
    /// The welcome's `caption`.
    pub caption: String,
    /// When it was welcomed.
    pub connected_at: chrono::DateTime<chrono::Utc>,
    /// When it ended, in the event sent then.
    #[serde(default)]
    pub disconnected_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Job processor → worker servers (the `job` topic). The original fields, plus
/// `proof_target` for policies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The `epoch_challenge` object.
    pub epoch_challenge: Value,
    /// The block height the job is for.
    pub block_height: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The target a solution must reach.
    #[serde(default)]
    pub proof_target: u64,
}

/// Solution processor → node servers (the `solution` topic). The original fields,
/// plus what policies need to decide which nodes receive it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolutionEvent {
    /// The job's task id (a uuid).
    pub task_id: String,
    /// The target the solution claims to reach.
    pub solution_target: u64,
    /// The worker's `solution` object.
    pub solution: Value,
    /// The job's height.
    pub solution_height: i64,
    /// `partial_solution.nonce` as text: unique per solution.
    #[serde(default)]
    pub unique_key: String,
    /// The sending worker's `hardware_id`.
    #[serde(default)]
    pub hardware_id: String,
    /// The sending worker's `caption`.
    #[serde(default)]
    pub caption: String,
    /// The target a solution must reach.
    #[serde(default)]
    pub proof_target: u64,
    /// The `epoch_challenge` object.
    #[serde(default)]
    pub epoch_challenge: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_frames_parse_and_extra_type_keys_are_ignored() {
        let job = JobFrame::parse(br#"{"type":"job","epoch_challenge":{"a":1},"proof_target":5,"block_height":7}"#);
        assert_eq!(job.map(|j| (j.block_height, j.proof_target)), Ok((7, 5)));
        let sol = SolutionFrame::parse(
            br#"{"type":"solution","task_id":"t","solution":{"partial_solution":{"nonce":9}},"solution_target":3}"#,
        );
        assert!(sol.is_ok());
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert!(matches!(JobFrame::parse(b"{nope"), Err(FrameError::NotJson(_))));
        let missing = JobFrame::parse(br#"{"epoch_challenge":{},"proof_target":5}"#).unwrap_err().to_string();
        assert!(missing.contains("block_height"), "{missing}");
        let not_object = JobFrame::parse(br#"{"epoch_challenge":3,"proof_target":5,"block_height":1}"#).unwrap_err();
        assert!(not_object.to_string().contains("epoch_challenge") || not_object.to_string().contains("map"));
    }

    #[test]
    fn fields_over_their_limits_are_named_with_the_limit() {
        let limits = FieldLimits { text_bytes: 16, object_bytes: 32, key_bytes: 8 };
        let welcome = |caption: &str| {
            format!(r#"{{"ip":"1.2.3.4","address":"a","hardware":"h","hardware_id":"id","caption":"{caption}"}}"#)
        };
        assert!(WelcomeFrame::parse_within(welcome("fits").as_bytes(), &limits).is_ok());
        let long = WelcomeFrame::parse_within(welcome(&"c".repeat(17)).as_bytes(), &limits).unwrap_err();
        assert_eq!(long, FrameError::TooLong { field: "caption", size: 17, max: 16 });
        assert_eq!(long.to_string(), "field `caption` is 17 bytes, over the limit of 16 bytes");
        let solution = |nonce: &str| format!(r#"{{"task_id":"t","solution":{{"n":"{nonce}"}},"solution_target":1}}"#);
        assert!(SolutionFrame::parse_within(solution("1").as_bytes(), &limits).is_ok());
        let big = SolutionFrame::parse_within(solution(&"9".repeat(40)).as_bytes(), &limits).unwrap_err();
        assert_eq!(big, FrameError::TooLong { field: "solution", size: 48, max: 32 });
        let job = br#"{"epoch_challenge":{"x":"0123456789012345678901234567890"},"proof_target":1,"block_height":1}"#;
        assert!(matches!(
            JobFrame::parse_within(job, &limits),
            Err(FrameError::TooLong { field: "epoch_challenge", .. })
        ));
    }

    #[test]
    fn a_solution_key_over_its_limit_is_refused_whether_text_or_number() {
        let limits = FieldLimits { key_bytes: 8, ..FieldLimits::default() };
        let solution = |nonce: &str| {
            format!(r#"{{"task_id":"t","solution":{{"partial_solution":{{"nonce":{nonce}}}}},"solution_target":1}}"#)
        };
        assert!(SolutionFrame::parse_within(solution(r#""12345678""#).as_bytes(), &limits).is_ok());
        assert!(SolutionFrame::parse_within(solution("12345678").as_bytes(), &limits).is_ok());
        let text = SolutionFrame::parse_within(solution(r#""123456789""#).as_bytes(), &limits).unwrap_err();
        assert_eq!(text, FrameError::TooLong { field: "partial_solution.nonce", size: 9, max: 8 });
        let number = SolutionFrame::parse_within(solution("123456789").as_bytes(), &limits).unwrap_err();
        assert_eq!(number, FrameError::TooLong { field: "partial_solution.nonce", size: 9, max: 8 });
        // The default: 128 bytes, far below what fits in a solution object.
        let big = solution(&format!(r#""{}""#, "n".repeat(12_000)));
        assert!(SolutionFrame::parse_within(big.as_bytes(), &FieldLimits::default()).is_err());
    }

    #[test]
    fn fixed_width_columns_bound_their_fields_in_characters() {
        let limits = FieldLimits::default();
        let task = format!(r#"{{"task_id":"{}","solution":{{}},"solution_target":1}}"#, "t".repeat(37));
        let error = SolutionFrame::parse_within(task.as_bytes(), &limits).unwrap_err();
        assert_eq!(error, FrameError::TooWide { field: "task_id", chars: 37, width: 36 });
        // Multi-byte characters count once: 255 of them fit the column.
        let caption = "é".repeat(255);
        let welcome = format!(r#"{{"ip":"","address":"","hardware":"","hardware_id":"","caption":"{caption}"}}"#);
        assert!(WelcomeFrame::parse_within(welcome.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":null}}"#).expect("json");
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn unique_key_is_the_nonce_as_text() {
        let mut m = SolutionMessage {
            hardware_id: "h".into(),
            caption: "c".into(),
            task_id: "t".into(),
            solution: serde_json::from_str(r#"{"partial_solution":{"nonce":12345}}"#).expect("json"),
            solution_target: 1,
            reply: None,
            address: None,
            origin: None,
        };
        assert_eq!(m.unique_key().as_deref(), Some("12345"));
        m.solution = serde_json::from_str(r#"{"partial_solution":{}}"#).expect("json");
        assert_eq!(m.unique_key(), None);
    }
}
