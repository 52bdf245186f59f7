//! The presence processor: consumes the `worker` queue in batches and records worker
//! connections in the `worker` table, so that welcoming a worker never waits for the
//! database (the original system's to-do: "persist worker connection and
//! disconnection by separate agent, not in `worker_server`").
//!
//! A batch is one transaction ([`crate::store::Store::record_presence`]): rows
//! upserted by connection key (a redelivered event writes nothing twice, and a
//! connection's end may arrive before its start), earlier open rows of the same
//! workers finished, and the recoveries of restarted instances applied. While the
//! database is down the events wait in the queue.

use crate::pipeline::consume::{consume_draining, BatchSettings, Retry};
use crate::pipeline::Services;
use crate::protocol::{ConnectionRecord, PresenceEvent};
use crate::store::{Presence, Recovery, Rejected, Settlement, WorkerConnection};
use crate::transport::Stream;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the processor goes on after `shutdown` while events keep coming: a
/// process stopping gracefully records its own workers' disconnects.
const DRAIN: Duration = Duration::from_millis(300);

/// Consumes the `worker` queue until `shutdown`, and then what is still arriving.
pub async fn run(services: Services, settings: BatchSettings, shutdown: CancellationToken) {
    consume_draining(Stream::Worker, services, settings, shutdown, DRAIN, |s, p| Box::pin(process_batch(s, p))).await
}

/// The row a connection event describes.
fn presence(record: ConnectionRecord) -> Presence {
    Presence {
        key: record.connection,
        worker: WorkerConnection {
            ip: record.ip,
            address: record.address,
            hardware: record.hardware,
            hardware_id: record.hardware_id,
            caption: record.caption,
            instance: record.instance,
        },
        connected_at: record.connected_at,
        disconnected_at: record.disconnected_at,
    }
}

/// One message of the `worker` queue: the events a worker server had waiting at
/// once (or, from a sender that sends them alone, one event).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Message {
    Many(Vec<PresenceEvent>),
    One(PresenceEvent),
}

/// The events of one presence message: a JSON array of them, or one alone (as
/// worker servers before batching sent them).
pub fn read_events(payload: &[u8]) -> Result<Vec<PresenceEvent>, serde_json::Error> {
    Ok(match serde_json::from_slice::<Message>(payload)? {
        Message::Many(events) => events,
        Message::One(event) => vec![event],
    })
}

/// Records a batch of presence messages; says what each was (a metrics label).
pub async fn process_batch(services: &Services, payloads: &[Vec<u8>]) -> Result<Vec<&'static str>, Retry> {
    let mut connections = Vec::new();
    let mut recoveries = Vec::new();
    let mut rejected = Vec::new();
    let mut outcomes = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let events = match read_events(payload) {
            Ok(events) => events,
            Err(e) => {
                outcomes.push("rejected");
                rejected.push(Rejected::new("worker", payload, format!("not presence events: {e}")));
                continue;
            }
        };
        outcomes.push("recorded");
        for event in events {
            match event {
                PresenceEvent::Connection(record) => connections.push(presence(record)),
                PresenceEvent::Recovered { instance, at } => recoveries.push(Recovery { instance, at }),
            }
        }
    }
    services.store.record_presence(&connections, &recoveries).await.map_err(Retry::store)?;
    if !rejected.is_empty() {
        let settlement = Settlement { rejected: &rejected, ..Settlement::default() };
        services.store.settle(&settlement).await.map_err(Retry::store)?;
        for r in &rejected {
            tracing::warn!(reason = %r.reason, "presence message rejected");
        }
    }
    Ok(outcomes)
}
