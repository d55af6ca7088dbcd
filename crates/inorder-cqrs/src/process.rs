//! Process managers: consume events, emit new events — effectively once, strictly in sequence.
//!
//! A manager reads its topics in **commit order** — the order the events were appended across
//! topics (the engine's commit position) — one event at a time (its own tailer, not a per-key
//! subscription: a process spans keys). A round reads a batch of each topic, keeps the events
//! up to the storage's visible commit (no event of a lower commit can appear later) and up to the
//! lowest commit at which a topic's batch stopped short of what the topic holds, and handles
//! them merged by commit. So a manager joining a daily cycle with loans sees "cycled, returned,
//! cycled, opened" as it happened, however long it was down. For each event it decides with
//! [`ProcessManager::handle`] what to emit, publishes that, folds the event into its state with
//! [`ProcessManager::apply`], and advances its checkpoint — stored durably in the engine's state
//! (as the progress of a stream named after the manager) after each batch.
//!
//! **Effectively once.** Every emitted event gets a deterministic id derived from its source —
//! `{manager}:{topic}:{position}:{n}` — and the source event's id as causation id. A crash
//! between emitting and the checkpoint makes the manager handle the source event again after
//! restart; it emits the same ids, and the engine's deduplication keeps the first ones. No
//! event is emitted twice, on either backend.
//!
//! **Hydrate first.** On start, before accepting anything new, the manager rebuilds its state by
//! applying (never handling) every event up to its checkpoints, in the same commit order.
//!
//! **Never out of sequence.** Each event must be exactly the checkpoint + 1 of its topic. A gap
//! (events missing from the log) or a log that ends before the checkpoint (a restored older
//! backup) stops the manager with [`Error::OutOfSequence`] naming both positions; it never
//! handles such an event silently.
//!
//! A handler error is retried with backoff ([`PROCESS_HANDLE_ATTEMPTS_MAX`] attempts), then stops the
//! manager with [`Error::Handler`]: skipping would break the process.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use inorder::{Engine, Event, HandlerError, Name, StreamId, StreamState, storage::StateOp};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    error::{Error, Result},
    limits::{
        PROCESS_HANDLE_ATTEMPTS_MAX, PROCESS_HANDLE_RETRY_DELAY_INITIAL, PROCESS_HELD_BACK_RECHECK,
        READ_BATCH_EVENTS,
    },
};

/// An event a manager emits (the runner gives it its id, causation and correlation).
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// Target topic.
    pub topic: String,
    /// Its key.
    pub key: String,
    /// Its action.
    pub action: String,
    /// Its JSON data.
    pub data: serde_json::Value,
}

impl Emit {
    /// An event of `action` for `key` on `topic` with JSON `data`.
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<String>,
        action: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        Self { topic: topic.into(), key: key.into(), action: action.into(), data }
    }
}

/// A long-running process reacting to events.
pub trait ProcessManager: Send + Sync + 'static {
    /// What it remembers (rebuilt by [`ProcessManager::apply`] on start).
    type State: Default + Send + Sync + 'static;

    /// The topics it consumes, each in position order.
    fn topics(&self) -> Vec<String>;

    /// What to emit for `event` given the state before it. Must be deterministic: after a
    /// crash it runs again for the same event and state.
    ///
    /// # Errors
    /// Retried ([`PROCESS_HANDLE_ATTEMPTS_MAX`] attempts), then the manager stops.
    fn handle(&self, state: &Self::State, event: &Event) -> Result<Vec<Emit>, HandlerError>;

    /// Folds `event` into the state (after `handle`, and during hydration).
    fn apply(&self, state: &mut Self::State, event: &Event);
}

/// A running process manager.
pub struct ProcessHandle {
    name: String,
    stop: watch::Sender<bool>,
    checkpoints: watch::Receiver<BTreeMap<String, u64>>,
    task: JoinHandle<Result<()>>,
}

