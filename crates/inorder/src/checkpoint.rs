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
    storage::{Fence, StateOp, Storage},
};

/// A batch of state changes and where to report it durable.
pub(crate) struct CommitRequest {
    pub ops: Vec<StateOp>,
    /// The lease `ops` hold under (cluster mode; `ops` carry it as a [`StateOp::Fence`]).
    pub fence: Option<Fence>,
    pub done: oneshot::Sender<Result<()>>,
}

/// Starts the checkpointer; it stops when every sender is dropped.
pub(crate) fn spawn(
    storage: Arc<dyn Storage>,
) -> (mpsc::Sender<CommitRequest>, tokio::task::JoinHandle<()>) {
    let (requests, mut receiver) = mpsc::channel::<CommitRequest>(CHECKPOINT_QUEUE_DEPTH);
    let task = tokio::spawn(async move {
        while let Some(first) = receiver.recv().await {
            let mut size = first.ops.len();
            let mut batch = vec![first];
            while size < CHECKPOINT_OPS_MAX {
                match receiver.try_recv() {
                    Ok(next) => {
                        size += next.ops.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            commit_batch(storage.as_ref(), batch).await;
        }
    });
    (requests, task)
}

/// Commits `batch` as one write and answers it. A commit refused because one of its leases was
/// lost (cluster mode) answers the requests under that lease with the refusal and commits the
/// others again: one node's lost partition never fails another's checkpoint.
async fn commit_batch(storage: &dyn Storage, mut batch: Vec<CommitRequest>) {
    loop {
        let ops: Vec<StateOp> = batch.iter().flat_map(|r| r.ops.iter().cloned()).collect();
        let result = commit(storage, ops).await;
        if let Err(Error::Fenced { subscription, partition }) = &result {
            let lost = |r: &CommitRequest| {
                r.fence.as_ref().is_some_and(|f| {
                    f.subscription.as_str() == subscription && f.partition == *partition
                })
            };
            let (fenced, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(lost);
            tracing::warn!(subscription, partition, "a checkpoint of a lost partition was refused");
            metrics::counter!("inorder_checkpoints_fenced_total").increment(1);
            // Each round answers at least one request (none carrying that lease: all of them),
            // so this ends.
            let (answered, rest) =
                if fenced.is_empty() { (rest, Vec::new()) } else { (fenced, rest) };
            for request in answered {
                let _ = request.done.send(result.as_ref().copied().map_err(again));
            }
            batch = rest;
            if batch.is_empty() {
                return;
            }
            continue;
        }
        if let Err(error) = &result {
            tracing::error!(%error, streams = batch.len(), "checkpoint failed");
            metrics::counter!("inorder_checkpoint_failures_total").increment(1);
        }
        for request in batch {
            let _ = request.done.send(result.as_ref().copied().map_err(again));
        }
        return;
    }
}

/// The same failure for another stream of the batch (errors are not `Clone`; the kinds that
/// decide what a stream does are kept).
fn again(error: &Error) -> Error {
    match error {
        Error::Storage(error) => Error::Storage(error.clone()),
        Error::Stopped => Error::Stopped,
        Error::Fenced { subscription, partition } => {
            Error::Fenced { subscription: subscription.clone(), partition: *partition }
        }
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
