//! The id indexer: writes published event ids into the state store off the publish path.
//!
//! A publish returns once its events are durable in the log; indexing their ids (so a producer
//! retry is answered with the first position) happens here, batched: one state-store write for
//! every job queued. Until its ids are written, a job keeps their dedupe claims (resolved to
//! their positions), so a retry arriving in between is still answered from memory. The claims
//! are released only after the write, so at every instant an id is found in the claims, the
//! index, or not published at all.
//!
//! A write the storage refuses is tried again, with a backoff doubling up to
//! [`INDEX_RETRY_DELAY_MAX`], until it succeeds (counted in `inorder_index_failures_total`):
//! releasing the claims of unwritten ids would let a retry of them be appended twice. Meanwhile
//! the bounded queue fills and publishers wait — backpressure, not unbounded memory.
//!
//! The index is not durable (the log is): after a crash it is rebuilt from the log, from the last
//! "indexed up to" mark. On shutdown the indexer writes what is queued (once) and stops.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::{
    limits::{
        INDEX_QUEUE_JOBS_MAX, INDEX_RETRY_DELAY_MAX, INDEX_WRITE_IDS_MAX,
        STREAM_RESTART_DELAY_INITIAL,
    },
    runtime::TopicRuntime,
    storage::{StateOp, Storage},
};

/// The ids of one append, whose claims the indexer releases once they are written.
pub(crate) struct IndexJob {
    pub topic: Arc<TopicRuntime>,
    /// Event id and its position.
    pub ids: Vec<(String, u64)>,
}

impl IndexJob {
    /// Releases the claims of its ids: once they are written, or when they cannot be (the ids
    /// are then indexed from the log on the next start).
    pub(crate) fn release(self) {
        self.topic.dedupe.release(self.ids.iter().map(|(id, _)| id.as_str()));
    }
}

/// Starts the indexer; on `shutdown` it writes what is queued, then stops.
pub(crate) fn spawn(
    storage: Arc<dyn Storage>,
    mut shutdown: watch::Receiver<bool>,
) -> (mpsc::Sender<IndexJob>, tokio::task::JoinHandle<()>) {
    let (jobs, mut receiver) = mpsc::channel::<IndexJob>(INDEX_QUEUE_JOBS_MAX);
    let task = tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let first = if stopping {
                receiver.try_recv().ok()
            } else {
                tokio::select! {
                    job = receiver.recv() => job,
                    _ = shutdown.wait_for(|stop| *stop) => {
                        stopping = true;
                        continue;
                    }
                }
            };
            let Some(first) = first else { break };
            let mut count = first.ids.len();
            let mut batch = vec![first];
            while count < INDEX_WRITE_IDS_MAX {
                let Ok(next) = receiver.try_recv() else { break };
                count += next.ids.len();
                batch.push(next);
            }
            write(storage.as_ref(), batch, &mut shutdown).await;
        }
    });
    (jobs, task)
}

/// Writes the ids of `batch` (trying again until it succeeds or the engine stops), then
/// releases their claims and advances the "indexed up to" marks.
async fn write(storage: &dyn Storage, batch: Vec<IndexJob>, shutdown: &mut watch::Receiver<bool>) {
    let ops = || -> Vec<StateOp> {
        batch
            .iter()
            .flat_map(|job| {
                job.ids.iter().map(|(id, position)| StateOp::EventId {
                    topic: job.topic.name.clone(),
                    id: id.clone(),
                    position: *position,
                })
            })
            .collect()
    };
    let mut delay = STREAM_RESTART_DELAY_INITIAL;
    while let Err(error) = storage.commit(ops(), false).await {
        metrics::counter!("inorder_index_failures_total").increment(1);
        if *shutdown.borrow() {
            // The log holds the events; the next start indexes them from the last mark.
            tracing::warn!(%error, "could not index event ids before stopping");
            batch.into_iter().for_each(IndexJob::release);
            return;
        }
        tracing::warn!(%error, ?delay, "could not index event ids; trying again");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
        delay = delay.saturating_mul(2).min(INDEX_RETRY_DELAY_MAX);
    }
    let mut marks = Vec::new();
    for job in batch {
        let positions: Vec<u64> = job.ids.iter().map(|(_, position)| *position).collect();
        if let Some(position) = job.topic.dedupe.indexed(positions) {
            marks.push(StateOp::IdsIndexedTo { topic: job.topic.name.clone(), position });
        }
        job.release(); // written: the index answers from now on
    }
    if !marks.is_empty()
        && let Err(error) = storage.commit(marks, false).await
    {
        // Only the mark is lost: the next start re-indexes from the previous one.
        tracing::warn!(%error, "could not record the id index mark");
    }
}
