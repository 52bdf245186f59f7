//! The receiving half of a connection: the loop that reads its frames within
//! their budgets, and the sizes a connection is upgraded with.

use super::budget::{FrameBudget, FrameVerdict};
use super::close::close_code;
use super::outbox::Outbox;
use crate::config::SocketConfig;
use axum::extract::ws::{Message, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Applies the configured buffer sizes to a connection being upgraded.
pub fn sized(ws: axum::extract::ws::WebSocketUpgrade, socket: &SocketConfig) -> axum::extract::ws::WebSocketUpgrade {
    ws.read_buffer_size(socket.read_buffer_bytes)
        .write_buffer_size(socket.write_buffer_bytes)
        .max_message_size(socket.max_message_bytes)
        .max_frame_size(socket.max_message_bytes)
}

/// Closes a connection whose read failed, saying why when the client can act on
/// it: a message over the limit gets 1009 with the limit (its payload is never
/// read). Other read errors mean the connection is already gone.
pub fn close_for_read_error(outbox: &Outbox, error: axum::Error, role: &'static str) {
    let inner = error.into_inner();
    if let Some(tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { size, max_size })) =
        inner.downcast_ref::<tungstenite::Error>()
    {
        crate::metrics::add("eligo_frames_refused_total", &[("role", role), ("reason", "too_large")], 1);
        outbox.close(close_code::TOO_BIG, &format!("message of {size} bytes is over the limit of {max_size} bytes"));
    }
}

/// Which budget a frame spends.
#[derive(Clone, Copy)]
enum Budgeted {
    /// Text and binary frames.
    Data,
    /// Pings and pongs.
    Control,
}

impl Budgeted {
    /// The `reason` label of a refusal.
    fn reason(self) -> &'static str {
        match self {
            Budgeted::Data => "rate",
            Budgeted::Control => "ping_rate",
        }
    }

    /// What a client sent too many of.
    fn what(self) -> &'static str {
        match self {
            Budgeted::Data => "frames",
            Budgeted::Control => "pings",
        }
    }
}

/// Hands every data frame within the connection's `budget` to `on_frame` until the
/// peer goes, someone closes the connection, `shutdown` fires (which closes it
/// with 1001) or a read fails (see [`close_for_read_error`]). A frame over the
/// budget is dropped with an error frame (within the error allowance); a flood
/// closes with 1008 (see [`FrameBudget`]). Pings and pongs spend `control`, a
/// budget of their own. `role` labels the metrics.
pub async fn read_frames<F, Fut>(
    stream: &mut SplitStream<WebSocket>,
    outbox: &Outbox,
    shutdown: &CancellationToken,
    role: &'static str,
    (mut budget, mut control): (FrameBudget, FrameBudget),
    mut on_frame: F,
) where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let message = tokio::select! {
            m = stream.next() => m,
            _ = outbox.closing() => return,
            _ = shutdown.cancelled() => {
                outbox.close(close_code::GOING_AWAY, "server shutting down");
                return;
            }
        };
        let kind = match &message {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => Budgeted::Data,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Budgeted::Control,
            _ => {
                if let Some(Err(e)) = message {
                    close_for_read_error(outbox, e, role);
                }
                return;
            }
        };
        let spent = match kind {
            Budgeted::Data => &mut budget,
            Budgeted::Control => &mut control,
        };
        let verdict = spent.spend(std::time::Instant::now());
        if verdict != FrameVerdict::Take {
            crate::metrics::add("eligo_frames_refused_total", &[("role", role), ("reason", kind.reason())], 1);
        }
        match (verdict, kind) {
            (FrameVerdict::Take, _) => {}
            // The library answers a ping by itself; a dropped one is only counted.
            (FrameVerdict::Drop, Budgeted::Control) => continue,
            (FrameVerdict::Drop, Budgeted::Data) => {
                let error = format!("too many frames: over {}; this one was dropped", budget.describe());
                let text = match &message {
                    Some(Ok(Message::Text(text))) => text.as_bytes(),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    _ => &[],
                };
                let refusal = crate::protocol::refusal_frame(text, &error);
                // The first drop of a flood is always answered, so a client learns why
                // its frames go unanswered; the rest are within the error allowance.
                if budget.dropped_in_flood() == 1 {
                    outbox.send(refusal).await;
                } else {
                    outbox.send_refusal(refusal).await;
                }
                continue;
            }
            (FrameVerdict::Close, _) => {
                outbox.close(close_code::POLICY, &format!("too many {}: over {}", kind.what(), spent.describe()));
                return;
            }
        }
        match message {
            Some(Ok(Message::Text(text))) => on_frame(text.as_bytes().to_vec()).await,
            Some(Ok(Message::Binary(bytes))) => on_frame(bytes.to_vec()).await,
            Some(Ok(Message::Pong(payload))) => outbox.pong(&payload),
            _ => {}
        }
    }
}
