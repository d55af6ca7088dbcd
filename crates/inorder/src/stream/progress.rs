//! A stream's progress: finished events recorded for the next checkpoint, the watermark, and
//! what happens once a checkpoint is durable (keys go on, waiters get outcomes, status is
//! published). Only the stream task calls these; see the parent module.

use std::collections::BTreeSet;

use tokio::sync::oneshot;

use super::{Done, Outcome, Stream, StreamStatus};
use crate::{
    checkpoint::CommitRequest,
    error::{Error, Result},
    state::StreamState,
    storage::StateOp,
};

#[derive(Default)]
pub(super) struct NextCheckpoint {
    pub(super) ops: Vec<StateOp>,
    keys: Vec<String>,
    outcomes: Vec<(String, Outcome)>,
    dirty: bool,
}

pub(super) struct InFlight {
    pub(super) done: oneshot::Receiver<Result<()>>,
    watermark: u64,
    max_time_micros: i64,
    keys: Vec<String>,
    outcomes: Vec<(String, Outcome)>,
}

impl Stream {
    /// Records finished events of a key for the next checkpoint; the key waits for it.
    pub(super) fn record(&mut self, book_key: &str, items: Vec<Done>, ops: Vec<StateOp>) {
        for op in &ops {
            match op {
                StateOp::Park(parked)
                    if items.iter().any(|d| d.fresh && d.position == parked.position) =>
                {
                    self.parked += 1;
                }
                StateOp::Unpark { .. } => self.parked = self.parked.saturating_sub(1),
                _ => {}
            }
        }
        for done in items {
            if done.fresh {
                self.pending.remove(&done.position);
                self.mark_done(done.position);
            }
            if matches!(done.outcome, Outcome::Handled(_)) {
                self.max_time_micros = self.max_time_micros.max(done.time_micros);
            }
            if self.waiters.any() {
                self.next.outcomes.push((done.event_id, done.outcome));
            }
        }
        self.next.ops.extend(ops);
        self.next.keys.push(book_key.to_owned());
        self.next.dirty = true;
    }

    pub(super) fn mark_done(&mut self, position: u64) {
        if position <= self.watermark {
            return;
        }
        self.done_above.insert(position);
        while self.done_above.first() == Some(&(self.watermark + 1)) {
            self.done_above.pop_first();
            self.watermark += 1;
            self.next.dirty = true;
        }
    }

    /// Sends the next checkpoint if none is in flight and there is something to make durable.
    pub(super) async fn checkpoint(&mut self) {
        if self.in_flight.is_some() || !self.next.dirty {
            return;
        }
        let next = std::mem::take(&mut self.next);
        let mut ops = next.ops;
        ops.push(StateOp::Stream {
            stream: self.ctx.id.clone(),
            state: StreamState {
                watermark: self.watermark,
                done_above: ranges(&self.done_above),
                max_time_micros: self.max_time_micros,
            },
        });
        let (done, is_done) = oneshot::channel();
        if self.checkpointer.send(CommitRequest { ops, done }).await.is_err() {
            return; // the engine is stopping
        }
        self.in_flight = Some(InFlight {
            done: is_done,
            watermark: self.watermark,
            max_time_micros: self.max_time_micros,
            keys: next.keys,
            outcomes: next.outcomes,
        });
    }

    /// A checkpoint is durable: its keys go on, waiters get their outcomes, status is published.
    pub(super) async fn on_committed(&mut self, result: Result<()>) -> Result<()> {
        let in_flight = self.in_flight.take().expect("a checkpoint was in flight");
        result?;
        for key in &in_flight.keys {
            if let Some(worker) = self.processbook.get_mut(key) {
                worker.busy = false;
            }
        }
        for key in &in_flight.keys {
            self.drive(key).await?;
        }
        if self.waiters.any() {
            for (id, outcome) in &in_flight.outcomes {
                self.waiters.deliver(&self.ctx.id.subscription, id, outcome);
            }
        }
        self.commits += 1;
        let status = StreamStatus {
            watermark: in_flight.watermark,
            max_time_micros: in_flight.max_time_micros,
            commits: self.commits,
            read_position: self.read_position,
            pending: self.pending.len(),
            live_workers: self.processbook.len(),
            parked: self.parked,
        };
        self.status.send_replace(status);
        let labels = [
            ("subscription", self.ctx.id.subscription.to_string()),
            ("topic", self.ctx.id.topic.to_string()),
        ];
        metrics::gauge!("inorder_live_workers", &labels).set(status.live_workers as f64);
        metrics::gauge!("inorder_watermark", &labels).set(status.watermark as f64);
        Ok(())
    }
}

pub(super) async fn wait(in_flight: &mut Option<InFlight>) -> Result<()> {
    match in_flight {
        Some(in_flight) => (&mut in_flight.done).await.unwrap_or(Err(Error::Stopped)),
        None => std::future::pending().await,
    }
}

/// Compresses a set of positions into inclusive ranges.
fn ranges(positions: &BTreeSet<u64>) -> Vec<std::ops::RangeInclusive<u64>> {
    let mut ranges: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
    for &position in positions {
        match ranges.last_mut() {
            Some(last) if *last.end() + 1 == position => *last = *last.start()..=position,
            _ => ranges.push(position..=position),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_compress_into_ranges() {
        let set: BTreeSet<u64> = [3, 4, 5, 9, 11, 12].into_iter().collect();
        assert_eq!(ranges(&set), vec![3..=5, 9..=9, 11..=12]);
        assert!(ranges(&BTreeSet::new()).is_empty());
    }
}