impl ProcessHandle {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until `position` of `topic` is handled (and checkpointed), at most `timeout`;
    /// returns whether it is.
    pub async fn wait_handled(&self, topic: &str, position: u64, timeout: Duration) -> bool {
        let mut checkpoints = self.checkpoints.clone();
        let reached = checkpoints.wait_for(|c| c.get(topic).is_some_and(|p| *p >= position));
        matches!(tokio::time::timeout(timeout, reached).await, Ok(Ok(_)))
    }

    /// Whether the manager stopped by itself (an error, see [`ProcessHandle::stop`]).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the manager; returns the error that stopped it earlier, if one did.
    ///
    /// # Errors
    /// [`Error::OutOfSequence`], [`Error::Handler`], engine errors.
    pub async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        self.task.await.map_err(|e| Error::Handler { what: self.name, reason: e.to_string() })?
    }
}

/// Starts `manager` under `name` on `engine`: loads its checkpoints, hydrates its state, then
/// follows its topics. Returns once hydrated.
///
/// # Errors
/// [`Error::Config`] for a bad name or an unknown topic; [`Error::OutOfSequence`] when the log
/// ends before a checkpoint; engine errors.
pub async fn start<M: ProcessManager>(
    engine: Engine,
    name: &str,
    manager: M,
) -> Result<ProcessHandle> {
    let runner = Runner::open(engine, name, manager).await?;
    let (stop, stopped) = watch::channel(false);
    let checkpoints = runner.checkpoints.subscribe();
    let task = tokio::spawn(runner.run(stopped));
    Ok(ProcessHandle { name: name.to_owned(), stop, checkpoints, task })
}

struct Runner<M: ProcessManager> {
    engine: Engine,
    name: Name,
    manager: M,
    state: M::State,
    topics: Vec<Name>,
    checkpoints: watch::Sender<BTreeMap<String, u64>>,
}

