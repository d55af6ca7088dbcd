//! The command bus: runs commands against aggregates with optimistic concurrency.
//!
//! For each command: take the aggregate from the registry of live aggregates (loading it from
//! its latest snapshot and later events if it is not live), let [`Aggregate::handle`] decide,
//! and append the resulting events *at the version the decision was made on*
//! ([`crate::store`]). If a concurrent writer (another bus, another process sharing the
//! engine) appended first, the append is refused as a whole; the bus catches the aggregate up
//! with the winner's events and decides again, at most `retries` times, then reports
//! [`Error::Conflict`]. A refusal by the aggregate is returned typed
//! ([`CommandError::Rejected`]) and appends nothing.
//!
//! Dispatch consistency, as in Commanded: [`Consistency::Eventual`] returns once the events are
//! durable; [`Consistency::Strong`] also waits until the named projectors (subscriptions) have
//! processed them, through the engine's process status — so a read that follows sees the write.

use std::{sync::Arc, time::Duration};

use inorder::Engine;

use crate::{
    aggregate::{Aggregate, snapshot_topic},
    error::{CommandError, Error, Result},
    limits::{
        COMMAND_RETRIES_DEFAULT, COMMAND_RETRIES_MAX, CONFLICT_BACKOFF_INITIAL,
        CONFLICT_BACKOFF_MAX, IDLE_TIMEOUT_DEFAULT, LIVE_AGGREGATES_DEFAULT,
        SNAPSHOT_EVERY_DEFAULT, STRONG_TIMEOUT_DEFAULT,
    },
    registry::Registry,
    store::{self, Loaded, Metadata},
};

/// How a [`CommandBus`] behaves.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Retries after losing a race to a concurrent writer (0: fail at the first conflict).
    pub retries: u32,
    /// A snapshot every this many events of a stream (0: never).
    pub snapshot_every: u64,
    /// A live aggregate unused this long is evicted.
    pub idle_timeout: Duration,
    /// Live aggregates kept at most (least recently used idle ones go first).
    pub live_max: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            retries: COMMAND_RETRIES_DEFAULT,
            snapshot_every: SNAPSHOT_EVERY_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            live_max: LIVE_AGGREGATES_DEFAULT,
        }
    }
}

/// When a command returns.
#[derive(Debug, Clone, Default)]
pub enum Consistency {
    /// Once its events are durable.
    #[default]
    Eventual,
    /// Once its events are durable *and* every named projector (subscription) has processed
    /// them — at most `timeout`, then [`Error::ConsistencyTimeout`] (the events stay appended).
    Strong {
        /// The projectors to wait for.
        projectors: Vec<String>,
        /// How long to wait.
        timeout: Duration,
    },
}

/// How one command is dispatched.
#[derive(Debug, Clone, Default)]
pub struct Dispatch {
    /// When to return.
    pub consistency: Consistency,
    /// Correlation and causation ids for the events.
    pub metadata: Metadata,
}

impl Dispatch {
    /// Strong dispatch: return once `projectors` have processed the events.
    pub fn strong<I: IntoIterator<Item = S>, S: Into<String>>(projectors: I) -> Self {
        Self {
            consistency: Consistency::Strong {
                projectors: projectors.into_iter().map(Into::into).collect(),
                timeout: STRONG_TIMEOUT_DEFAULT,
            },
            metadata: Metadata::default(),
        }
    }

    /// The events record `cause` (an event id or request id) as their causation and
    /// `correlation` as their conversation.
    #[must_use]
    pub fn caused_by(mut self, cause: impl Into<String>, correlation: Option<String>) -> Self {
        self.metadata.causation_id = Some(cause.into());
        self.metadata.correlation_id = correlation;
        self
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<E> {
    /// The aggregate's version after the command.
    pub version: u64,
    /// The events appended (empty if the command changed nothing).
    pub events: Vec<E>,
    /// Their positions in the aggregate's topic.
    pub positions: Vec<u64>,
    /// Attempts made (1 without conflicts).
    pub attempts: u32,
}

/// Runs commands against aggregates of type `A`. Cheap to clone; clones share the registry.
pub struct CommandBus<A: Aggregate> {
    engine: Engine,
    options: BusOptions,
    registry: Arc<Registry<A>>,
}

impl<A: Aggregate> Clone for CommandBus<A> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            options: self.options.clone(),
            registry: Arc::clone(&self.registry),
        }
    }
}

