//! The registry of live aggregates: each aggregate a bus has loaded stays in memory, behind its
//! own lock, until it has been idle for a while.
//!
//! One lock per aggregate serialises the commands of one bus on one aggregate (no self-inflicted
//! conflicts), while different aggregates run in parallel. An entry is evicted when unused for
//! the idle timeout, and the least recently used idle entries go first when the registry holds
//! more than its capacity; an entry a command is using is never evicted. Eviction only costs a
//! reload (snapshot + later events) on the next command.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{
    limits::{EVICT_SLACK_DIVISOR, SWEEP_INTERVAL_MIN, SWEEPS_PER_IDLE_TIMEOUT},
    store::Loaded,
};

/// One live aggregate: `None` until loaded (or after a failure made its state uncertain).
pub(crate) struct Slot<A> {
    pub(crate) state: tokio::sync::Mutex<Option<Loaded<A>>>,
    last_used: Mutex<Instant>,
}

pub(crate) struct Registry<A> {
    live: Mutex<HashMap<String, Arc<Slot<A>>>>,
    idle_timeout: Duration,
    capacity: usize,
}

impl<A: Send + 'static> Registry<A> {
    /// A registry; with a tokio runtime around, a sweeper evicts idle entries until the
    /// registry is dropped.
    pub(crate) fn new(idle_timeout: Duration, capacity: usize) -> Arc<Self> {
        let registry = Arc::new(Self { live: Mutex::new(HashMap::new()), idle_timeout, capacity });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&registry), idle_timeout));
        }
        registry
    }

    /// The slot of `id`, created empty if it is not live.
    pub(crate) fn get(&self, id: &str) -> Arc<Slot<A>> {
        let mut live = self.live.lock();
        let slot = Arc::clone(live.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(Slot {
                state: tokio::sync::Mutex::new(None),
                last_used: Mutex::new(Instant::now()),
            })
        }));
        *slot.last_used.lock() = Instant::now();
        let excess = live.len().saturating_sub(self.capacity);
        if excess > 0 {
            // Evicting some slack beyond the excess keeps the sort off most calls at capacity.
            Self::evict_lru(&mut live, excess + self.capacity / EVICT_SLACK_DIVISOR);
        }
        slot
    }

    /// How many aggregates are live.
    pub(crate) fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// Evicts the entries idle for the idle timeout; returns how many.
    pub(crate) fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let mut live = self.live.lock();
        let before = live.len();
        live.retain(|_, slot| in_use(slot) || idle_since(slot) + self.idle_timeout > now);
        before - live.len()
    }

    fn evict_lru(live: &mut HashMap<String, Arc<Slot<A>>>, count: usize) {
        let mut idle: Vec<(Instant, String)> = live
            .iter()
            .filter(|(_, slot)| !in_use(slot))
            .map(|(id, slot)| (idle_since(slot), id.clone()))
            .collect();
        idle.sort_unstable();
        for (_, id) in idle.into_iter().take(count) {
            live.remove(&id);
        }
    }
}

/// Held by a command (the map's reference is the only other one).
fn in_use<A>(slot: &Arc<Slot<A>>) -> bool {
    Arc::strong_count(slot) > 1
}

fn idle_since<A>(slot: &Slot<A>) -> Instant {
    *slot.last_used.lock()
}

async fn sweep<A: Send + 'static>(registry: Weak<Registry<A>>, idle_timeout: Duration) {
    let every = (idle_timeout / SWEEPS_PER_IDLE_TIMEOUT).max(SWEEP_INTERVAL_MIN);
    loop {
        tokio::time::sleep(every).await;
        let Some(registry) = registry.upgrade() else { return };
        let evicted = registry.evict_idle();
        if evicted > 0 {
            tracing::debug!(evicted, "evicted idle aggregates");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_entries_go_and_busy_ones_stay() {
        let registry: Arc<Registry<u32>> = Registry::new(Duration::from_secs(3600), 10);
        let _busy = registry.get("busy");
        drop(registry.get("idle"));
        assert_eq!(registry.len(), 2);
        let registry = Registry::<u32>::new(Duration::ZERO, 10);
        let busy = registry.get("busy");
        drop(registry.get("idle"));
        assert_eq!(registry.evict_idle(), 1, "only the idle one");
        assert_eq!(registry.len(), 1);
        drop(busy);
        assert_eq!(registry.evict_idle(), 1);
    }

    #[tokio::test]
    async fn over_capacity_the_least_recently_used_idle_entry_goes() {
        let registry: Arc<Registry<u32>> = Registry::new(Duration::from_secs(3600), 2);
        drop(registry.get("a"));
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(registry.get("b"));
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(registry.get("a")); // a is now the most recent
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(registry.get("c"));
        let live = registry.live.lock();
        let mut ids: Vec<_> = live.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
    }
}
