//! The checkpointer: one task that makes state changes durable, for every stream at once.
//!
//! Streams send batches of [`StateOp`]s; the checkpointer takes every batch queued, commits them
//! all with one durable write (one fsync), then answers each stream. While a commit runs, the
//! next batches accumulate, so the fsync cost is shared the way the log's group commit shares it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Result},
    limits::{CHECKPOINT_OPS_MAX, CHECKPOINT_QUEUE_DEPTH},
    storage::{StateOp, Storage},
};

/// A batch of state changes and where to report it durable.
pub(crate) struct CommitRequest {
    pub ops: Vec<StateOp>,
    pub done: oneshot::Sender<Result<()>>,
}

/// Starts the checkpointer; it stops when every sender is dropped.
pub(crate) fn spawn(
    storage: Arc<dyn Storage>,
) -> (mpsc::Sender<CommitRequest>, tokio::task::JoinHandle<()>) {
    let (requests, mut receiver) = mpsc::channel::<CommitRequest>(CHECKPOINT_QUEUE_DEPTH);
    let task = tokio::spawn(async move {
        while let Some(first) = receiver.recv().await {
            let mut ops = first.ops;
            let mut waiting = vec![first.done];
            while ops.len() < CHECKPOINT_OPS_MAX {
                match receiver.try_recv() {
                    Ok(next) => {
                        ops.extend(next.ops);
                        waiting.push(next.done);
                    }
                    Err(_) => break,
                }
            }
            let result = storage.commit(ops, true).await;
            if let Err(error) = &result {
                tracing::error!(%error, "checkpoint failed; streams stop");
            }
            for done in waiting {
                let _ = done.send(match &result {
                    Ok(()) => Ok(()),
                    Err(error) => Err(Error::State(error.to_string())),
                });
            }
        }
    });
    (requests, task)
}
