//! Gathering handler calls into batches.
//!
//! A batch is written when it holds `batch_size` rows, when `batch_timeout` passed since its
//! first row, or when no row arrived for [`SINK_IDLE_FLUSH`], whichever comes first. The last
//! rule matters: every row of a batch is a handler call the engine keeps in flight until the
//! batch commits, so when calls stop arriving the engine usually has nothing more to hand over
//! (its in-flight limit is reached, or a `fifo` key waits for the very row we hold). Waiting the
//! full timeout then would only add latency. While a batch is being written the next one fills,
//! so under load batches grow to `batch_size` by themselves (group commit).

use std::time::Duration;

use tokio::time::Instant;

use super::Job;
use crate::limits::SINK_IDLE_FLUSH;

/// The next batch: waits for a first job, then gathers up to `size` jobs. `None` when the queue
/// is closed and empty (the sink was dropped).
pub(super) async fn next_batch(
    queue: &flume::Receiver<Job>,
    size: usize,
    timeout: Duration,
) -> Option<Vec<Job>> {
    let first = queue.recv_async().await.ok()?;
    let deadline = Instant::now() + timeout;
    let mut batch = Vec::with_capacity(size.min(1024));
    batch.push(first);
    while batch.len() < size {
        match queue.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(flume::TryRecvError::Disconnected) => break,
            Err(flume::TryRecvError::Empty) => {}
        }
        let wait_until = deadline.min(Instant::now() + SINK_IDLE_FLUSH);
        match tokio::time::timeout_at(wait_until, queue.recv_async()).await {
            Ok(Ok(job)) => batch.push(job),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use inorder::Event;
    use tokio::sync::oneshot;

    use super::{Job, next_batch};

    fn job() -> Job {
        let (reply, _) = oneshot::channel();
        Job { event: Event::builder("t", "k", "a").build().unwrap(), reply }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_gives_batches_of_batch_size() {
        let (tx, rx) = flume::bounded(2000);
        for _ in 0..1200 {
            tx.send(job()).unwrap();
        }
        let sizes: Vec<usize> = [
            next_batch(&rx, 500, Duration::from_secs(1)).await.unwrap().len(),
            next_batch(&rx, 500, Duration::from_secs(1)).await.unwrap().len(),
            next_batch(&rx, 500, Duration::from_secs(1)).await.unwrap().len(),
        ]
        .into();
        assert_eq!(sizes, [500, 500, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_written_by_its_timeout_even_while_rows_trickle_in() {
        let (tx, rx) = flume::bounded(100);
        tx.send(job()).unwrap();
        // A row every millisecond: never idle long enough for the idle flush (2 ms).
        let feeder = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if tx.send_async(job()).await.is_err() {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let batch = next_batch(&rx, 10_000, Duration::from_millis(50)).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited <= Duration::from_millis(52), "{waited:?}");
        assert!((45..=55).contains(&batch.len()), "{}", batch.len());
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_queue_flushes_at_once_and_a_closed_one_ends() {
        let (tx, rx) = flume::bounded(100);
        for _ in 0..3 {
            tx.send(job()).unwrap();
        }
        let started = tokio::time::Instant::now();
        assert_eq!(next_batch(&rx, 500, Duration::from_secs(10)).await.unwrap().len(), 3);
        assert!(started.elapsed() <= crate::limits::SINK_IDLE_FLUSH);
        drop(tx);
        assert!(next_batch(&rx, 500, Duration::from_secs(10)).await.is_none());
    }
}
