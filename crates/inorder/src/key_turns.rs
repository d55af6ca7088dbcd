//! Per-key commit order across the topics of a `fifo` subscription.
//!
//! A subscription over several topics runs one stream per topic; each stream orders a key's
//! events within its topic by position. Across topics the order is the **commit position**:
//! an event of key `k` from topic `t` may start only when no event of `k` with a lower commit,
//! in any topic of the subscription, is still unresolved — including events another stream has
//! not read yet. Two facts decide that, kept here for the whole subscription:
//!
//! - **Entries**: every event a stream read and has not resolved durably, per key, ordered by
//!   commit. A stream registers a batch's events before driving any of them and removes them
//!   when the checkpoint holding their resolution is durable (the same moment a key's next event
//!   may start within a topic).
//! - **Marks**: per topic, a commit through which its stream has registered every event. A
//!   batch raises it to its last event's commit. A topic with nothing new to read is raised by
//!   the subscription's [turn keeper](crate::turn_keeper), and only while a turn waits for it:
//!   it asks the storage for the visible commit `V` and, seen after it, the topic's last
//!   position; if the stream has registered past that position, every event of the topic with a
//!   commit up to `V` is registered, and the mark goes to `V`. So idle topics cost nothing while
//!   nobody waits, and one storage call per round while someone does — not a wake-up per topic.
//!
//! An event's turn comes when it is the first entry of its key and every topic's mark is at
//! least its commit. Turns are granted in commit order per key, so calls of one key never
//! overlap and never run out of commit order, across retries (a retried event keeps its turn)
//! and restarts (a stream that reopens resets its mark and entries, and registers again what it
//! reads). Liveness: the unresolved entry with the lowest commit of all is always granted — a
//! topic whose read budget is full has a mark at or above its own entries, which are not lower.
//!
//! A stream that fails for good leaves: its topic no longer holds the others back. Events that
//! are not entries (an operator's retry of a parked event, released followers) are not ordered
//! by commit; the subscription's key locks still keep them from overlapping.
//!
//! Memory is bounded by what the streams hold: entries by their read budgets, marks by topics.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use inorder_log::Name;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One unresolved event of a key: ordered by commit (then topic and position, for events
/// written before commit positions existed, which all carry commit 0).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    commit: u64,
    topic: Name,
    position: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Read, not asked for yet.
    Read,
    /// Asked for; waits for earlier entries of its key or for the marks.
    Waiting,
    /// Granted: the key's calls are this event's until it is resolved.
    Granted,
}

/// An event read by a stream, to register.
#[derive(Debug, Clone)]
pub(crate) struct TurnEvent {
    pub key: String,
    pub commit: u64,
    pub position: u64,
}

/// The turns granted to one stream after it asked: `(key, position)` pairs, and a wake-up.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    granted: Mutex<Vec<(String, u64)>>,
    notify: Notify,
}

impl Grants {
    /// Waits until something was granted (a grant made while nobody waited is kept).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Takes what was granted.
    pub(crate) fn take(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.granted.lock())
    }

    fn grant(&self, key: String, position: u64) {
        self.granted.lock().push((key, position));
        self.notify.notify_one();
    }
}

struct TopicTurn {
    mark: u64,
    /// Every event of the topic below this position is registered or resolved (0: the
    /// topic's stream has not opened yet).
    next: u64,
    /// The keeper found the topic ending at this position, which the stream had not read
    /// past: reading past it is worth a new round.
    behind: Option<u64>,
    grants: Arc<Grants>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Name, TopicTurn>,
    /// The marks as a multiset, for their minimum.
    marks: BTreeMap<u64, usize>,
    keys: HashMap<String, BTreeMap<Entry, Turn>>,
    /// First entries of their key that asked and wait for the marks, by commit.
    blocked: BTreeSet<(Entry, String)>,
    /// Something changed that the keeper should look at (a new blocked turn, a topic read
    /// past where the keeper last found it behind).
    keeper_wanted: bool,
}

/// The commit-order turns of one subscription.
#[derive(Default)]
pub(crate) struct KeyTurns {
    state: Mutex<State>,
    /// Wakes the turn keeper: a turn started waiting for the marks, or a stream read.
    keeper: Notify,
}

impl std::fmt::Debug for KeyTurns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTurns").finish_non_exhaustive()
    }
}

