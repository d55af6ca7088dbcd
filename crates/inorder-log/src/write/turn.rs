//! [`Turn`]: whose turn it is to run one stage of one log on the shared pool.
//!
//! A stage (the write, sync or answer stage of one log) is queued for the pool when it gets
//! work, and run by whichever pool thread takes it. The turn guarantees that a stage is **in a
//! ready queue at most once and runs on at most one thread at a time** — so a log's writes stay
//! single-threaded and its fsyncs stay in order — and that **no wake-up is lost**: work that
//! arrives while the stage runs makes it run again.
//!
//! ```text
//!            notify                start                 finish(more = false)
//!   Idle ──────────────► Queued ────────────► Running ──────────────────────────► Idle
//!                          ▲                    │  notify                          │
//!                          │                    ▼                                  │
//!                          └──── finish ─── Notified           (finish(more) ──► Queued)
//! ```
//!
//! Whoever makes work for a stage first publishes the work (a channel send, a push under a lock),
//! then calls [`Turn::notify`]; the stage, when it finds no more work, calls [`Turn::finish`].
//! Either the stage saw the work, or `finish` sees the notification and queues the stage again.

use std::sync::atomic::{AtomicU8, Ordering::SeqCst};

/// Not queued, not running.
const IDLE: u8 = 0;
/// In a ready queue (exactly once), waiting for a thread.
const QUEUED: u8 = 1;
/// A pool thread runs the stage.
const RUNNING: u8 = 2;
/// A pool thread runs the stage, and new work arrived since it started.
const NOTIFIED: u8 = 3;

/// The scheduling state of one stage of one log.
#[derive(Debug, Default)]
pub(crate) struct Turn(AtomicU8);

impl Turn {
    /// Records that the stage has new work. Returns `true` when the caller must put the stage in
    /// its ready queue (it was idle); otherwise it is queued or running already and will see the
    /// work.
    pub(crate) fn notify(&self) -> bool {
        let mut state = self.0.load(SeqCst);
        loop {
            let next = match state {
                IDLE => QUEUED,
                RUNNING => NOTIFIED,
                _ => return false,
            };
            match self.0.compare_exchange_weak(state, next, SeqCst, SeqCst) {
                Ok(_) => return next == QUEUED,
                Err(actual) => state = actual,
            }
        }
    }

    /// A pool thread took the stage out of its ready queue and runs it now.
    pub(crate) fn start(&self) {
        let previous = self.0.swap(RUNNING, SeqCst);
        assert_eq!(previous, QUEUED, "a stage runs only after it was queued, and only once");
    }

    /// The running thread is done with the stage for now; `more` if it stopped with work left
    /// (to let other logs run). Returns `true` when the caller must queue the stage again.
    pub(crate) fn finish(&self, more: bool) -> bool {
        if more {
            let previous = self.0.swap(QUEUED, SeqCst);
            assert!(matches!(previous, RUNNING | NOTIFIED), "finish only a running stage");
            return true;
        }
        match self.0.compare_exchange(RUNNING, IDLE, SeqCst, SeqCst) {
            Ok(_) => false,
            Err(actual) => {
                assert_eq!(actual, NOTIFIED, "finish only a running stage");
                // Only this thread moves the state out of NOTIFIED: a plain store is enough.
                self.0.store(QUEUED, SeqCst);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_notification_of_an_idle_stage_queues_it() {
        let turn = Turn::default();
        assert!(turn.notify());
        assert!(!turn.notify(), "already queued");
        turn.start();
        assert!(!turn.finish(false), "nothing arrived while it ran");
        assert!(turn.notify(), "idle again");
    }

    #[test]
    fn work_that_arrives_while_running_runs_the_stage_again() {
        let turn = Turn::default();
        assert!(turn.notify());
        turn.start();
        assert!(!turn.notify(), "a running stage is not queued twice");
        assert!(!turn.notify());
        assert!(turn.finish(false), "the notification is not lost");
        turn.start();
        assert!(!turn.finish(false));
    }

    #[test]
    fn a_stage_that_yields_is_queued_again_and_not_by_notifiers() {
        let turn = Turn::default();
        assert!(turn.notify());
        turn.start();
        assert!(turn.finish(true));
        assert!(!turn.notify(), "queued by its runner already");
        turn.start();
        assert!(!turn.finish(false));
    }

    #[test]
    fn concurrent_notifiers_queue_an_idle_stage_exactly_once() {
        for _ in 0..200 {
            let turn = Turn::default();
            let queued: usize = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| turn.notify())).collect();
                handles.into_iter().map(|h| usize::from(h.join().unwrap_or(false))).sum()
            });
            assert_eq!(queued, 1);
        }
    }
}
