//! Reading a log topic for the whole process: one reader per topic feeds every
//! connection, reconnecting with backoff until shutdown.

use super::Backoff;
use crate::transport::{EventLog, Tail, Topic, TransportError};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Reads `topic` from its end and hands `deliver` what has arrived, in order: one
/// message (waiting for it) and those already read behind it, up to `max_batch`
/// (the next batch waits for it: messages are delivered in order), until
/// `shutdown`. `ready` fires once the first reader is in place, so a caller (a
/// test, or start-up) knows no later message can be missed.
pub async fn tail_forever<T: serde::de::DeserializeOwned, Fut>(
    log: Arc<dyn EventLog>,
    topic: Topic,
    shutdown: CancellationToken,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
    max_batch: usize,
    mut deliver: impl FnMut(Vec<T>) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = Backoff::default();
    let name = topic.name();
    while !shutdown.is_cancelled() {
        let mut tail = match log.tail(topic).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "cannot read the log; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            let first = tokio::select! { _ = shutdown.cancelled() => return, item = tail.next() => item };
            let (batch, broke) = ready_behind::<T>(&mut tail, first, max_batch, name);
            if !batch.is_empty() {
                backoff.reset();
                deliver(batch).await;
            }
            if broke {
                break;
            }
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
    }
}

/// The events of `first` and of the messages already read behind it, up to
/// `max_batch`; and whether the reader broke (or ended) meanwhile.
fn ready_behind<T: serde::de::DeserializeOwned>(
    tail: &mut Tail,
    first: Option<Result<Vec<u8>, TransportError>>,
    max_batch: usize,
    topic: &str,
) -> (Vec<T>, bool) {
    let mut batch = Vec::new();
    let mut item = first;
    loop {
        match item {
            Some(Ok(bytes)) => match serde_json::from_slice::<T>(&bytes) {
                Ok(event) => batch.push(event),
                Err(e) => tracing::warn!(topic, error = %e, "skipping an unreadable event"),
            },
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "log reader broke; reconnecting");
                return (batch, true);
            }
            None => return (batch, true),
        }
        if batch.len() >= max_batch.max(1) {
            return (batch, false);
        }
        match tail.next().now_or_never() {
            Some(next) => item = next,
            None => return (batch, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(items: Vec<Result<Vec<u8>, TransportError>>, then_pending: bool) -> Tail {
        let ready = futures::stream::iter(items);
        if then_pending {
            ready.chain(futures::stream::pending()).boxed()
        } else {
            ready.boxed()
        }
    }

    fn event(n: u32) -> Result<Vec<u8>, TransportError> {
        Ok(n.to_string().into_bytes())
    }

    #[test]
    fn a_batch_is_what_was_ready_up_to_its_bound_in_order() {
        let mut tail = tail_of((2..=5).map(event).collect(), true);
        let (batch, broke) = ready_behind::<u32>(&mut tail, Some(event(1)), 3, "t");
        assert_eq!((batch, broke), (vec![1, 2, 3], false));
        let first = tail.next().now_or_never().flatten();
        let (batch, broke) = ready_behind::<u32>(&mut tail, first, 3, "t");
        assert_eq!((batch, broke), (vec![4, 5], false), "stops where nothing more is ready");
    }

    #[test]
    fn an_unreadable_event_is_skipped_and_a_broken_reader_ends_the_batch() {
        let items = vec![Ok(b"not json".to_vec()), event(2), Err(TransportError::Closed), event(3)];
        let mut tail = tail_of(items, false);
        let (batch, broke) = ready_behind::<u32>(&mut tail, Some(event(1)), 10, "t");
        assert_eq!((batch, broke), (vec![1, 2], true));
        let (batch, broke) = ready_behind::<u32>(&mut tail, None, 10, "t");
        assert_eq!((batch, broke), (vec![], true), "an ended log breaks too");
    }
}