impl KeyTurns {
    /// Makes `topic` hold the others back (mark 0) until its stream reads, if it is not known.
    /// Called for every topic of the subscription before any of them takes events.
    pub(crate) fn expect(&self, topic: &Name) {
        let mut state = self.state.lock();
        if !state.topics.contains_key(topic) {
            let grants = Arc::default();
            state
                .topics
                .insert(topic.clone(), TopicTurn { mark: 0, next: 0, behind: None, grants });
            *state.marks.entry(0).or_default() += 1;
        }
    }

    /// A stream incarnation of `topic` opens, to read from `next` on (everything below is
    /// resolved): its mark goes back to 0, what an earlier incarnation registered is forgotten
    /// (it reads it again), and it gets a fresh grant box. Nothing is granted meanwhile: the
    /// topic holds the others back from the same moment.
    pub(crate) fn join(&self, topic: &Name, next: u64) -> Arc<Grants> {
        let mut state = self.state.lock();
        let grants: Arc<Grants> = Arc::default();
        let turn = TopicTurn { mark: 0, next, behind: None, grants: Arc::clone(&grants) };
        let old = state.topics.insert(topic.clone(), turn);
        if let Some(old) = old {
            state.remove_mark(old.mark);
        }
        *state.marks.entry(0).or_default() += 1;
        state.forget(topic);
        // The keeper may have found the topic behind before it opened: look again.
        state.keeper_wanted = true;
        self.wake_keeper(&mut state);
        grants
    }

    /// The stream of `topic` failed for good: its topic no longer holds the others back.
    pub(crate) fn leave(&self, topic: &Name) {
        let mut state = self.state.lock();
        let Some(gone) = state.topics.remove(topic) else { return };
        state.remove_mark(gone.mark);
        state.forget(topic);
        state.release_blocked();
        self.wake_keeper(&mut state);
    }

    /// `topic`'s stream read `events` (all of them registered before any is asked for): it has
    /// registered everything of its topic below position `next`, and through commit `through`.
    pub(crate) fn read(&self, topic: &Name, events: Vec<TurnEvent>, through: u64, next: u64) {
        let mut state = self.state.lock();
        if !state.topics.contains_key(topic) {
            return; // not joined (or left): its events must not hold keys no mark can release
        }
        for TurnEvent { key, commit, position } in events {
            let entry = Entry { commit, topic: topic.clone(), position };
            state.keys.entry(key).or_default().insert(entry, Turn::Read);
        }
        let Some(turn) = state.topics.get_mut(topic) else { return };
        turn.next = turn.next.max(next);
        if turn.behind.is_some_and(|last| turn.next > last) {
            turn.behind = None;
            state.keeper_wanted = true;
        }
        state.raise(topic, through);
        self.wake_keeper(&mut state);
    }

