//! Streaming publish: `POST /v1/topics/{topic}/events:stream`.
//!
//! One long-lived request carries structured CloudEvents in, one per line (NDJSON); its response
//! carries one acknowledgement per event out, in the same order, each written once that event
//! is durable: `{"seq": 1, "position": 42}`, or `{"seq": 2, "error": {problem+json}}` for an
//! event refused (it changes nothing; the events around it go on). `seq` counts the request's
//! events from 1. It is what Redis and Kafka clients get from pipelining: a producer sends
//! without waiting and is acknowledged per event, without an HTTP request per event.
//!
//! The events that arrived while the previous ones were being made durable are appended
//! together ([`STREAM_BATCH_EVENTS_MAX`] at most, cut at a repeated event id), one append in
//! flight per stream, so their log order is the stream's order and they share an fsync with
//! each other and with every other publisher's. A line longer than the server's body limit, or
//! a body that breaks off, ends the stream after the acknowledgements of what came before it; so
//! does the server's graceful stop (an unfinished line is dropped), which would otherwise wait
//! for the client to end its request.

use std::{collections::HashSet, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};
use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use inorder::{Event, Name};
use serde_json::json;
use tokio::sync::mpsc;

use super::{AppState, NDJSON, OpenStream, content_type, name, ndjson_response, stopped};
use crate::{
    cloudevent,
    limits::{STREAM_ACK_CHUNKS_MAX, STREAM_BATCH_EVENTS_MAX},
    problem::Problem,
};

/// `POST /v1/topics/{topic}/events:stream` (see the module's documentation).
pub async fn publish(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
    line_limit: usize,
) -> Result<Response, Problem> {
    let topic = name("topic", &topic)?;
    match content_type(&headers).as_deref() {
        Some(NDJSON | "application/jsonl") => {}
        other => {
            return Err(Problem::unsupported_media_type(format!(
                "a stream of events is {NDJSON} (one structured CloudEvent per line), not {}",
                other.unwrap_or("untyped")
            )));
        }
    }
    let (acks, out) = mpsc::channel(STREAM_ACK_CHUNKS_MAX);
    let open = OpenStream::count("inorder_publish_streams_open", &[("topic", topic.to_string())]);
    tokio::spawn(Publisher { state, topic, line_limit, acks, seq: 0 }.run(body, open));
    Ok(ndjson_response(out))
}

/// One stream's publishing task: reads lines, appends them in batches, writes the acks.
struct Publisher {
    state: Arc<AppState>,
    topic: Name,
    line_limit: usize,
    acks: mpsc::Sender<Bytes>,
    /// Events seen so far (the last one's `seq`).
    seq: u64,
}

/// What ends a stream early.
enum End {
    /// The client stopped reading acknowledgements.
    Gone,
    /// This line (by `seq`) broke a rule; its ack says which.
    Refused(Bytes),
}

impl Publisher {
    /// Runs the stream; `_open` counts it in `inorder_publish_streams_open` until it ends.
    async fn run(mut self, body: Body, _open: OpenStream) {
        let mut body = body.into_data_stream();
        let mut buffer = BytesMut::new();
        let mut ended = false;
        loop {
            // Take in what arrived while the last append was made durable, so that it goes
            // into the next append together (up to a batch's worth of bytes past a line).
            while !ended && buffer.len() <= self.line_limit.saturating_mul(2) {
                match body.next().now_or_never() {
                    Some(Some(Ok(chunk))) => buffer.extend_from_slice(&chunk),
                    Some(Some(Err(error))) => {
                        tracing::debug!(%error, "a publish stream's body broke off");
                        ended = true;
                    }
                    Some(None) => ended = true,
                    None => break, // nothing more yet
                }
            }
            // Every complete line buffered is published before more is read.
            let lines = match self.complete_lines(&mut buffer, ended) {
                Ok(lines) => lines,
                Err(End::Refused(ack)) => {
                    let _ = self.acks.send(ack).await;
                    return;
                }
                Err(End::Gone) => return,
            };
            if !lines.is_empty() {
                if self.publish(lines).await.is_err() {
                    return;
                }
                continue;
            }
            if ended {
                return;
            }
            let next = tokio::select! {
                next = body.next() => next,
                () = stopped(self.state.stopping.clone()) => {
                    // The server stops: what came complete is published and acknowledged, an
                    // unfinished line is dropped, and the answer ends so the stop can finish.
                    let complete = buffer.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
                    buffer.truncate(complete);
                    None
                }
            };
            match next {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(error)) => {
                    tracing::debug!(%error, "a publish stream's body broke off");
                    ended = true; // what came complete is still published
                }
                None => ended = true,
            }
        }
    }

    /// The complete lines of `buffer` (see [`split_lines`]); a line over the limit ends the
    /// stream with its refusal.
    fn complete_lines(&mut self, buffer: &mut BytesMut, ended: bool) -> Result<Vec<Bytes>, End> {
        split_lines(buffer, ended, self.line_limit).map_err(|TooLong| self.refuse_too_long())
    }

    fn refuse_too_long(&mut self) -> End {
        self.seq += 1;
        let problem = Problem::too_large(format!(
            "an event line is longer than the body limit ({} bytes); the stream ends here",
            self.line_limit
        ));
        End::Refused(ack_line(self.seq, Err(problem.to_json())))
    }

    /// Appends `lines` (in order; a repeated id starts a new append) and sends their acks.
    async fn publish(&mut self, lines: Vec<Bytes>) -> Result<(), End> {
        let mut acks = Vec::with_capacity(lines.len() * 32);
        let mut lines = lines.into_iter().peekable();
        while lines.peek().is_some() {
            // Parse up to the end or a repeated id: an append holds each id once.
            let mut parsed: Vec<(u64, Result<Event, Problem>)> = Vec::new();
            let mut ids = HashSet::new();
            while let Some(line) = lines.peek() {
                let event = cloudevent::parse_structured(line, self.topic.as_str())
                    .map_err(|e| Problem::invalid_event(e.0));
                if let Ok(event) = &event
                    && !ids.insert(event.id.clone())
                {
                    break;
                }
                lines.next();
                self.seq += 1;
                parsed.push((self.seq, event));
            }
            let events: Vec<Event> =
                parsed.iter().filter_map(|(_, e)| e.as_ref().ok().cloned()).collect();
            let mut positions = if events.is_empty() {
                Ok(Vec::new().into_iter())
            } else {
                let _permit = Arc::clone(&self.state.publish_permits).acquire_owned().await;
                let published = self.state.engine.publish_batch(events).await;
                published.map(Vec::into_iter).map_err(|error| Problem::from(error).to_json())
            };
            for (seq, event) in parsed {
                let outcome = match (event, &mut positions) {
                    (Err(problem), _) => Err(problem.to_json()),
                    (Ok(_), Ok(positions)) => positions.next().ok_or_else(|| {
                        Problem::internal("the append answered fewer positions than events")
                            .to_json()
                    }),
                    (Ok(_), Err(problem)) => Err(problem.clone()),
                };
                acks.extend_from_slice(&ack_line(seq, outcome));
            }
        }
        self.acks.send(Bytes::from(acks)).await.map_err(|_| End::Gone)
    }
}

