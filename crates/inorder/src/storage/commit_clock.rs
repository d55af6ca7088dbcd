//! The file storage's commit position: one node-wide number per event, across all topics.
//!
//! **Issuing.** An append takes its topic's turn, is issued the next `n` commits, and queues
//! its records to the topic's log ([`inorder_log::Log::submit`]) before giving the turn up, so
//! within a topic commits grow with positions. Commits are reserved durably in blocks of
//! [`COMMIT_RESERVE_BLOCK`] (a meta entry of the state journal): after any crash the clock
//! continues above the last reserved block, so a number is never issued twice, whatever the
//! logs lost.
//!
//! **Visibility.** Appends of different topics become durable in any order, so a reader must
//! not see commit `N + 1` while `N` may still come. The clock keeps the issued commits not yet
//! settled; the *visible* commit is the one below the lowest of them (or the last issued). An
//! append settles its commits when it is durable, or when it failed before its records were
//! queued (they can never appear). An append that failed *after* queueing (its log latched)
//! never settles: whether its records reached the disk is known only at the next open, so the
//! visible commit stops there until a restart — readers across topics wait rather than skip.
//!
//! At open, everything of earlier runs is settled: the visible commit is the reserved mark.
//!
//! Metrics: `inorder_commit_visible` (gauge), `inorder_commit_stalls_total` (appends that failed
//! after queueing, each stopping visibility until a restart).

use std::{collections::BTreeMap, ops::RangeInclusive, sync::Arc};

use inorder_log::Appending;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{error::Result, limits::COMMIT_RESERVE_BLOCK};

// `Issued::durable` awaits the `Appending` in place, so that it stays in the `Issued` when the
// waiting future is dropped.
const _: fn() = || {
    fn unpin<T: Unpin>() {}
    unpin::<Appending>();
};

/// Issues commit positions and tracks the visible one (see the module docs).
#[derive(Debug)]
pub(crate) struct CommitClock {
    inner: Mutex<Inner>,
    visible: watch::Sender<u64>,
    /// Serialises the durable reservations of new blocks.
    reserving: tokio::sync::Mutex<()>,
    /// `inorder_commit_visible`, registered once (set on every raise: no lookup per append).
    visible_gauge: metrics::Gauge,
}

#[derive(Debug)]
struct Inner {
    /// The next commit to issue.
    next: u64,
    /// The highest commit durably reserved.
    reserved: u64,
    /// Issued, not yet settled: first → last.
    unsettled: BTreeMap<u64, u64>,
}

impl CommitClock {
    /// A clock continuing after `reserved`, the mark an earlier run reserved up to (0 if none).
    pub(crate) fn new(reserved: u64) -> Self {
        Self {
            inner: Mutex::new(Inner { next: reserved + 1, reserved, unsettled: BTreeMap::new() }),
            visible: watch::Sender::new(reserved),
            reserving: tokio::sync::Mutex::new(()),
            visible_gauge: metrics::gauge!("inorder_commit_visible"),
        }
    }

    /// The highest commit below which every issued commit is settled.
    pub(crate) fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// A watch of the visible commit.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// Issues `n` (at least 1) commits, reserving a new block first when the current one is
    /// used up; `reserve` makes a mark durable. The caller settles them ([`Issued`]).
    pub(crate) async fn issue<F, Fut>(self: &Arc<Self>, n: u64, reserve: F) -> Result<Issued>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        loop {
            if let Some(range) = self.try_issue(n) {
                return Ok(Issued::new(self, range));
            }
            let _reserving = self.reserving.lock().await;
            if let Some(range) = self.try_issue(n) {
                return Ok(Issued::new(self, range));
            }
            let mark = {
                let inner = self.inner.lock();
                inner.next.saturating_add(n).saturating_add(COMMIT_RESERVE_BLOCK)
            };
            reserve(mark).await?;
            let mut inner = self.inner.lock();
            inner.reserved = inner.reserved.max(mark);
        }
    }

    fn try_issue(&self, n: u64) -> Option<RangeInclusive<u64>> {
        let mut inner = self.inner.lock();
        let last = inner.next.checked_add(n.max(1) - 1)?;
        if last > inner.reserved {
            return None;
        }
        let first = inner.next;
        inner.next = last + 1;
        inner.unsettled.insert(first, last);
        Some(first..=last)
    }

    fn settle(&self, first: u64) {
        let visible = {
            let mut inner = self.inner.lock();
            inner.unsettled.remove(&first);
            inner.unsettled.keys().next().map_or(inner.next - 1, |lowest| lowest - 1)
        };
        let raised = self.visible.send_if_modified(|current| {
            let raised = visible > *current;
            if raised {
                *current = visible;
            }
            raised
        });
        if raised {
            #[allow(clippy::cast_precision_loss)] // a gauge: precision past 2^53 is not needed
            self.visible_gauge.set(visible as f64);
        }
    }
}

/// Commits issued to one append. Settled by [`Issued::durable`]; dropped before its records were
/// queued, it settles (they will never appear); dropped while they are queued, it settles when
/// their append finishes.
#[derive(Debug)]
pub(crate) struct Issued {
    clock: Arc<CommitClock>,
    range: RangeInclusive<u64>,
    queued: Option<Appending>,
    settled: bool,
}

impl Issued {
    fn new(clock: &Arc<CommitClock>, range: RangeInclusive<u64>) -> Self {
        Self { clock: Arc::clone(clock), range, queued: None, settled: false }
    }

