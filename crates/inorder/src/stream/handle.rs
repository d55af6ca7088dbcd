//! What the engine sees of a running stream: its status (published after every durable
//! checkpoint and on every change of health), its inbox for operator commands, its task.

use std::{ops::RangeInclusive, sync::Arc};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::error::Result;

/// Operator commands to a stream.
#[derive(Debug)]
pub(crate) enum StreamMsg {
    /// Retry a parked event.
    Retry { position: u64, reply: oneshot::Sender<Result<()>> },
    /// Discard a parked event.
    Discard { position: u64, reply: oneshot::Sender<Result<()>> },
}

/// Whether a stream runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StreamHealth {
    /// It reads and handles events.
    #[default]
    Running,
    /// It failed transiently (its storage did) and is started again with backoff.
    Retrying {
        /// Restarts since it last made progress.
        restarts: u32,
        /// The last failure.
        error: Arc<str>,
    },
    /// It cannot go on (corrupt or unavailable storage, a gap in the log, repeated panics) and
    /// handles nothing until an operator repairs and restarts the engine.
    Failed {
        /// Why.
        error: Arc<str>,
    },
    /// Cluster mode: another node holds this partition; the status shown is the progress it
    /// committed, mirrored from the storage.
    Remote,
}

impl StreamHealth {
    /// `running`, `retrying`, `failed` or `remote`, as written in APIs.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Retrying { .. } => "retrying",
            Self::Failed { .. } => "failed",
            Self::Remote => "remote",
        }
    }

    /// The last error, unless it runs.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Running | Self::Remote => None,
            Self::Retrying { error, .. } | Self::Failed { error } => Some(error),
        }
    }
}

/// A stream's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStatus {
    /// Every position at or below it is resolved (handled or parked), durably.
    pub watermark: u64,
    /// The latest event time handled at or below the watermark (microseconds): the topic's
    /// time mark for entity status.
    pub max_time_micros: i64,
    /// Checkpoints so far (changes on every checkpoint; status waiters re-check on it).
    pub commits: u64,
    /// The next position the stream will read.
    pub read_position: u64,
    /// Events read whose resolution is not yet durable.
    pub pending: usize,
    /// Keys with a live worker.
    pub live_workers: usize,
    /// Parked events waiting for an operator.
    pub parked: u64,
    /// Parked events an operator discarded.
    pub discarded: u64,
    /// Positions resolved above the watermark, durably, as ascending ranges: the holes between
    /// them are events still waiting (e.g. a key waiting for a missing action), and there are
    /// never more ranges than such events.
    pub done_above: Arc<[RangeInclusive<u64>]>,
    /// Whether it runs.
    pub health: StreamHealth,
}

impl StreamStatus {
    /// Whether `position` is resolved (handled or parked), durably.
    #[must_use]
    pub fn resolves(&self, position: u64) -> bool {
        if position <= self.watermark {
            return true;
        }
        let after = self.done_above.partition_point(|range| *range.start() <= position);
        after > 0 && self.done_above[after - 1].contains(&position)
    }

    /// Whether an event at `position` may be parked in this stream (else no need to look).
    pub(crate) fn may_have_parked(&self) -> bool {
        // A mirror of another node's partition does not know its parked count.
        self.parked > 0 || self.discarded > 0 || self.health == StreamHealth::Remote
    }
}

/// The engine's handle on a running stream.
pub(crate) struct StreamHandle {
    pub inbox: mpsc::Sender<StreamMsg>,
    pub status: watch::Receiver<StreamStatus>,
    pub task: JoinHandle<()>,
}