/// A line longer than the limit.
#[derive(Debug, PartialEq, Eq)]
struct TooLong;

/// Splits the complete lines (all of them once the body `ended`) off `buffer`, up to
/// [`STREAM_BATCH_EVENTS_MAX`], skipping blank ones; a line over `line_limit` bytes — or an
/// unfinished tail already over it — is refused.
fn split_lines(
    buffer: &mut BytesMut,
    ended: bool,
    line_limit: usize,
) -> Result<Vec<Bytes>, TooLong> {
    let mut lines = Vec::new();
    while lines.len() < STREAM_BATCH_EVENTS_MAX {
        let line = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => buffer.split_to(at + 1).freeze(),
            None if ended && !buffer.is_empty() => buffer.split().freeze(),
            None => break,
        };
        if line.len() > line_limit {
            return Err(TooLong);
        }
        if !line.trim_ascii().is_empty() {
            lines.push(line);
        }
    }
    // An unfinished tail already over the limit cannot become a valid line; complete lines
    // left for the next append are no tail.
    if lines.len() < STREAM_BATCH_EVENTS_MAX && buffer.len() > line_limit {
        return Err(TooLong);
    }
    Ok(lines)
}

/// One acknowledgement line: a position, or a problem's JSON.
fn ack_line(seq: u64, outcome: Result<u64, serde_json::Value>) -> Bytes {
    let ack = match outcome {
        Ok(position) => json!({ "seq": seq, "position": position }),
        Err(problem) => json!({ "seq": seq, "error": problem }),
    };
    let mut line = ack.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(text: &str) -> BytesMut {
        BytesMut::from(text.as_bytes())
    }

    #[test]
    fn lines_are_split_at_line_ends_and_the_unfinished_tail_waits() {
        let mut text = buffer("{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\"");
        let lines = split_lines(&mut text, false, 100).unwrap();
        assert_eq!(
            lines,
            [Bytes::from_static(b"{\"a\":1}\n"), Bytes::from_static(b"{\"b\":2}\r\n")]
        );
        assert_eq!(&text[..], b"{\"c\"");
        assert_eq!(split_lines(&mut text, true, 100).unwrap(), [Bytes::from_static(b"{\"c\"")]);
    }

    #[test]
    fn more_complete_lines_than_one_append_takes_are_no_long_line() {
        let many = "{\"e\":1}\n".repeat(STREAM_BATCH_EVENTS_MAX + 500);
        let mut text = buffer(&many);
        assert_eq!(split_lines(&mut text, false, 100).unwrap().len(), STREAM_BATCH_EVENTS_MAX);
        assert_eq!(split_lines(&mut text, false, 100).unwrap().len(), 500);
    }

    #[test]
    fn a_line_or_an_unfinished_tail_over_the_limit_is_refused() {
        assert_eq!(
            split_lines(&mut buffer(&format!("{}\n", "x".repeat(101))), false, 100),
            Err(TooLong)
        );
        assert_eq!(split_lines(&mut buffer(&"x".repeat(101)), false, 100), Err(TooLong));
        assert_eq!(split_lines(&mut buffer(&"x".repeat(100)), false, 100), Ok(Vec::new()));
    }
}
