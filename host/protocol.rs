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
}

/// Worker → server, first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeFrame {
    pub ip: String,
    pub address: String,
    pub hardware: String,
    pub hardware_id: String,
    pub caption: String,
}

impl WelcomeFrame {
    /// Reads a worker's welcome.
    pub fn parse(text: &[u8]) -> Result<Self, FrameError> {
        parse("welcome", text)
    }
}

/// Worker → server: a solution. An extra `"type": "solution"` is ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolutionFrame {
    pub task_id: String,
    /// The worker's solution object, e.g. `{"partial_solution": {"nonce": …}, "proof.w": {…}}`.
    pub solution: Map<String, Value>,
    pub solution_target: u64,
}

impl SolutionFrame {
    /// Reads a worker's solution frame.
    pub fn parse(text: &[u8]) -> Result<Self, FrameError> {
        parse("solution", text)
    }
}

/// Server → worker: a job to work on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkFrame {
    pub task_id: String,
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
    pub hardware_id: String,
    pub caption: String,
    pub task_id: String,
    pub solution: Map<String, Value>,
    pub solution_target: u64,
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

/// Job processor → worker servers (the `job` topic). The original fields, plus
/// `proof_target` for policies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub task_id: String,
    pub epoch_challenge: Value,
    pub block_height: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(default)]
    pub proof_target: u64,
}

/// Solution processor → node servers (the `solution` topic). The original fields,
/// plus what policies need to decide which nodes receive it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolutionEvent {
    pub task_id: String,
    pub solution_target: u64,
    pub solution: Value,
    /// The job's height.
    pub solution_height: i64,
    #[serde(default)]
    pub unique_key: String,
    #[serde(default)]
    pub hardware_id: String,
    #[serde(default)]
    pub caption: String,
    #[serde(default)]
    pub proof_target: u64,
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
        };
        assert_eq!(m.unique_key().as_deref(), Some("12345"));
        m.solution = serde_json::from_str(r#"{"partial_solution":{}}"#).expect("json");
        assert_eq!(m.unique_key(), None);
    }
}
