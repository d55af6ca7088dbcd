//! Mirrors: the partitions other nodes hold, standing in this engine's streams with the progress
//! those nodes committed, so status, waits and retention on any node answer for the cluster.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::{mpsc, watch};

use crate::{
    error::Error,
    limits::STREAM_INBOX_DEPTH,
    state::{StreamId, StreamState},
    stream::handle::{StreamHandle, StreamHealth, StreamMsg, StreamStatus},
};

/// The stored progress of partitions, by stream (every node's; a mirror reads its own).
pub(crate) type Remote = BTreeMap<StreamId, StreamState>;

/// A mirror of the partition stream `id`: its status follows `remote`; operator commands are
/// refused with [`Error::Fenced`] (the node holding the partition takes them).
/// `shown`: what this engine showed of the partition before (the stream it ran, when it gave
/// the partition up) — the mirror starts from the further of that and the stored progress, so
/// an answer once processed stays so while the refresh catches up.
pub(crate) fn spawn(
    id: StreamId,
    mut remote: watch::Receiver<Arc<Remote>>,
    mut shutdown: watch::Receiver<bool>,
    shown: Option<StreamStatus>,
) -> StreamHandle {
    let (inbox_sender, mut inbox) = mpsc::channel(STREAM_INBOX_DEPTH);
    let mut commits = 0;
    let mut initial = status_of(remote.borrow_and_update().get(&id), commits);
    if let Some(shown) = shown.filter(|shown| shown.watermark > initial.watermark) {
        initial.watermark = shown.watermark;
        initial.max_time_micros = shown.max_time_micros;
        initial.read_position = shown.watermark.saturating_add(1);
        initial.done_above = shown.done_above;
    }
    let (status, receiver) = watch::channel(initial);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = remote.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let state = remote.borrow_and_update().get(&id).cloned();
                    status.send_if_modified(|current| {
                        let next = status_of(state.as_ref(), commits + 1);
                        // Stored progress only moves forward (a rewind is refused in cluster
                        // mode); a read older than what is shown never takes it back.
                        let moved = next.watermark > current.watermark
                            || (next.watermark == current.watermark
                                && (next.done_above != current.done_above
                                    || next.max_time_micros != current.max_time_micros));
                        if moved {
                            commits += 1;
                            *current = next;
                        }
                        moved
                    });
                }
                Some(message) = inbox.recv() => {
                    let refused = Err(Error::Fenced {
                        subscription: id.subscription.to_string(),
                        partition: id.partition.unwrap_or_default(),
                    });
                    match message {
                        StreamMsg::Retry { reply, .. } | StreamMsg::Discard { reply, .. } => {
                            let _ = reply.send(refused);
                        }
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    });
    StreamHandle { inbox: inbox_sender, status: receiver, task }
}

/// What a mirror shows of stored progress (none yet: nothing resolved).
fn status_of(state: Option<&StreamState>, commits: u64) -> StreamStatus {
    let state = state.cloned().unwrap_or_default();
    StreamStatus {
        watermark: state.watermark,
        max_time_micros: state.max_time_micros,
        commits,
        read_position: state.watermark.saturating_add(1),
        done_above: state.done_above.into_iter().map(|(range, _)| range).collect(),
        health: StreamHealth::Remote,
        ..StreamStatus::default()
    }
}
