//! The per-key sequencer: for the `actions` and `sequence` orderings, decides whether an event
//! is next (handle it now), early (hold it in the reorder buffer), or can never be handled in
//! order (park it, with the reason).
//!
//! Pure logic, no I/O: the key's worker feeds it events and reports what it handled. The Seqy
//! contract with the original's defects fixed:
//!
//! - per key, actions `a1, a2, …` are handled in that order, each once;
//! - an early event waits in a bounded buffer (one slot per action, so a full buffer can only be
//!   a misconfiguration); a full buffer parks with `buffer_full`, never a silent drop;
//! - a duplicate (already handled, or already waiting) parks with `duplicate`;
//! - after the last action the sequence is complete: a new event starts a new sequence only if
//!   the topic repeats, else it parks with `sequence_complete`;
//! - progress is durable (`Progress`), so after a restart the sequence resumes where it was.

use std::{collections::BTreeMap, sync::Arc};

use crate::{event::Event, limits::SEQUENCE_BUFFER_EVENTS_MAX, state::ParkReason, state::Progress};

/// What to do with an offered event.
#[derive(Debug)]
pub(crate) enum Offer {
    /// It is next: handle it.
    Ready(Box<Event>),
    /// It is early: the sequencer holds it.
    Buffered,
    /// It can never be handled in order.
    Park(Box<Event>, ParkReason, Option<String>),
}

/// How a topic orders a key's events.
#[derive(Debug, Clone)]
pub(crate) enum Contract {
    /// The topic's actions, by name → index; `repeat` after the last one.
    Actions { index: Arc<std::collections::HashMap<String, u32>>, count: u32, repeat: bool },
    /// Producer sequence numbers from 1.
    Sequence,
}

/// The ordering state of one key.
#[derive(Debug)]
pub(crate) struct Sequencer {
    contract: Contract,
    progress: Progress,
    /// Early events by slot (action index or sequence number).
    buffer: BTreeMap<u64, Box<Event>>,
}

impl Sequencer {
    /// A sequencer resuming at `progress` (the key's durable state).
    pub(crate) fn new(contract: Contract, progress: Progress) -> Self {
        let progress = match (&contract, progress) {
            (Contract::Actions { .. }, p @ Progress::Actions { .. }) => p,
            (Contract::Actions { .. }, _) => Progress::Actions { next: 0, completed: 0 },
            (Contract::Sequence, p @ Progress::Sequence { .. }) => p,
            (Contract::Sequence, _) => Progress::Sequence { next: 1 },
        };
        Self { contract, progress, buffer: BTreeMap::new() }
    }

    /// The key's progress (to store with each completion).
    pub(crate) fn progress(&self) -> Progress {
        self.progress
    }

    /// Early events waiting for a missing one.
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Offers a newly arrived event. Without `room` (the stream's reorder budget is spent) an
    /// early event is parked as `buffer_full` instead of waiting.
    pub(crate) fn offer(&mut self, event: Box<Event>, room: bool) -> Offer {
        let (slot, next) = match self.slot_of(&event) {
            Ok(slot) => slot,
            Err(reason) => return Offer::Park(event, ParkReason::Failed, Some(reason)),
        };
        if let Contract::Actions { count, repeat: false, .. } = self.contract
            && next == u64::from(count)
        {
            return Offer::Park(event, ParkReason::SequenceComplete, None);
        }
        if slot == next {
            return Offer::Ready(event);
        }
        if slot < next || self.buffer.contains_key(&slot) {
            return Offer::Park(event, ParkReason::Duplicate, None);
        }
        if !room || self.buffer.len() >= self.capacity() {
            return Offer::Park(event, ParkReason::BufferFull, None);
        }
        self.buffer.insert(slot, event);
        Offer::Buffered
    }

    /// Records that `event` (which was `Ready`) is done — handled, or parked and skipped.
    pub(crate) fn advance(&mut self, event: &Event) {
        let Ok((slot, next)) = self.slot_of(event) else {
            return;
        };
        assert_eq!(slot, next, "only the next event of a key is handled");
        self.skip_next();
    }

    /// Moves past the next slot (its event is done, or was discarded by an operator).
    pub(crate) fn skip_next(&mut self) {
        self.progress = match (&self.contract, self.progress) {
            (Contract::Actions { count, repeat, .. }, Progress::Actions { next, completed }) => {
                let next = next + 1;
                if next == *count && *repeat {
                    Progress::Actions { next: 0, completed: completed + 1 }
                } else {
                    Progress::Actions { next, completed: completed + u64::from(next == *count) }
                }
            }
            (Contract::Sequence, Progress::Sequence { next }) => {
                Progress::Sequence { next: next + 1 }
            }
            (_, other) => other,
        };
    }

    /// The buffered event that became next, if any.
    pub(crate) fn take_ready(&mut self) -> Option<Box<Event>> {
        let next = self.next_slot();
        self.buffer.remove(&next)
    }

    /// Takes every waiting event (their sequence timed out).
    pub(crate) fn drain(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.buffer).into_values().map(|event| *event).collect()
    }

    fn next_slot(&self) -> u64 {
        match self.progress {
            Progress::Actions { next, .. } => u64::from(next),
            Progress::Sequence { next } => next,
            Progress::None => 0,
        }
    }

    fn capacity(&self) -> usize {
        match &self.contract {
            Contract::Actions { count, .. } => usize::try_from(*count).unwrap_or(usize::MAX),
            Contract::Sequence => SEQUENCE_BUFFER_EVENTS_MAX,
        }
    }