    /// Turns waiting for the marks (for the `inorder_turns_waiting` gauge).
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().blocked.len()
    }

    /// The lowest waiting turn's commit and the topics whose marks hold it back (none when
    /// no turn waits).
    pub(crate) fn lagging(&self) -> Option<(u64, Vec<Name>)> {
        let mut state = self.state.lock();
        // A blocked entry granted or forgotten another way no longer waits: drop it.
        while let Some((entry, key)) = state.blocked.first() {
            let waits = state.keys.get(key).is_some_and(|entries| {
                entries
                    .first_key_value()
                    .is_some_and(|(first, turn)| first == entry && *turn == Turn::Waiting)
            });
            if waits {
                break;
            }
            state.blocked.pop_first();
        }
        let (first, _) = state.blocked.first()?;
        let wanted = first.commit;
        let topics =
            state.topics.iter().filter(|(_, t)| t.mark < wanted).map(|(name, _)| name.clone());
        Some((wanted, topics.collect()))
    }

    /// The storage saw commit `visible` visible and then `topics` ending at `lasts`: a topic
    /// whose stream registered past its last position has every event up to `visible` registered.
    pub(crate) fn caught_up(&self, topics: &[Name], visible: u64, lasts: &[u64]) {
        let mut state = self.state.lock();
        for (topic, last) in topics.iter().zip(lasts) {
            let Some(turn) = state.topics.get_mut(topic) else { continue };
            if turn.next > *last {
                turn.behind = None;
                state.raise(topic, visible);
            } else {
                turn.behind = Some(*last);
            }
        }
    }

    /// Waits until the turn keeper has something to look at.
    pub(crate) async fn keeper_woken(&self) {
        self.keeper.notified().await;
    }

    /// Asks for the turn of `key`'s event at `position` of `topic` (commit `commit`): `true` if
    /// it may be called now, else it is granted later through the stream's [`Grants`]. An event
    /// that is not registered (a parked event retried by an operator) has no commit-order turn.
    pub(crate) fn request(&self, topic: &Name, key: &str, commit: u64, position: u64) -> bool {
        let mut state = self.state.lock();
        let min_mark = state.min_mark();
        let entry = Entry { commit, topic: topic.clone(), position };
        let Some(entries) = state.keys.get_mut(key) else { return true };
        let first = entries.first_key_value().is_some_and(|(first, _)| *first == entry);
        let Some(turn) = entries.get_mut(&entry) else { return true };
        if first && commit <= min_mark {
            *turn = Turn::Granted;
            return true;
        }
        *turn = Turn::Waiting;
        if first {
            state.block(entry, key.to_owned());
            self.wake_keeper(&mut state);
        }
        false
    }

    /// `topic`'s events in `events` are resolved durably: the next entry of each key may go.
    pub(crate) fn resolved(&self, topic: &Name, events: &[(String, u64, u64)]) {
        let mut state = self.state.lock();
        for (key, commit, position) in events {
            let entry = Entry { commit: *commit, topic: topic.clone(), position: *position };
            let Some(entries) = state.keys.get_mut(key) else { continue };
            entries.remove(&entry);
            if entries.is_empty() {
                state.keys.remove(key);
            } else {
                state.wake_first(key);
            }
        }
        self.wake_keeper(&mut state);
    }

    fn wake_keeper(&self, state: &mut State) {
        if std::mem::take(&mut state.keeper_wanted) {
            self.keeper.notify_one();
        }
    }

    /// Registered entries (for tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.state.lock().keys.values().map(BTreeMap::len).sum()
    }
}

impl State {
    /// Forgets `topic`'s entries; the keys they led get their next entry considered.
    fn forget(&mut self, topic: &Name) {
        let mut touched = Vec::new();
        self.keys.retain(|key, entries| {
            let before = entries.len();
            entries.retain(|entry, _| entry.topic != *topic);
            if entries.len() != before {
                touched.push(key.clone());
            }
            !entries.is_empty()
        });
        self.blocked.retain(|(entry, _)| entry.topic != *topic);
        for key in touched {
            self.wake_first(&key);
        }
    }

    fn min_mark(&self) -> u64 {
        self.marks.keys().next().copied().unwrap_or(u64::MAX)
    }

    fn remove_mark(&mut self, mark: u64) {
        if let Some(count) = self.marks.get_mut(&mark) {
            *count -= 1;
            if *count == 0 {
                self.marks.remove(&mark);
            }
        }
    }

    /// A waiting first entry goes into the blocked set, until the marks reach it.
    fn block(&mut self, entry: Entry, key: String) {
        if self.blocked.insert((entry, key)) {
            self.keeper_wanted = true;
        }
    }

    /// Raises `topic`'s mark to `through` (marks never go down) and grants what that allows.
    fn raise(&mut self, topic: &Name, through: u64) {
        let Some(turn) = self.topics.get_mut(topic) else { return };
        let before = turn.mark;
        if through <= before {
            return;
        }
        turn.mark = through;
        self.remove_mark(before);
        *self.marks.entry(through).or_default() += 1;
        self.release_blocked();
    }

    /// The first entry of `key` changed: grant it if it waits and the marks allow.
    fn wake_first(&mut self, key: &str) {
        let min_mark = self.min_mark();
        let Some(entries) = self.keys.get_mut(key) else { return };
        let Some((entry, turn)) = entries.iter_mut().next() else { return };
        if *turn != Turn::Waiting {
            return;
        }
        if entry.commit <= min_mark {
            *turn = Turn::Granted;
            let entry = entry.clone();
            self.give(&entry, key.to_owned());
        } else {
            let entry = entry.clone();
            self.block(entry, key.to_owned());
        }
    }

