//! A lease as a node holds it: the fence its commits carry and its local deadline.

use std::time::Instant;

use crate::{
    cluster::partition::partition_of,
    error::Error,
    storage::{Fence, Lease},
};

/// One partition lease held by this node, shared by the partition's streams.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    /// What its commits are conditional on.
    pub fence: Fence,
    /// Partitions of the subscription (to place keys).
    pub partitions: u16,
    /// No handler call starts at or after it: the local clock read before the renewal (or the
    /// take) was sent, plus the lease's time to live.
    deadline: parking_lot::Mutex<Instant>,
}

impl LeaseClock {
    pub(crate) fn new(lease: &Lease, node: &str, partitions: u16, deadline: Instant) -> Self {
        let fence = Fence {
            subscription: lease.subscription.clone(),
            partition: lease.partition,
            node: node.to_owned(),
            epoch: lease.epoch,
        };
        Self { fence, partitions, deadline: parking_lot::Mutex::new(deadline) }
    }

    /// Moves the deadline on after a renewal (never back).
    pub(crate) fn extend(&self, deadline: Instant) {
        let mut current = self.deadline.lock();
        *current = (*current).max(deadline);
    }

    /// Whether handler calls may still start.
    pub(crate) fn is_valid(&self) -> bool {
        Instant::now() < *self.deadline.lock()
    }

    /// Whether `key` is in this lease's partition.
    pub(crate) fn owns(&self, key: &str) -> bool {
        partition_of(key, self.partitions) == self.fence.partition
    }

    /// The error of a partition this node no longer holds.
    pub(crate) fn lost(&self) -> Error {
        Error::Fenced {
            subscription: self.fence.subscription.to_string(),
            partition: self.fence.partition,
        }
    }
}
