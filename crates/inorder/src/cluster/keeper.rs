//! The lease keeper and the mirror refresher of an engine in cluster mode.
//!
//! The keeper's round, every `lease_ttl / LEASE_RENEWALS_PER_TTL`:
//!
//! | step | what it does |
//! |---|---|
//! | heartbeat | says this node is alive and which subscriptions it runs; learns how many live nodes run each |
//! | renew | extends every lease it holds; a lease not renewed (taken over, expired) or past its local deadline is **lost**: its streams stop, mirrors take their place |
//! | balance | per subscription, its fair share is `ceil(partitions / live nodes running it)`: below it, take free or expired partitions; above it, stop those streams, settle their checkpoints, then release |
//! | forget | leases of subscriptions no longer running here are released |
//!
//! A failed round (the storage unreachable) is logged and counted; the next one tries again.
//! Leases that ran out meanwhile are lost at the next round, and no handler call of theirs
//! starts after their deadline anyway (see [`LeaseClock`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Weak},
    time::Instant,
};

use inorder_log::Name;

use crate::{
    cluster::{ClusterState, LeaseClock, Remote},
    engine::{Engine, EngineInner},
    error::Result,
    limits::{LEASE_RENEWALS_PER_TTL, MIRROR_REFRESH_MAX, MIRROR_REFRESH_MIN},
    runtime::SubscriptionRuntime,
    storage::{Coordination, Lease},
    stream::supervisor::checkpoints_settled,
};

impl Engine {
    /// In cluster mode: takes this node's share of partitions (one round, before returning),
    /// then starts the keeper and the mirror refresher.
    pub(crate) async fn start_cluster(&self) {
        let Some(cluster) = self.inner.cluster.clone() else { return };
        let mut known = BTreeSet::new();
        if let Err(error) = round(&self.inner, &cluster, &mut known).await {
            tracing::warn!(%error, "first lease round failed; retrying");
        }
        let keeper = tokio::spawn(keep(Arc::downgrade(&self.inner), Arc::clone(&cluster), known));
        let refresher = tokio::spawn(refresh(Arc::downgrade(&self.inner), Arc::clone(&cluster)));
        cluster.tasks.lock().extend([keeper, refresher]);
    }