    /// The commits issued.
    pub(crate) fn range(&self) -> RangeInclusive<u64> {
        self.range.clone()
    }

    /// The records carrying these commits are queued to the log.
    pub(crate) fn queued(&mut self, appending: Appending) {
        self.queued = Some(appending);
    }

    /// Waits for the queued append; settles the commits if it is durable. A failed append
    /// leaves them unsettled (see the module docs). Dropped while waiting, the commits settle
    /// when the append finishes.
    pub(crate) async fn durable(mut self) -> inorder_log::Result<RangeInclusive<u64>> {
        let Some(appending) = self.queued.as_mut() else {
            return Err(inorder_log::Error::Closed);
        };
        let result = appending.await;
        self.queued = None;
        self.finish(result.is_ok());
        result
    }

    fn finish(&mut self, durable: bool) {
        self.settled = true;
        if durable {
            self.clock.settle(*self.range.start());
        } else {
            metrics::counter!("inorder_commit_stalls_total").increment(1);
            tracing::error!(
                commits = ?self.range,
                "an append failed after its records were queued: commit positions stop being \
                 visible here until a restart tells whether they reached the disk"
            );
        }
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        match self.queued.take() {
            None => self.clock.settle(*self.range.start()),
            Some(appending) => {
                // The caller went away; the append goes on: settle when it is done.
                let mut rest = Self {
                    clock: Arc::clone(&self.clock),
                    range: self.range.clone(),
                    queued: None,
                    settled: false,
                };
                self.settled = true;
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            let durable = appending.await.is_ok();
                            rest.finish(durable);
                        });
                    }
                    Err(_) => rest.finish(false),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(reserved: u64) -> Arc<CommitClock> {
        Arc::new(CommitClock::new(reserved))
    }

    async fn issue(clock: &Arc<CommitClock>, n: u64) -> Issued {
        clock.issue(n, |_| async { Ok(()) }).await.unwrap()
    }

    #[tokio::test]
    async fn the_visible_commit_is_below_the_lowest_unsettled_one() {
        let clock = clock(0);
        let mut a = issue(&clock, 2).await;
        let mut b = issue(&clock, 1).await;
        let mut c = issue(&clock, 3).await;
        assert_eq!((a.range(), b.range(), c.range()), (1..=2, 3..=3, 4..=6));
        assert_eq!(clock.visible(), 0);
        c.settled = true;
        clock.settle(4);
        assert_eq!(clock.visible(), 0, "1..=3 may still come");
        a.settled = true;
        clock.settle(1);
        assert_eq!(clock.visible(), 2);
        b.settled = true;
        clock.settle(3);
        assert_eq!(clock.visible(), 6);
    }

    #[tokio::test]
    async fn commits_dropped_before_they_were_queued_settle() {
        let clock = clock(0);
        let first = issue(&clock, 1).await;
        let second = issue(&clock, 1).await;
        drop(first);
        assert_eq!(clock.visible(), 1);
        drop(second);
        assert_eq!(clock.visible(), 2);
    }

    #[tokio::test]
    async fn a_clock_continues_above_what_an_earlier_run_reserved() {
        let clock = clock(5_000_000);
        assert_eq!(clock.visible(), 5_000_000, "everything of earlier runs is settled");
        let marks = Arc::new(Mutex::new(Vec::new()));
        let reserve = |mark| {
            let marks = Arc::clone(&marks);
            async move {
                marks.lock().push(mark);
                Ok(())
            }
        };
        let issued = clock.issue(10, reserve).await.unwrap();
        assert_eq!(issued.range(), 5_000_001..=5_000_010);
        assert_eq!(*marks.lock(), [5_000_001 + 10 + COMMIT_RESERVE_BLOCK]);
        let next = clock.issue(1, |_| async { panic!("the block has room") }).await.unwrap();
        assert_eq!(next.range(), 5_000_011..=5_000_011);
    }

    proptest::proptest! {
        /// Whatever the order appends finish in, the visible commit is the one below the lowest
        /// unsettled commit (or the last issued), and it never goes back.
        #[test]
        fn the_visible_commit_never_passes_an_unsettled_one(
            ops in proptest::collection::vec((1u64..5, proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<bool>()), 1..60),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let clock = clock(0);
                let mut open: Vec<Issued> = Vec::new();
                let mut last_visible = 0;
                for (n, pick, settle) in ops {
                    if settle && !open.is_empty() {
                        drop(open.swap_remove(pick.index(open.len())));
                    } else {
                        open.push(issue(&clock, n).await);
                    }
                    let lowest = open.iter().map(|i| *i.range().start()).min();
                    let issued = clock.inner.lock().next - 1;
                    let expected = lowest.map_or(issued, |lowest| lowest - 1);
                    assert_eq!(clock.visible(), expected);
                    assert!(clock.visible() >= last_visible, "the visible commit went back");
                    last_visible = clock.visible();
                }
            });
        }
    }

    #[tokio::test]
    async fn a_failed_reservation_issues_nothing() {
        let clock = clock(0);
        let refused = clock
            .issue(1, |_| async { Err(crate::StorageError::unavailable("disk full").into()) })
            .await;
        assert!(refused.is_err());
        assert_eq!(issue(&clock, 1).await.range(), 1..=1, "nothing was used up");
    }
}
