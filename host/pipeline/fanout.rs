//! Reading log topics for the whole process: one reader per topic (or one for
//! several) feeds every connection, reconnecting with backoff until shutdown.

use super::Backoff;
use crate::transport::{EventLog, Topic, TransportError};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::future::Future;
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
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    max_batch: usize,
    deliver: impl FnMut(Vec<T>) -> Fut,
) where
    Fut: Future<Output = ()>,
{
    let open = || log.tail(topic);
    let decode = |payload: Vec<u8>| serde_json::from_slice::<T>(&payload);
    let ready = move || {
        if let Some(ready) = ready {
            let _ = ready.send(());
        }
    };
    read_forever(open, topic.name(), (shutdown, ready), max_batch, decode, deliver).await
}

/// As [`tail_forever`], for several topics with one reader
/// ([`EventLog::tail_topics`]): `decode` reads a message of any of them;
/// `ready` is called once the first reader is in place.
pub async fn tail_topics_forever<T, Fut>(
    log: Arc<dyn EventLog>,
    topics: &[Topic],
    shutdown: CancellationToken,
    ready: impl FnOnce(),
    decode: impl Fn(Topic, &[u8]) -> serde_json::Result<T>,
    deliver: impl FnMut(Vec<T>) -> Fut,
) where
    Fut: Future<Output = ()>,
{
    let name = topics.iter().map(|t| t.name()).collect::<Vec<_>>().join("+");
    let open = || log.tail_topics(topics);
    let decode = |(topic, payload): (Topic, Vec<u8>)| decode(topic, &payload);
    // Each message is handled on the spot: taking several at once would save nothing.
    read_forever(open, &name, (shutdown, ready), 1, decode, deliver).await
}

/// A reader's messages, whatever it reads.
type Reader<I> = BoxStream<'static, Result<I, TransportError>>;

/// The loop of [`tail_forever`]: opens a reader with `open`, reopening it with
/// backoff whenever it breaks, until shutdown.
async fn read_forever<I, T, Open, Opening, Fut>(
    mut open: Open,
    name: &str,
    (shutdown, ready): (CancellationToken, impl FnOnce()),
    max_batch: usize,
    decode: impl Fn(I) -> serde_json::Result<T>,
    mut deliver: impl FnMut(Vec<T>) -> Fut,
) where
    Open: FnMut() -> Opening,
    Opening: Future<Output = Result<Reader<I>, TransportError>>,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::default();
    let mut ready = Some(ready);
    while !shutdown.is_cancelled() {
        let mut reader = match open().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "cannot read the log; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => continue }
            }
        };
        if let Some(ready) = ready.take() {
            ready();
        }
        loop {
            let first = tokio::select! { _ = shutdown.cancelled() => return, item = reader.next() => item };
            let (batch, broke) = ready_behind(&mut reader, first, max_batch, name, &decode);
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
fn ready_behind<I, T>(
    reader: &mut Reader<I>,
    first: Option<Result<I, TransportError>>,
    max_batch: usize,
    topic: &str,
    decode: impl Fn(I) -> serde_json::Result<T>,
) -> (Vec<T>, bool) {
    let mut batch = Vec::new();
    let mut item = first;
    loop {
        match item {
            Some(Ok(message)) => match decode(message) {
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
        match reader.next().now_or_never() {
            Some(next) => item = next,
            None => return (batch, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Tail;

    fn json<T: serde::de::DeserializeOwned>(payload: Vec<u8>) -> serde_json::Result<T> {
        serde_json::from_slice(&payload)
    }

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
        let (batch, broke) = ready_behind(&mut tail, Some(event(1)), 3, "t", json::<u32>);
        assert_eq!((batch, broke), (vec![1, 2, 3], false));
        let first = tail.next().now_or_never().flatten();
        let (batch, broke) = ready_behind(&mut tail, first, 3, "t", json::<u32>);
        assert_eq!((batch, broke), (vec![4, 5], false), "stops where nothing more is ready");
    }

    #[test]
    fn an_unreadable_event_is_skipped_and_a_broken_reader_ends_the_batch() {
        let items = vec![Ok(b"not json".to_vec()), event(2), Err(TransportError::Closed), event(3)];
        let mut tail = tail_of(items, false);
        let (batch, broke) = ready_behind(&mut tail, Some(event(1)), 10, "t", json::<u32>);
        assert_eq!((batch, broke), (vec![1, 2], true));
        let (batch, broke) = ready_behind(&mut tail, None, 10, "t", json::<u32>);
        assert_eq!((batch, broke), (vec![], true), "an ended log breaks too");
    }
}
