//! A stream's timers: retries after a handler's backoff, and keys' sequence timeouts.
//!
//! One [`DelayQueue`] owned by the stream task: timers never run code themselves, the stream
//! takes what expired in its loop. A key has at most one armed sequence-timeout timer (a set of
//! armed keys guards it), so a key that keeps waiting does not pile up timers. Every delay comes
//! from configuration or handlers, so every deadline is computed with saturating arithmetic and
//! clamped to [`TIMER_DELAY_MAX`] — input can delay a retry, never panic the stream.

use std::{collections::HashSet, time::Duration};

use tokio::time::Instant;
use tokio_util::time::DelayQueue;

use crate::{event::Event, limits::TIMER_DELAY_MAX};

/// What a timer does when it fires.
#[allow(clippy::large_enum_variant)] // transient, like `worker::Step`
pub(super) enum Timer {
    /// Call the handler again.
    Retry { book_key: String, event: Box<Event>, attempt: u32 },
    /// Check whether the key's waiting sequence timed out.
    Timeout { book_key: String },
}

/// The timers of one stream.
#[derive(Default)]
pub(super) struct Timers {
    queue: DelayQueue<Timer>,
    /// Keys with an armed sequence-timeout timer.
    timeouts_armed: HashSet<String>,
}

/// `at + delay`, saturating at [`TIMER_DELAY_MAX`] instead of overflowing.
pub(super) fn later(at: Instant, delay: Duration) -> Instant {
    let delay = delay.min(TIMER_DELAY_MAX);
    at.checked_add(delay).unwrap_or(at)
}

impl Timers {
    /// Calls the handler for `event` again after `delay`.
    pub(super) fn retry(
        &mut self,
        delay: Duration,
        book_key: String,
        event: Box<Event>,
        attempt: u32,
    ) {
        self.queue.insert(Timer::Retry { book_key, event, attempt }, delay.min(TIMER_DELAY_MAX));
    }

    /// Arms the sequence-timeout check of `book_key` at `deadline`, unless one is armed.
    pub(super) fn arm_timeout(&mut self, book_key: &str, deadline: Instant) {
        if self.timeouts_armed.insert(book_key.to_owned()) {
            let deadline = deadline.min(later(Instant::now(), TIMER_DELAY_MAX));
            self.queue.insert_at(Timer::Timeout { book_key: book_key.to_owned() }, deadline);
        }
    }

    /// The next timer that fires (pending while none is armed).
    pub(super) async fn next(&mut self) -> Timer {
        let expired = std::future::poll_fn(|cx| self.queue.poll_expired(cx)).await;
        match expired {
            Some(expired) => {
                let timer = expired.into_inner();
                if let Timer::Timeout { book_key } = &timer {
                    self.timeouts_armed.remove(book_key);
                }
                timer
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::MAX), later(now, TIMER_DELAY_MAX));
        assert!(later(now, Duration::from_secs(1)) > now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_has_one_armed_timeout_and_timers_fire_in_deadline_order() {
        let mut timers = Timers::default();
        let event = Event::builder("t", "k", "a").build().unwrap();
        timers.arm_timeout("k", later(Instant::now(), Duration::from_secs(2)));
        timers.arm_timeout("k", later(Instant::now(), Duration::from_secs(1)));
        timers.retry(Duration::MAX, "huge".into(), Box::new(event.clone()), 2);
        timers.retry(Duration::from_millis(1500), "k2".into(), Box::new(event), 2);
        assert!(
            matches!(timers.next().await, Timer::Retry { ref book_key, .. } if book_key == "k2")
        );
        assert!(matches!(timers.next().await, Timer::Timeout { ref book_key } if book_key == "k"));
        timers.arm_timeout("k", later(Instant::now(), Duration::from_secs(1)));
        assert!(matches!(timers.next().await, Timer::Timeout { .. }), "re-armed after firing");
        assert_eq!(timers.queue.len(), 1, "the huge retry is still armed, clamped, not panicking");
    }
}
