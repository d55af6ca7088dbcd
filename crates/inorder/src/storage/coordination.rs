//! What nodes sharing one storage coordinate through: partition leases with fencing tokens,
//! node heartbeats, and the progress of partitions other nodes hold.
//!
//! A lease is a row per (subscription, partition): its owner, an **epoch** raised by every
//! takeover (the fencing token), and an expiry in the storage's clock. A node renews what it
//! holds well before the expiry; a node that stops renewing loses its partitions to whoever takes
//! them after the expiry. Every state change a node commits for a partition carries a
//! [`Fence`] (owner and epoch): the storage checks it inside the same transaction and refuses the
//! whole commit once the epoch moved on, so a node that lost its lease — paused, partitioned,
//! slow — can never overwrite what the new owner does.

use std::{collections::BTreeMap, time::Duration};

use inorder_log::Name;
use tokio::sync::watch;

use crate::{
    error::Result,
    state::{StreamId, StreamState},
};

/// The lease a commit is conditional on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fence {
    /// The subscription.
    pub subscription: Name,
    /// The partition of its keys.
    pub partition: u16,
    /// The node that holds it.
    pub node: String,
    /// The epoch it was taken with.
    pub epoch: u64,
}

/// A partition lease a node holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// The subscription.
    pub subscription: Name,
    /// The partition of its keys.
    pub partition: u16,
    /// The epoch (fencing token) it was taken with.
    pub epoch: u64,
}

/// Leases, heartbeats and shared progress, kept by a storage several nodes share.
#[async_trait::async_trait]
pub trait Coordination: Send + Sync {
    /// Says `node` is alive for `ttl` more, running `subscriptions`; returns, per subscription
    /// some live node runs, how many live nodes run it (this one included).
    async fn heartbeat(
        &self,
        node: &str,
        subscriptions: &[Name],
        ttl: Duration,
    ) -> Result<BTreeMap<String, usize>>;
    /// Takes `node` out of the live nodes (on shutdown, after it released its leases).
    async fn leave(&self, node: &str) -> Result<()>;
    /// Makes sure `subscription` has lease rows for `partitions` partitions;
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if it was split into another number.
    async fn ensure_partitions(&self, subscription: &Name, partitions: u16) -> Result<()>;
    /// Extends every lease `node` holds by `ttl`; returns those it still holds.
    async fn renew(&self, node: &str, ttl: Duration) -> Result<Vec<Lease>>;
    /// Takes up to `max` partitions of `subscription` that no node holds (never taken, released,
    /// or expired), each with a new epoch.
    async fn acquire(
        &self,
        node: &str,
        subscription: &Name,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<Lease>>;
    /// Gives leases up, at once (their streams have stopped and their checkpoints are done).
    async fn release(&self, node: &str, leases: &[Lease]) -> Result<()>;
    /// The holder of each partition of `subscription` whose lease has not expired.
    async fn holders(&self, subscription: &Name) -> Result<Vec<(u16, String)>>;
    /// The stored progress of every partition stream of `subscription`.
    async fn partition_states(&self, subscription: &Name) -> Result<Vec<(StreamId, StreamState)>>;
    /// Changes whenever some node commits progress of a partition.
    async fn watch_progress(&self) -> Result<watch::Receiver<u64>>;
}
