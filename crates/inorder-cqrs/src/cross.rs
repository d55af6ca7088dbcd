//! Aggregates across several streams (the "Membership" case): state built from the events of
//! many keys and topics, kept in memory, rebuilt on start, and commands validated against it.
//!
//! Where an [`Aggregate`](crate::Aggregate) owns one stream, a [`CrossAggregate`] *reads*
//! whole topics (members, clubs, memberships) and decides commands that no single stream could
//! (a member may join an open club once). [`CrossStream::start`] rebuilds the state from the
//! first event of every topic; before each command and each read the state catches up with
//! whatever was appended since (reading only the new events), so a decision is never taken on
//! a state older than the call.
//!
//! Commands of one `CrossStream` run one at a time. The events a command produces are appended
//! with [`Engine::publish_new`], so ids chosen by the aggregate (`joined:{member}:{club}`) make
//! a duplicate decision — from another process sharing the engine — a conflict: the command
//! catches up and is decided again, at most `retries` times.

use std::collections::BTreeMap;

use inorder::{Engine, Event};

use crate::{
    error::{CommandError, Error, Result},
    limits::{COMMAND_RETRIES_DEFAULT, READ_BATCH_EVENTS},
};

/// State over several topics, and the commands decided against it.
pub trait CrossAggregate: Default + Send + Sync + 'static {
    /// What callers ask of it.
    type Command: Send + Sync;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The topics its state is built from (each in position order).
    fn topics() -> Vec<String>;

    /// Folds one event of its topics into the state.
    fn apply(&mut self, event: &Event);

    /// The events (all of one topic) that carry out `command`, or a refusal.
    ///
    /// # Errors
    /// The aggregate's refusal.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Event>, Self::Error>;
}

struct Live<A> {
    state: A,
    applied: BTreeMap<String, u64>,
}

/// A cross-stream aggregate kept in memory.
pub struct CrossStream<A: CrossAggregate> {
    engine: Engine,
    live: tokio::sync::Mutex<Live<A>>,
    retries: u32,
}

impl<A: CrossAggregate> CrossStream<A> {
    /// Rebuilds the state from the first event of every topic.
    ///
    /// # Errors
    /// Engine errors (an unknown topic among them).
    pub async fn start(engine: Engine) -> Result<Self> {
        let applied = A::topics().into_iter().map(|t| (t, 0)).collect();
        let stream = Self {
            engine,
            live: tokio::sync::Mutex::new(Live { state: A::default(), applied }),
            retries: COMMAND_RETRIES_DEFAULT,
        };
        let events = stream.catch_up(&mut *stream.live.lock().await).await?;
        tracing::info!(events, "cross-stream aggregate rebuilt");
        Ok(stream)
    }

    /// Applies everything appended since the last catch-up; returns how many events.
    async fn catch_up(&self, live: &mut Live<A>) -> Result<u64> {
        let mut count = 0;
        let topics: Vec<String> = live.applied.keys().cloned().collect();
        for topic in topics {
            loop {
                let next = live.applied[&topic] + 1;
                let events = self.engine.read(&topic, next, READ_BATCH_EVENTS).await?;
                let Some(last) = events.last().map(|e| e.position) else { break };
                for event in &events {
                    live.state.apply(event);
                }
                count += events.len() as u64;
                live.applied.insert(topic.clone(), last);
            }
        }
        Ok(count)
    }

    /// Reads the state, caught up with everything appended before the call.
    ///
    /// # Errors
    /// Engine errors.
    pub async fn read<R>(&self, read: impl FnOnce(&A) -> R) -> Result<R> {
        let mut live = self.live.lock().await;
        self.catch_up(&mut live).await?;
        Ok(read(&live.state))
    }

    /// Decides `command` against the caught-up state and appends its events; returns their
    /// positions.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] (nothing appended), [`Error::Conflict`] after `retries` lost
    /// races, [`Error::Config`] for events of several topics, engine errors.
    pub async fn execute(&self, command: A::Command) -> Result<Vec<u64>, CommandError<A::Error>> {
        let mut live = self.live.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.catch_up(&mut live).await?;
            let events = live.state.handle(&command).map_err(CommandError::Rejected)?;
            let Some(topic) = events.first().map(|e| e.topic.to_string()) else {
                return Ok(Vec::new());
            };
            if events.iter().any(|e| e.topic.as_str() != topic) {
                return Err(Error::Config("a command's events must share one topic".into()).into());
            }
            match self.engine.publish_new(events).await {
                Ok(positions) => {
                    self.catch_up(&mut live).await?; // applies its own events
                    return Ok(positions);
                }
                Err(inorder::Error::IdTaken { .. }) if attempts <= self.retries => {}
                Err(inorder::Error::IdTaken { id, .. }) => {
                    return Err(Error::Conflict {
                        stream: format!("{topic} ({id})"),
                        version: 0,
                        attempts,
                    }
                    .into());
                }
                Err(other) => return Err(other.into()),
            }
        }
    }
}
