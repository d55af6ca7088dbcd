//! The checkpointer: one task that makes state changes durable, for every stream at once.
//!
//! Streams send batches of [`StateOp`]s; the checkpointer takes every batch queued (up to
//! [`CHECKPOINT_OPS_MAX`] operations), commits them all with one durable write (one fsync), then
//! answers each stream. While a commit runs, the next batches accumulate, so the fsync cost is
//! shared the way the log's group commit shares it. Requests are answered strictly in the order
//! they were queued, so an empty request is a barrier: when it is answered, every earlier one is.
//!
//! A commit may be of any size: the storage writes it atomically however large (the file
//! backend splits it into journal parts applied all or nothing). A failed commit is answered
//! with its typed error to every stream in it (their supervisors decide); a panic in the storage
//! is caught and answered as an error, so the checkpointer itself never dies.

use std::{panic::AssertUnwindSafe, sync::Arc};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::{Error, Result},
    handler::panic_message,
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
            let result = commit(storage.as_ref(), ops).await;
            if let Err(error) = &result {
                tracing::error!(%error, streams = waiting.len(), "checkpoint failed");
                metrics::counter!("inorder_checkpoint_failures_total").increment(1);
            }
            for done in waiting {
                let _ = done.send(result.as_ref().copied().map_err(again));
            }
        }
    });
    (requests, task)
}

/// The same failure for another stream of the batch (errors are not `Clone`; the kinds that
/// decide what a stream does are kept).
fn again(error: &Error) -> Error {
    match error {
        Error::Storage(error) => Error::Storage(error.clone()),
        Error::Stopped => Error::Stopped,
        other => Error::Internal { what: format!("checkpoint: {other}") },
    }
}

async fn commit(storage: &dyn Storage, ops: Vec<StateOp>) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    match AssertUnwindSafe(storage.commit(ops, true)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(Error::Internal {
            what: format!(
                "the storage panicked in a checkpoint: {}",
                panic_message(panic.as_ref())
            ),
        }),
    }
}