    /// The event's slot and the next expected slot.
    fn slot_of(&self, event: &Event) -> Result<(u64, u64), String> {
        let slot = match &self.contract {
            Contract::Actions { index, .. } => {
                index.get(&event.action).map(|i| u64::from(*i)).ok_or_else(|| {
                    format!("action {:?} is not in the topic's actions", event.action)
                })?
            }
            Contract::Sequence => event
                .sequence
                .ok_or("the event has no sequence number, needed by sequence ordering")?,
        };
        Ok((slot, self.next_slot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIONS: [&str; 3] = ["user.created", "user.purchased", "user.paid"];

    fn actions(repeat: bool) -> Sequencer {
        let index =
            ACTIONS.iter().enumerate().map(|(i, a)| ((*a).to_owned(), u32::try_from(i).unwrap()));
        let contract = Contract::Actions { index: Arc::new(index.collect()), count: 3, repeat };
        Sequencer::new(contract, Progress::None)
    }

    fn event(action: &str, position: u64) -> Event {
        let mut event = Event::builder("t", "k", action).build().unwrap();
        event.position = position;
        event
    }

    /// Offers events, handling whatever becomes ready; returns the handled positions in order
    /// and the parked (position, reason) pairs.
    fn run(sequencer: &mut Sequencer, events: Vec<Event>) -> (Vec<u64>, Vec<(u64, ParkReason)>) {
        let (mut handled, mut parked) = (Vec::new(), Vec::new());
        for event in events {
            match sequencer.offer(Box::new(event), true) {
                Offer::Ready(mut ready) => loop {
                    sequencer.advance(&ready);
                    handled.push(ready.position);
                    match sequencer.take_ready() {
                        Some(next) => ready = next,
                        None => break,
                    }
                },
                Offer::Buffered => {}
                Offer::Park(event, reason, _) => parked.push((event.position, reason)),
            }
        }
        (handled, parked)
    }

    #[test]
    fn reverse_order_is_handled_in_action_order() {
        let mut sequencer = actions(false);
        let events =
            vec![event("user.paid", 1), event("user.purchased", 2), event("user.created", 3)];
        assert_eq!(run(&mut sequencer, events), (vec![3, 2, 1], vec![]));
        assert_eq!(sequencer.progress(), Progress::Actions { next: 3, completed: 1 });
    }

    #[test]
    fn duplicates_park_whether_handled_or_waiting() {
        let mut sequencer = actions(false);
        let events = vec![
            event("user.paid", 1),
            event("user.paid", 2),    // waiting already
            event("user.created", 3), // handled
            event("user.created", 4), // already handled
        ];
        let (handled, parked) = run(&mut sequencer, events);
        assert_eq!(handled, vec![3]);
        assert_eq!(parked, vec![(2, ParkReason::Duplicate), (4, ParkReason::Duplicate)]);
    }

    #[test]
    fn a_completed_sequence_parks_new_events_unless_the_topic_repeats() {
        let complete = || ACTIONS.iter().zip(1..).map(|(a, p)| event(a, p)).collect::<Vec<_>>();
        let mut once = actions(false);
        run(&mut once, complete());
        assert_eq!(
            run(&mut once, vec![event("user.created", 9)]).1,
            vec![(9, ParkReason::SequenceComplete)]
        );

        let mut repeating = actions(true);
        run(&mut repeating, complete());
        assert_eq!(run(&mut repeating, vec![event("user.created", 9)]).0, vec![9]);
        assert_eq!(repeating.progress(), Progress::Actions { next: 1, completed: 1 });
    }

    #[test]
    fn progress_survives_a_restart() {
        let mut before = actions(false);
        run(&mut before, vec![event("user.created", 1)]);
        let contract = before.contract.clone();
        let mut after = Sequencer::new(contract, before.progress());
        let (handled, parked) =
            run(&mut after, vec![event("user.paid", 3), event("user.purchased", 2)]);
        assert_eq!(
            (handled, parked),
            (vec![2, 3], vec![]),
            "resumes at the second action, not the first"
        );
    }

    #[test]
    fn an_unknown_action_parks_as_failed() {
        let mut sequencer = actions(false);
        let (_, parked) = run(&mut sequencer, vec![event("user.deleted", 1)]);
        assert_eq!(parked, vec![(1, ParkReason::Failed)]);
    }

    #[test]
    fn producer_sequences_wait_for_gaps_and_park_repeats() {
        let mut sequencer = Sequencer::new(Contract::Sequence, Progress::None);
        let numbered = |n: u64, position: u64| {
            let mut e = event("x", position);
            e.sequence = Some(n);
            e
        };
        let events = vec![numbered(2, 1), numbered(3, 2), numbered(1, 3), numbered(2, 4)];
        let (handled, parked) = run(&mut sequencer, events);
        assert_eq!(handled, vec![3, 1, 2]);
        assert_eq!(parked, vec![(4, ParkReason::Duplicate)]);
        let (_, parked) = run(&mut sequencer, vec![event("x", 5)]);
        assert_eq!(parked, vec![(5, ParkReason::Failed)], "no sequence number");
    }

    #[test]
    fn timeouts_drain_every_waiting_event() {
        let mut sequencer = actions(false);
        run(&mut sequencer, vec![event("user.paid", 1), event("user.purchased", 2)]);
        assert_eq!(sequencer.buffered(), 2);
        let drained: Vec<_> = sequencer.drain().into_iter().map(|e| e.position).collect();
        assert_eq!(drained, vec![2, 1]);
        assert_eq!(sequencer.buffered(), 0);
    }
}
