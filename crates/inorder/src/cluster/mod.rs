//! Cluster mode: several engines (nodes) on one shared storage split every subscription's keys
//! between them, each key handled by one node at a time, through leases with fencing tokens.
//!
//! **Partitions.** A subscription's keys hash ([`partition_of`], stable across versions and
//! processes) into `partitions` partitions. A partition on a topic is a stream of its own: it
//! reads the whole topic, hands the events of its keys to the handler in order, and resolves the
//! others at once without a call. Its progress is stored per partition; key states and parked
//! events are stored per subscription and topic as ever (a key is in one partition).
//!
//! **Leases.** Each (subscription, partition) has a lease row in the storage: owner, epoch and
//! expiry in the storage's clock. A node's [keeper](keeper) renews what it holds every
//! `lease_ttl / 3`, takes free or expired partitions up to its fair share (`ceil(partitions /
//! live nodes running the subscription)`: heartbeats say what each node runs), gives up what is over it (after stopping those streams and settling their
//! checkpoints), and releases everything on shutdown. A node that dies keeps its partitions
//! until their leases expire; the others take them then and go on from the last durable
//! checkpoint: at-least-once at the takeover, as after a crash.
//!
//! **Fencing.** Every commit of a partition's stream carries a [`Fence`](crate::storage::Fence)
//! (node and epoch); the storage checks it in the commit's own transaction, so once another node
//! took the partition the old owner can store nothing more ([`Error::Fenced`](crate::Error)).
//! And a node starts no handler call of a partition past its lease's local deadline, taken from
//! its own clock *before* the renewal was sent: earlier than the storage's expiry, after which
//! alone another node can take the partition. So two nodes never start calls of one key at once
//! (a call that began before the deadline may still be running past it if its node stalled —
//! documented in the README).
//!
//! **Status across nodes.** Partitions held elsewhere are [mirrored](mirror): their stored
//! progress, refreshed when any node commits partition progress (the storage's notification) and
//! at least every [`MIRROR_REFRESH_MAX`](crate::limits::MIRROR_REFRESH_MAX), stands in the
//! engine's streams with health `remote`. Status, waits and retention read them like local ones.

mod keeper;
mod lease;
mod mirror;
mod partition;

use std::{collections::BTreeMap, sync::Arc};

use inorder_log::Name;
use tokio::sync::watch;

pub use self::partition::partition_of;
pub(crate) use self::{
    lease::LeaseClock,
    mirror::{Remote, spawn as spawn_mirror},
};
use crate::config::ClusterConfig;

/// What an engine in cluster mode keeps.
pub(crate) struct ClusterState {
    pub config: ClusterConfig,
    /// The leases this node holds, by subscription and partition.
    pub leases: parking_lot::RwLock<BTreeMap<(Name, u16), Arc<LeaseClock>>>,
    /// The progress other nodes committed, refreshed by the mirror refresher.
    pub remote: watch::Sender<Arc<Remote>>,
    /// The keeper and the refresher.
    pub tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set at shutdown: the keeper finishes its round (a lease taken is then known, and
    /// released) and stops.
    pub stopping: watch::Sender<bool>,
}

impl ClusterState {
    pub(crate) fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            leases: parking_lot::RwLock::default(),
            remote: watch::channel(Arc::default()).0,
            tasks: parking_lot::Mutex::default(),
            stopping: watch::channel(false).0,
        }
    }

    /// The lease this node holds on `partition` of `subscription`, if any.
    pub(crate) fn lease(&self, subscription: &Name, partition: u16) -> Option<Arc<LeaseClock>> {
        self.leases.read().get(&(subscription.clone(), partition)).cloned()
    }
}