    /// Stops the keeper (after the round it is in: every lease it took is then known and
    /// released at the end of the shutdown) and the refresher — first in a shutdown: no lease
    /// moves after.
    pub(crate) async fn stop_cluster_tasks(&self) {
        let Some(cluster) = &self.inner.cluster else { return };
        cluster.stopping.send_replace(true);
        let tasks = std::mem::take(&mut *cluster.tasks.lock());
        for mut task in tasks {
            // A round stuck on an unreachable storage does not hold the shutdown past a lease.
            if tokio::time::timeout(cluster.config.lease_ttl, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Releases every lease this node holds and leaves the live nodes (last in a shutdown,
    /// after the streams stopped): the others take the partitions at once, not after the TTL.
    pub(crate) async fn leave_cluster(&self) {
        let Some(cluster) = &self.inner.cluster else { return };
        let Some(coordination) = self.inner.storage.coordination() else { return };
        let held: Vec<Lease> =
            std::mem::take(&mut *cluster.leases.write()).values().map(|c| lease_of(c)).collect();
        let node = &cluster.config.node;
        if let Err(error) = coordination.release(node, &held).await {
            tracing::warn!(%error, "releasing leases at shutdown failed; they expire instead");
        }
        if let Err(error) = coordination.leave(node).await {
            tracing::warn!(%error, "leaving the cluster failed; the heartbeat expires instead");
        }
        tracing::info!(node, released = held.len(), "left the cluster");
    }
}

fn lease_of(clock: &LeaseClock) -> Lease {
    Lease {
        subscription: clock.fence.subscription.clone(),
        partition: clock.fence.partition,
        epoch: clock.fence.epoch,
    }
}

async fn keep(engine: Weak<EngineInner>, cluster: Arc<ClusterState>, mut known: BTreeSet<Name>) {
    let period = cluster.config.lease_ttl / LEASE_RENEWALS_PER_TTL;
    let mut stopping = cluster.stopping.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = engine.upgrade() else { return };
        if let Err(error) = round(&inner, &cluster, &mut known).await {
            tracing::warn!(%error, "lease round failed; retrying");
            metrics::counter!("inorder_lease_round_failures_total").increment(1);
        }
    }
}

/// One round of the keeper (see the module's table).
async fn round(
    inner: &EngineInner,
    cluster: &ClusterState,
    known: &mut BTreeSet<Name>,
) -> Result<()> {
    let Some(coordination) = inner.storage.coordination() else { return Ok(()) };
    let (node, ttl) = (cluster.config.node.as_str(), cluster.config.lease_ttl);
    let running: Vec<Name> = inner.subscriptions().into_iter().map(|s| s.name.clone()).collect();
    let sent = Instant::now();
    let runners = coordination.heartbeat(node, &running, ttl).await?;
    let renewed: BTreeMap<(Name, u16), u64> = coordination
        .renew(node, ttl)
        .await?
        .into_iter()
        .map(|l| ((l.subscription, l.partition), l.epoch))
        .collect();
    let subscriptions: BTreeMap<Name, Arc<SubscriptionRuntime>> =
        inner.subscriptions().into_iter().map(|s| (s.name.clone(), s)).collect();
    // Lost: not renewed with the epoch we hold, or past the local deadline.
    let lost: Vec<(Name, u16)> = {
        let leases = cluster.leases.read();
        leases
            .iter()
            .filter(|(key, clock)| {
                renewed.get(*key) != Some(&clock.fence.epoch) || !clock.is_valid()
            })
            .map(|(key, _)| key.clone())
            .collect()
    };
    for key in &lost {
        tracing::warn!(subscription = %key.0, partition = key.1, "partition lease lost");
        metrics::counter!("inorder_leases_lost_total").increment(1);
        cluster.leases.write().remove(key);
        if let Some(subscription) = subscriptions.get(&key.0) {
            restart_partition(inner, cluster, subscription, key.1).await;
        }
    }
    for (key, clock) in cluster.leases.read().iter() {
        if renewed.contains_key(key) {
            clock.extend(sent + ttl);
        }
    }
    // Held in the storage but not here (renewed just now, lost just before): give them back.
    let strays: Vec<Lease> = renewed
        .iter()
        .filter(|(key, _)| !cluster.leases.read().contains_key(*key))
        .map(|((subscription, partition), epoch)| Lease {
            subscription: subscription.clone(),
            partition: *partition,
            epoch: *epoch,
        })
        .collect();
    // And those of subscriptions that no longer run here.
    let gone: Vec<(Name, u16)> = cluster
        .leases
        .read()
        .keys()
        .filter(|(subscription, _)| !subscriptions.contains_key(subscription))
        .cloned()
        .collect();
    let mut release: Vec<Lease> = strays;
    for key in gone {
        if let Some(clock) = cluster.leases.write().remove(&key) {
            release.push(lease_of(&clock));
        }
    }
    for (name, subscription) in &subscriptions {
        // A fair share among the live nodes that run this subscription: a node that does not
        // (declared elsewhere only, or not yet synced) leaves its part to the others.
        let runners = runners.get(name.as_str()).copied().unwrap_or(1).max(1);
        let runners = u16::try_from(runners).unwrap_or(u16::MAX);
        let share = usize::from(cluster.config.partitions.div_ceil(runners));
        if !known.contains(name) {
            coordination.ensure_partitions(name, cluster.config.partitions).await?;
            known.insert(name.clone());
        }
        let mine: Vec<u16> = cluster
            .leases
            .read()
            .keys()
            .filter(|(s, _)| s == name)
            .map(|(_, partition)| *partition)
            .collect();
        if mine.len() < share {
            let sent = Instant::now();
            let taken = coordination.acquire(node, name, share - mine.len(), ttl).await?;
            for lease in taken {
                tracing::info!(subscription = %name, partition = lease.partition,
                    epoch = lease.epoch, "partition lease taken");
                let clock = LeaseClock::new(&lease, node, cluster.config.partitions, sent + ttl);
                cluster.leases.write().insert((name.clone(), lease.partition), Arc::new(clock));
                restart_partition(inner, cluster, subscription, lease.partition).await;
            }
        } else if mine.len() > share {
            let extra = &mine[share..];
            let mut given = Vec::new();
            for partition in extra {
                let removed = cluster.leases.write().remove(&(name.clone(), *partition));
                if let Some(clock) = removed {
                    restart_partition(inner, cluster, subscription, *partition).await;
                    given.push(lease_of(&clock));
                }
            }
            // What the stopped streams sent is durable before another node may start.
            checkpoints_settled(&inner.checkpointer).await?;
            tracing::info!(subscription = %name, count = given.len(), "partitions given up");
            release.extend(given);
        }
    }
    coordination.release(node, &release).await?;
    let most = runners.values().copied().max().unwrap_or(1);
    metrics::gauge!("inorder_cluster_nodes").set(most as f64);
    metrics::gauge!("inorder_leases_held").set(cluster.leases.read().len() as f64);
    Ok(())
}

/// Starts again the streams of `partition` of `subscription` on every topic it consumes: local
/// streams if the lease is held now, mirrors otherwise.
async fn restart_partition(
    inner: &EngineInner,
    cluster: &ClusterState,
    subscription: &Arc<SubscriptionRuntime>,
    partition: u16,
) {
    let _creating = inner.creating.lock().await;
    // The subscription may have been replaced meanwhile: start under the one running now.
    let Some(current) = inner.subscriptions.read().get(&subscription.name).cloned() else {
        return;
    };
    let topics: Vec<_> =
        inner.topics.read().values().filter(|t| current.consumes(&t.name)).cloned().collect();
    for topic in topics {
        inner.start_partition(cluster, &current, &topic, partition).await;
    }
}

/// Refreshes the mirrored progress: on every announced commit of partition progress (at most
/// every [`MIRROR_REFRESH_MIN`]) and at least every [`MIRROR_REFRESH_MAX`].
async fn refresh(engine: Weak<EngineInner>, cluster: Arc<ClusterState>) {
    let progress = match engine.upgrade() {
        Some(inner) => match inner.storage.coordination() {
            Some(coordination) => coordination.watch_progress().await,
            None => return,
        },
        None => return,
    };
    let mut progress = match progress {
        Ok(progress) => Some(progress),
        Err(error) => {
            tracing::warn!(%error, "no progress notifications; mirrors refresh every second");
            None
        }
    };
    let mut stopping = cluster.stopping.subscribe();
    loop {
        let changed = async {
            match progress.as_mut() {
                Some(progress) => progress.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(MIRROR_REFRESH_MAX, changed) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = engine.upgrade() else { return };
        if let Some(coordination) = inner.storage.coordination() {
            match read_remote(&inner, coordination).await {
                Ok(remote) => {
                    cluster.remote.send_replace(Arc::new(remote));
                }
                Err(error) => tracing::debug!(%error, "reading partition progress failed"),
            }
        }
        drop(inner);
        tokio::time::sleep(MIRROR_REFRESH_MIN).await;
    }
}

async fn read_remote(inner: &EngineInner, coordination: &dyn Coordination) -> Result<Remote> {
    let mut remote = Remote::new();
    for subscription in inner.subscriptions() {
        remote.extend(coordination.partition_states(&subscription.name).await?);
    }
    Ok(remote)
}