    /// Grants the blocked first entries the marks now allow, in commit order.
    fn release_blocked(&mut self) {
        let min_mark = self.min_mark();
        while let Some((entry, _)) = self.blocked.first()
            && entry.commit <= min_mark
        {
            let Some((entry, key)) = self.blocked.pop_first() else { break };
            let Some(entries) = self.keys.get_mut(&key) else { continue };
            let first = entries.first_key_value().is_some_and(|(first, _)| *first == entry);
            match entries.get_mut(&entry) {
                Some(turn) if first && *turn == Turn::Waiting => {
                    *turn = Turn::Granted;
                    self.give(&entry, key);
                }
                _ => {}
            }
        }
    }

    fn give(&self, entry: &Entry, key: String) {
        if let Some(topic) = self.topics.get(&entry.topic) {
            topic.grants.grant(key, entry.position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(topic: &str) -> Name {
        topic.parse().unwrap()
    }

    fn read(turns: &KeyTurns, topic: &str, events: &[(&str, u64, u64)], through: u64) {
        let next = events.iter().map(|(_, _, position)| position + 1).max().unwrap_or(1);
        let events = events
            .iter()
            .map(|(key, commit, position)| TurnEvent {
                key: (*key).to_owned(),
                commit: *commit,
                position: *position,
            })
            .collect();
        turns.read(&name(topic), events, through, next);
    }

    #[test]
    fn a_key_waits_for_the_topic_that_has_not_read_that_far() {
        let turns = KeyTurns::default();
        turns.expect(&name("a"));
        let b = turns.join(&name("b"), 1);
        let a = turns.join(&name("a"), 1);
        // b read k at commit 7; a has read nothing yet: k must wait for a's mark.
        read(&turns, "b", &[("k", 7, 1)], 7);
        assert!(!turns.request(&name("b"), "k", 7, 1));
        assert_eq!(turns.lagging(), Some((7, vec![name("a")])), "the keeper looks at a");
        // a reads k at commit 3 and is through commit 5: a's event goes first.
        read(&turns, "a", &[("k", 3, 1)], 5);
        assert!(turns.request(&name("a"), "k", 3, 1));
        assert!(b.take().is_empty(), "b still waits: a's mark is 5");
        turns.resolved(&name("a"), &[("k".into(), 3, 1)]);
        assert!(b.take().is_empty(), "b still waits for a's mark");
        turns.caught_up(&[name("a")], 9, &[2]);
        assert!(b.take().is_empty(), "a has not registered past its position 2");
        turns.caught_up(&[name("a")], 9, &[1]);
        assert_eq!(b.take(), [("k".to_owned(), 1)], "a registered everything through commit 9");
        assert_eq!(turns.lagging(), None);
        assert!(a.take().is_empty());
    }

    #[test]
    fn other_keys_go_on_while_one_waits_for_its_earlier_event() {
        let turns = KeyTurns::default();
        let a = turns.join(&name("a"), 1);
        let _b = turns.join(&name("b"), 1);
        read(&turns, "a", &[("k", 1, 1), ("j", 3, 2)], 3);
        read(&turns, "b", &[("k", 2, 1), ("j", 4, 2)], 4);
        assert!(turns.request(&name("a"), "k", 1, 1));
        assert!(!turns.request(&name("b"), "k", 2, 1), "k's commit 1 is not resolved");
        assert!(turns.request(&name("a"), "j", 3, 2), "j is another key");
        assert!(a.take().is_empty());
        assert_eq!(turns.entries(), 4);
    }

    #[test]
    fn a_rejoining_stream_holds_the_others_back_until_it_read_again_and_a_leaving_one_does_not() {
        let turns = KeyTurns::default();
        turns.join(&name("a"), 1);
        let b = turns.join(&name("b"), 1);
        read(&turns, "a", &[("k", 1, 1)], 1);
        read(&turns, "b", &[("k", 2, 1)], 2);
        assert!(turns.request(&name("a"), "k", 1, 1));
        assert!(!turns.request(&name("b"), "k", 2, 1));
        turns.join(&name("a"), 1);
        assert!(b.take().is_empty(), "a's mark is back at 0");
        read(&turns, "a", &[("k", 1, 1)], 1);
        assert!(b.take().is_empty(), "a read k at commit 1 again");
        turns.leave(&name("a"));
        assert_eq!(b.take(), [("k".to_owned(), 1)], "a failed: it no longer holds b back");
    }

    #[test]
    fn an_unregistered_event_has_no_turn_to_wait_for() {
        let turns = KeyTurns::default();
        turns.join(&name("a"), 1);
        turns.join(&name("b"), 1);
        assert!(turns.request(&name("a"), "k", 9, 4));
    }
}