impl<A: Aggregate> CommandBus<A> {
    /// A bus on `engine`, which must hold the aggregate's topics
    /// ([`topics`](crate::aggregate::topics)).
    ///
    /// # Errors
    /// [`Error::Config`] for options out of bounds or a missing topic.
    pub fn new(engine: Engine, options: BusOptions) -> Result<Self> {
        if options.retries > COMMAND_RETRIES_MAX {
            return Err(Error::Config(format!("retries: at most {COMMAND_RETRIES_MAX}")));
        }
        if options.live_max == 0 {
            return Err(Error::Config("live_max must be at least 1".into()));
        }
        let mut topics = vec![A::TOPIC.to_owned()];
        if options.snapshot_every > 0 {
            topics.push(snapshot_topic(A::TOPIC));
        }
        let known: Vec<String> = engine.config().topics.iter().map(|t| t.name.clone()).collect();
        if !engine.config().auto_create_topics
            && let Some(missing) = topics.iter().find(|t| !known.contains(t))
        {
            return Err(Error::Config(format!(
                "topic {missing} is not configured (add inorder_cqrs::aggregate::topics::<A>())"
            )));
        }
        let registry = Registry::new(options.idle_timeout, options.live_max);
        Ok(Self { engine, options, registry })
    }

    /// The engine the bus appends to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs `command` on aggregate `id`, returning once its events are durable.
    ///
    /// # Errors
    /// As [`CommandBus::execute_with`].
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        self.execute_with(id, command, Dispatch::default()).await
    }

    /// Runs `command` on aggregate `id` as `dispatch` says.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] with the aggregate's refusal (nothing appended);
    /// [`Error::Conflict`] when every retry lost a race; [`Error::InvalidId`]; engine errors;
    /// [`Error::ConsistencyTimeout`] for a strong dispatch whose projectors lag.
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        dispatch: Dispatch,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        store::check_id(id)?;
        let slot = self.registry.get(id);
        let mut guard = slot.state.lock().await;
        let loaded = match guard.as_mut() {
            Some(loaded) => loaded,
            None => guard.insert(self.load(id).await?),
        };
        let outcome = self.decide_and_append(id, loaded, &command, &dispatch.metadata).await;
        let topic = A::TOPIC;
        match &outcome {
            Ok(executed) => {
                metrics::counter!("inorder_commands_total", "topic" => topic, "outcome" => "ok")
                    .increment(1);
                if executed.attempts > 1 {
                    metrics::counter!("inorder_command_conflicts_total", "topic" => topic)
                        .increment(u64::from(executed.attempts - 1));
                }
            }
            Err(CommandError::Rejected(_)) => {
                metrics::counter!("inorder_commands_total", "topic" => topic, "outcome" => "rejected")
                    .increment(1);
            }
            Err(CommandError::Failed(_)) => {
                metrics::counter!("inorder_commands_total", "topic" => topic, "outcome" => "failed")
                    .increment(1);
                *guard = None; // behind the log (a lost race) or uncertain: reload next time
            }
        }
        let executed = outcome?;
        drop(guard);
        if let (Consistency::Strong { projectors, timeout }, Some(last)) =
            (&dispatch.consistency, executed.positions.last())
        {
            for projector in projectors {
                let done =
                    self.engine.wait_processed(A::TOPIC, *last, Some(projector), *timeout).await?;
                if !done {
                    return Err(CommandError::Failed(Error::ConsistencyTimeout {
                        projector: projector.clone(),
                        topic: A::TOPIC.to_owned(),
                        position: *last,
                        waited: *timeout,
                    }));
                }
            }
        }
        Ok(executed)
    }

    #[tracing::instrument(name = "command", skip_all, fields(topic = A::TOPIC, id))]
    async fn decide_and_append(
        &self,
        id: &str,
        loaded: &mut Loaded<A>,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A::Event>, CommandError<A::Error>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let events = loaded.state.handle(command).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                let version = loaded.version;
                return Ok(Executed { version, events, positions: Vec::new(), attempts });
            }
            let encoded = store::encode::<A>(id, loaded.version, &events, metadata)?;
            match self.engine.publish_new(encoded).await {
                Ok(positions) => {
                    let before = loaded.version;
                    for event in &events {
                        loaded.state.apply(event);
                    }
                    loaded.version += events.len() as u64;
                    self.maybe_snapshot(id, loaded, before).await;
                    let version = loaded.version;
                    return Ok(Executed { version, events, positions, attempts });
                }
                Err(inorder::Error::IdTaken { .. }) => {
                    tracing::debug!(attempts, version = loaded.version, "lost a race; catching up");
                    if attempts > self.options.retries {
                        return Err(CommandError::Failed(Error::Conflict {
                            stream: format!("{}/{id}", A::TOPIC),
                            version: loaded.version,
                            attempts,
                        }));
                    }
                    let caught = store::catch_up(&self.engine, id, loaded).await?;
                    if caught == 0 {
                        // The winner's append is still in flight: give it a moment.
                        tokio::time::sleep(conflict_backoff(attempts)).await;
                    }
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    async fn maybe_snapshot(&self, id: &str, loaded: &Loaded<A>, before: u64) {
        let every = self.options.snapshot_every;
        if every == 0 || before / every == loaded.version / every {
            return;
        }
        if let Err(error) = store::save_snapshot(&self.engine, id, loaded, every).await {
            tracing::warn!(%error, id, "could not store a snapshot (it is only an optimisation)");
        }
    }

    async fn load(&self, id: &str) -> Result<Loaded<A>> {
        store::load(&self.engine, id, self.options.snapshot_every > 0).await
    }

    /// The current state and version of aggregate `id` (loaded if not live; caught up with
    /// events other writers appended).
    ///
    /// # Errors
    /// [`Error::InvalidId`], engine and decoding errors.
    pub async fn state(&self, id: &str) -> Result<Loaded<A>> {
        store::check_id(id)?;
        let slot = self.registry.get(id);
        let mut guard = slot.state.lock().await;
        let loaded = match guard.as_mut() {
            Some(loaded) => loaded,
            None => guard.insert(self.load(id).await?),
        };
        store::catch_up(&self.engine, id, loaded).await?;
        Ok(loaded.clone())
    }

    /// How many aggregates are live in the registry.
    pub fn live(&self) -> usize {
        self.registry.len()
    }

    /// Evicts the aggregates idle for the idle timeout now (a sweeper also does it
    /// periodically); returns how many.
    pub fn evict_idle(&self) -> usize {
        self.registry.evict_idle()
    }
}

/// How long a writer waits after losing race number `attempt` (1, 2, …) when there is nothing to
/// catch up yet: [`CONFLICT_BACKOFF_INITIAL`] doubled per attempt up to [`CONFLICT_BACKOFF_MAX`],
/// less a random part of up to half (so racing writers spread out).
fn conflict_backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(u32::BITS - 1);
    let full = CONFLICT_BACKOFF_INITIAL.saturating_mul(1 << doublings).min(CONFLICT_BACKOFF_MAX);
    let full_micros = u64::try_from(full.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(fastrand::u64(full_micros / 2..=full_micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_lost_race_the_wait_doubles_from_2_ms_up_to_64_ms_less_up_to_half() {
        let full_millis = [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 64), (7, 64), (101, 64)];
        for (attempt, full) in full_millis {
            let full = Duration::from_millis(full);
            for _ in 0..100 {
                let wait = conflict_backoff(attempt);
                assert!(full / 2 <= wait && wait <= full, "attempt {attempt}: {wait:?}");
            }
        }
    }
}
