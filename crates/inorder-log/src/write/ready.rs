//! [`ReadyQueue`]: the stages that have work, waiting for a pool thread — and the idle timers of
//! the logs whose stages the queue serves.
//!
//! **Bounds.** A stage is in a queue at most once (its [`Turn`](super::turn::Turn) sees to that)
//! and a log has at most one idle timer armed (its pipeline sees to that), so a queue holds at
//! most four entries per open log (three stages, one timer) — plus the timers of logs closed less
//! than their `idle_after` ago, which hold only a weak reference and are dropped when due.
//!
//! Due timers are handed out before ready stages: firing one is cheap, and under sustained load
//! an idle log must still get to close its files.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, VecDeque},
    sync::{Arc, Weak},
    time::Instant,
};

use parking_lot::{Condvar, Mutex};

/// The stages of one log's write path (see [`super::pipeline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Group, assign positions, write (and, under `always`, fsync each append).
    Write,
    /// One fsync for every written request, back to back.
    Sync,
    /// Answer the appenders of synced requests.
    Answer,
}

/// What a pool thread takes from a ready queue.
pub(crate) enum Job<T> {
    /// Run this stage of this log.
    Run(Arc<T>, Stage),
    /// This idle timer is due (its log may have closed since it was armed).
    Due(Weak<T>),
    /// The pool stops (only when it could not be started whole).
    Stop,
}

/// Stages with work and idle timers, served by a fixed set of threads.
pub(crate) struct ReadyQueue<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

struct State<T> {
    ready: VecDeque<(Arc<T>, Stage)>,
    timers: BinaryHeap<Timer<T>>,
    /// Arming order, so that timers due at the same instant fire in the order they were armed.
    armed: u64,
    stopped: bool,
}

struct Timer<T> {
    due: Instant,
    armed: u64,
    target: Weak<T>,
}

impl<T> PartialEq for Timer<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Timer<T> {}

impl<T> PartialOrd for Timer<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Timer<T> {
    /// Reversed, so that the max-heap yields the earliest timer first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.armed).cmp(&(self.due, self.armed))
    }
}

impl<T> ReadyQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                timers: BinaryHeap::new(),
                armed: 0,
                stopped: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Queues a stage that has work (its turn said so) and wakes a thread for it.
    pub(crate) fn push(&self, log: Arc<T>, stage: Stage) {
        self.state.lock().ready.push_back((log, stage));
        self.wake.notify_one();
    }

    /// Arms an idle timer: `target` is handed out as [`Job::Due`] once `due` has passed.
    pub(crate) fn arm(&self, due: Instant, target: Weak<T>) {
        let mut state = self.state.lock();
        let earliest = state.timers.peek().is_none_or(|first| due < first.due);
        state.armed += 1;
        let armed = state.armed;
        state.timers.push(Timer { due, armed, target });
        drop(state);
        if earliest {
            // A waiting thread may be sleeping until a later deadline.
            self.wake.notify_one();
        }
    }

    /// The next job, waiting for one.
    pub(crate) fn next(&self) -> Job<T> {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                return Job::Stop;
            }
            let now = Instant::now();
            if state.timers.peek().is_some_and(|first| first.due <= now)
                && let Some(timer) = state.timers.pop()
            {
                return Job::Due(timer.target);
            }
            if let Some((log, stage)) = state.ready.pop_front() {
                return Job::Run(log, stage);
            }
            match state.timers.peek().map(|first| first.due) {
                Some(due) => {
                    self.wake.wait_until(&mut state, due);
                }
                None => self.wake.wait(&mut state),
            }
        }
    }

    /// A running stage yields with work left (its turn queued it again): returns the stage the
    /// calling thread should run next — the first one waiting, or this one again if none is, so
    /// a busy log alone on the pool keeps its thread without a round trip through the queue.
    pub(crate) fn yield_to_next(&self, log: Arc<T>, stage: Stage) -> (Arc<T>, Stage) {
        let mut state = self.state.lock();
        match state.ready.pop_front() {
            Some(next) => {
                state.ready.push_back((log, stage));
                drop(state);
                // A thread may be idle: the yielding stage need not wait for this one.
                self.wake.notify_one();
                next
            }
            None => (log, stage),
        }
    }

    /// Makes every thread serving the queue return [`Job::Stop`].
    pub(crate) fn stop(&self) {
        self.state.lock().stopped = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(job: Job<u32>) -> Option<(u32, Stage)> {
        match job {
            Job::Run(log, stage) => Some((*log, stage)),
            Job::Due(_) | Job::Stop => None,
        }
    }

    #[test]
    fn ready_stages_come_out_in_order_and_a_yield_goes_to_the_back() {
        let queue = ReadyQueue::new();
        for (log, stage) in [(1, Stage::Write), (2, Stage::Sync), (3, Stage::Answer)] {
            queue.push(Arc::new(log), stage);
        }
        assert_eq!(run(queue.next()), Some((1, Stage::Write)));
        let (next, stage) = queue.yield_to_next(Arc::new(1), Stage::Write);
        assert_eq!((*next, stage), (2, Stage::Sync), "2 waited; 1 goes to the back");
        assert_eq!(run(queue.next()), Some((3, Stage::Answer)));
        assert_eq!(run(queue.next()), Some((1, Stage::Write)));
        let (next, _) = queue.yield_to_next(Arc::new(7), Stage::Sync);
        assert_eq!(*next, 7, "alone, a stage keeps its thread");
    }

    #[test]
    fn a_due_timer_comes_before_ready_stages_and_a_future_one_is_waited_for() {
        let queue = ReadyQueue::new();
        let target = Arc::new(9);
        let deadline = Instant::now() + Duration::from_millis(30);
        queue.arm(deadline, Arc::downgrade(&target));
        queue.push(Arc::new(1), Stage::Write);
        assert_eq!(run(queue.next()), Some((1, Stage::Write)), "the timer is not due yet");
        let Job::Due(due) = queue.next() else { panic!("expected the timer") };
        assert!(Instant::now() >= deadline, "handed out only once due");
        assert_eq!(due.upgrade().as_deref(), Some(&9));
    }

    #[test]
    fn stop_releases_waiting_threads() {
        let queue = Arc::new(ReadyQueue::<u32>::new());
        let waiter = std::thread::spawn({
            let queue = Arc::clone(&queue);
            move || matches!(queue.next(), Job::Stop)
        });
        queue.stop();
        assert!(waiter.join().unwrap_or(false));
    }
}