impl<M: ProcessManager> Runner<M> {
    async fn open(engine: Engine, name: &str, manager: M) -> Result<Self> {
        let name = Name::new("process manager", name).map_err(|e| Error::Config(e.to_string()))?;
        let topics = manager
            .topics()
            .iter()
            .map(|t| Name::new("topic", t).map_err(|e| Error::Config(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        if topics.is_empty() {
            return Err(Error::Config(format!("process manager {name} consumes no topic")));
        }
        // Its state is rebuilt from every event of its topics at each start: a topic whose
        // retention deletes events would make that impossible later, so refuse it now.
        for topic in &topics {
            let info = match engine.topic_info(topic.as_str()).await {
                Ok(info) => info,
                Err(inorder::Error::UnknownTopic { .. }) => continue, // reported further on
                Err(error) => return Err(error.into()),
            };
            if info.retention.deletes() {
                return Err(Error::Config(format!(
                    "process manager {name} consumes topic {}, whose retention deletes events; \
                     its state is rebuilt from every event of its topics",
                    info.name
                )));
            }
        }
        let storage = Arc::clone(engine.storage());
        let mut checkpoints = BTreeMap::new();
        for topic in &topics {
            let id = StreamId::new(name.clone(), topic.clone());
            let checkpoint = storage.stream_state(&id).await?.map_or(0, |s| s.watermark);
            let (_, last) = storage.positions(topic).await?;
            if last < checkpoint {
                return Err(Error::OutOfSequence {
                    manager: name.to_string(),
                    topic: topic.to_string(),
                    expected: checkpoint + 1,
                    found: last,
                });
            }
            checkpoints.insert(topic.to_string(), checkpoint);
        }
        let mut runner = Self {
            engine,
            name,
            manager,
            state: M::State::default(),
            topics,
            checkpoints: watch::Sender::new(BTreeMap::new()),
        };
        runner.hydrate(&checkpoints).await?;
        runner.checkpoints.send_replace(checkpoints);
        Ok(runner)
    }

    /// Applies every event up to each topic's checkpoint, in commit order.
    async fn hydrate(&mut self, checkpoints: &BTreeMap<String, u64>) -> Result<()> {
        let mut applied: BTreeMap<String, u64> =
            self.topics.iter().map(|topic| (topic.to_string(), 0)).collect();
        while applied != *checkpoints {
            let (events, _) = self.next_merged(&applied, Limit::Checkpoints(checkpoints)).await?;
            if events.is_empty() {
                let (topic, at) = applied
                    .iter()
                    .find(|(topic, at)| checkpoints.get(*topic) != Some(at))
                    .map(|(topic, at)| (topic.clone(), *at))
                    .unwrap_or_default();
                let topic = Name::new("topic", &topic).map_err(|e| Error::Config(e.to_string()))?;
                return Err(self.out_of_sequence(&topic, at + 1, 0));
            }
            for event in &events {
                self.manager.apply(&mut self.state, event);
                applied.insert(event.topic.to_string(), event.position);
            }
        }
        tracing::info!(manager = %self.name, "hydrated");
        Ok(())
    }

    /// The next events after `after` (per topic), merged in commit order: a batch of each topic,
    /// up to `limit`, cut at the lowest commit at which a topic's batch stopped short of what
    /// it holds (its later events, unread, have higher commits, but the other topics' may not).
    /// Also says whether an event was held back above the visible commit (its append is durable
    /// in its topic, but an earlier commit is not yet settled).
    async fn next_merged(
        &self,
        after: &BTreeMap<String, u64>,
        limit: Limit<'_>,
    ) -> Result<(Vec<Event>, bool)> {
        let visible = match limit {
            Limit::Checkpoints(_) => u64::MAX,
            Limit::Visible => self.engine.storage().visible_commit().await?,
        };
        let mut bound = visible;
        let mut merged = Vec::new();
        let mut held_back = false;
        for topic in &self.topics {
            let from = after.get(topic.as_str()).copied().unwrap_or(0);
            let end = match limit {
                Limit::Checkpoints(until) => until.get(topic.as_str()).copied().unwrap_or(0),
                Limit::Visible => self.engine.storage().positions(topic).await?.1,
            };
            if from >= end {
                continue;
            }
            let events = self.engine.read(topic.as_str(), from + 1, READ_BATCH_EVENTS).await?;
            let mut kept = 0;
            for (expected, event) in (from + 1..).zip(&events) {
                if event.position > end || event.commit > visible {
                    held_back |= event.commit > visible;
                    break;
                }
                self.check_sequence(topic, expected, event.position)?;
                kept += 1;
            }
            if kept == 0 {
                continue;
            }
            let last = &events[kept - 1];
            if kept == events.len() && last.position < end {
                bound = bound.min(last.commit); // the batch stopped short of the topic's end
            }
            merged.extend(events.into_iter().take(kept));
        }
        merged.retain(|event| event.commit <= bound);
        merged.sort_by(|a, b| {
            (a.commit, &a.topic, a.position).cmp(&(b.commit, &b.topic, b.position))
        });
        Ok((merged, held_back))
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) -> Result<()> {
        let storage = Arc::clone(self.engine.storage());
        let mut watches = Vec::new();
        for topic in &self.topics {
            watches.push(storage.watch(topic).await?);
        }
        let result = loop {
            if *stopped.borrow() {
                break Ok(());
            }
            for watch in &mut watches {
                watch.mark_unchanged();
            }
            let (handled, held_back) = match self.round().await {
                Ok(round) => round,
                Err(error) => break Err(error),
            };
            if handled == 0 && held_back {
                // An append is durable in its topic (its watch fired) but an earlier commit is
                // not settled yet: no watch announces that, so look again shortly.
                tokio::time::sleep(PROCESS_HELD_BACK_RECHECK).await;
            } else if handled == 0 {
                let changed = futures_changed(&mut watches);
                tokio::select! {
                    _ = stopped.changed() => {}
                    () = changed => {}
                }
            }
        };
        if let Err(error) = &result {
            tracing::error!(manager = %self.name, %error, "process manager stopped");
        }
        result
    }

    /// Handles the next events in commit order; commits the checkpoints; returns how many it
    /// handled.
    async fn round(&mut self) -> Result<(usize, bool)> {
        let mut checkpoints = self.checkpoints.borrow().clone();
        let (events, held_back) = self.next_merged(&checkpoints, Limit::Visible).await?;
        for event in &events {
            self.emit_for(event).await?;
            self.manager.apply(&mut self.state, event);
            checkpoints.insert(event.topic.to_string(), event.position);
        }
        if !events.is_empty() {
            let ops = self
                .topics
                .iter()
                .map(|topic| StateOp::Stream {
                    stream: StreamId::new(self.name.clone(), topic.clone()),
                    state: StreamState {
                        watermark: checkpoints.get(topic.as_str()).copied().unwrap_or(0),
                        ..StreamState::default()
                    },
                })
                .collect();
            self.engine.storage().commit(ops, true).await?;
            self.checkpoints.send_replace(checkpoints);
        }
        Ok((events.len(), held_back))
    }

    /// Handles `event` (retrying failures) and publishes what it emits, with deterministic ids.
    async fn emit_for(&self, event: &Event) -> Result<()> {
        let mut attempt = 1;
        let emits = loop {
            match self.manager.handle(&self.state, event) {
                Ok(emits) => break emits,
                Err(error) if error.is_retryable() && attempt < PROCESS_HANDLE_ATTEMPTS_MAX => {
                    let delay = PROCESS_HANDLE_RETRY_DELAY_INITIAL * 2u32.pow(attempt - 1);
                    tracing::warn!(manager = %self.name, position = event.position, %error, attempt, "retrying");
                    tokio::time::sleep(error.retry_delay().unwrap_or(delay)).await;
                    attempt += 1;
                }
                Err(error) => {
                    return Err(Error::Handler {
                        what: format!(
                            "process manager {} at {}/{}",
                            self.name, event.topic, event.position
                        ),
                        reason: error.message().to_owned(),
                    });
                }
            }
        };
        let mut by_topic: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for (n, emit) in emits.into_iter().enumerate() {
            let built = Event::builder(&emit.topic, emit.key, emit.action)
                .id(format!("{}:{}:{}:{n}", self.name, event.topic, event.position))
                .causation_id(event.id.clone())
                .correlation_id(event.correlation_id.clone().unwrap_or_else(|| event.id.clone()))
                .source(format!("inorder-cqrs/process/{}", self.name))
                .json(&emit.data)
                .build()?;
            by_topic.entry(emit.topic).or_default().push(built);
        }
        for (_, events) in by_topic {
            // Ids already published (before a crash) return their first positions.
            self.engine.publish_batch(events).await?;
        }
        Ok(())
    }

    fn check_sequence(&self, topic: &Name, expected: u64, found: u64) -> Result<()> {
        if found == expected { Ok(()) } else { Err(self.out_of_sequence(topic, expected, found)) }
    }

    fn out_of_sequence(&self, topic: &Name, expected: u64, found: u64) -> Error {
        Error::OutOfSequence {
            manager: self.name.to_string(),
            topic: topic.to_string(),
            expected,
            found,
        }
    }
}

/// How far [`Runner::next_merged`] reads.
#[derive(Clone, Copy)]
enum Limit<'a> {
    /// Up to these positions (hydration: everything up to the checkpoints is durable).
    Checkpoints(&'a BTreeMap<String, u64>),
    /// Up to what the topics hold, and the storage's visible commit.
    Visible,
}

/// Resolves when any of the watches changes (or its sender is gone).
async fn futures_changed(watches: &mut [watch::Receiver<u64>]) {
    let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
    let _ = futures_util::future::select_all(changes).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_sequence_error_names_both_positions() {
        let error = Error::OutOfSequence {
            manager: "fees".into(),
            topic: "loans".into(),
            expected: 8,
            found: 11,
        };
        let text = error.to_string();
        assert!(text.contains("expected position 8") && text.contains("found 11"), "{text}");
    }
}
