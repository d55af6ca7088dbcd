//! Process managers: consume events, emit new events — effectively once, strictly in sequence.
//!
//! A manager reads each of its topics in position order, one event at a time (its own tailer,
//! not a per-key subscription: a process spans keys). For each event it decides with
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
//! applying (never handling) every event up to its checkpoint.
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
    limits::{PROCESS_HANDLE_ATTEMPTS_MAX, PROCESS_HANDLE_RETRY_DELAY_INITIAL, READ_BATCH_EVENTS},
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
        let storage = Arc::clone(engine.storage());
        let mut checkpoints = BTreeMap::new();
        for topic in &topics {
            let id = StreamId { subscription: name.clone(), topic: topic.clone() };
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

    /// Applies every event up to each topic's checkpoint.
    async fn hydrate(&mut self, checkpoints: &BTreeMap<String, u64>) -> Result<()> {
        for topic in self.topics.clone() {
            let until = checkpoints.get(topic.as_str()).copied().unwrap_or(0);
            let mut next = 1;
            while next <= until {
                let events = self.engine.read(topic.as_str(), next, READ_BATCH_EVENTS).await?;
                for event in events.iter().take_while(|e| e.position <= until) {
                    self.check_sequence(&topic, next, event.position)?;
                    self.manager.apply(&mut self.state, event);
                    next += 1;
                }
                if events.is_empty() {
                    return Err(self.out_of_sequence(&topic, next, 0));
                }
            }
        }
        tracing::info!(manager = %self.name, "hydrated");
        Ok(())
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
            let handled = match self.round().await {
                Ok(handled) => handled,
                Err(error) => break Err(error),
            };
            if handled == 0 {
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

    /// Handles one batch of each topic; commits the checkpoints; returns how many it handled.
    async fn round(&mut self) -> Result<usize> {
        let mut checkpoints = self.checkpoints.borrow().clone();
        let mut handled = 0;
        for topic in self.topics.clone() {
            let checkpoint = checkpoints.get(topic.as_str()).copied().unwrap_or(0);
            let events =
                self.engine.read(topic.as_str(), checkpoint + 1, READ_BATCH_EVENTS).await?;
            let mut expected = checkpoint + 1;
            for event in &events {
                self.check_sequence(&topic, expected, event.position)?;
                self.emit_for(event).await?;
                self.manager.apply(&mut self.state, event);
                expected += 1;
                handled += 1;
            }
            checkpoints.insert(topic.to_string(), expected - 1);
        }
        if handled > 0 {
            let ops = self
                .topics
                .iter()
                .map(|topic| StateOp::Stream {
                    stream: StreamId { subscription: self.name.clone(), topic: topic.clone() },
                    state: StreamState {
                        watermark: checkpoints.get(topic.as_str()).copied().unwrap_or(0),
                        ..StreamState::default()
                    },
                })
                .collect();
            self.engine.storage().commit(ops, true).await?;
            self.checkpoints.send_replace(checkpoints);
        }
        Ok(handled)
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
