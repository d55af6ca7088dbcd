//! Projectors: subscriptions whose handler keeps a read model up to date.
//!
//! A [`Projection`] is an engine subscription (fifo per key: the events of one entity update
//! its row in order, entities in parallel) whose handler calls [`Projector::project`]. Its
//! checkpoint is the subscription's durable progress, so a restart resumes where it stopped
//! ([`StartMode::FromCheckpoint`]). [`StartMode::Rebuild`] replays the subscription from the
//! first event: the engine resets the progress durably, then [`Projector::reset`] clears the
//! read model, then the events flow again (see the engine's `replay`).
//! [`follow_rebuild`] waits for a rebuild and reports how far it is ([`RebuildProgress`]) to a
//! callback; the library draws nothing. A program shows the reports its own way (the
//! `read_your_writes` example draws a bar with events/s and ETA), a service exports them as
//! metrics. A callback rather than a channel: the reports matter only to whoever waits for the
//! rebuild, and a callback reaches it on its own task without a spawned task or a buffer.
//!
//! A failed projection blocks its key (`on_failure = block`): a read model that skipped an
//! event would silently be wrong; an operator retries or discards the parked event.

use std::sync::Arc;

use inorder::{
    Engine, EngineBuilder, Event, FailurePolicy, Handler, HandlerContext, HandlerError, Reply,
    SubscriptionConfig,
};

use crate::{
    error::{Error, Result},
    limits::REBUILD_POLL_INTERVAL,
};

/// Keeps a read model.
#[async_trait::async_trait]
pub trait Projector: Send + Sync + 'static {
    /// Applies one event to the read model. Called per key in log order; may be called again
    /// for an event after a crash (at-least-once), so make it idempotent (e.g. keyed by
    /// position or version).
    ///
    /// # Errors
    /// A retryable or permanent failure (permanent: the event is parked, its key blocked).
    async fn project(&self, event: &Event) -> Result<(), HandlerError>;

    /// Clears the read model, before a rebuild replays every event.
    ///
    /// # Errors
    /// The engine does not start if the read model cannot be cleared.
    async fn reset(&self) -> Result<(), HandlerError>;
}

/// How a projection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// Resume from the durable checkpoint.
    #[default]
    FromCheckpoint,
    /// Reset the read model and replay from the first event.
    Rebuild,
}

/// A projector bound to its subscription.
pub struct Projection<P> {
    name: String,
    topics: Vec<String>,
    projector: Arc<P>,
}

impl<P: Projector> Projection<P> {
    /// A projection named `name` (its subscription) of `topics`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        name: &str,
        topics: I,
        projector: Arc<P>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            topics: topics.into_iter().map(Into::into).collect(),
            projector,
        }
    }

    /// Its name (the subscription's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subscription to add to the engine's configuration.
    pub fn subscription(&self) -> SubscriptionConfig {
        SubscriptionConfig::new(&self.name, self.topics.iter().map(String::as_str))
            .on_failure(FailurePolicy::Block)
    }

    /// Registers the projection's handler on `builder`, replaying it for a rebuild.
    pub fn install(&self, builder: EngineBuilder, mode: StartMode) -> EngineBuilder {
        let builder = builder.handler(&self.name, ProjectorHandler(Arc::clone(&self.projector)));
        match mode {
            StartMode::FromCheckpoint => builder,
            StartMode::Rebuild => builder.replay(&self.name),
        }
    }
}

struct ProjectorHandler<P>(Arc<P>);

#[async_trait::async_trait]
impl<P: Projector> Handler for ProjectorHandler<P> {
    async fn handle(&self, event: &Event, _: &HandlerContext) -> Result<Reply, HandlerError> {
        self.0.project(event).await.map(|()| Reply::Null)
    }

    async fn on_replay(&self) -> Result<(), HandlerError> {
        self.0.reset().await
    }
}

/// How far a rebuild is, as [`follow_rebuild`] reports it to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events of the rebuild the projection has processed (never more than `total`).
    pub handled: u64,
    /// Events the rebuild replays: every event of the projection's topics that existed when
    /// [`follow_rebuild`] was called.
    pub total: u64,
}

impl RebuildProgress {
    /// Whether every event of the rebuild has been processed.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.handled >= self.total
    }
}

/// Waits until projection `name` has processed every event that existed when called; returns
/// how many events that was.
///
/// `on_progress` hears how far it is: once at the start, then each time the projection's
/// progress (looked at every [`REBUILD_POLL_INTERVAL`]) has moved — never twice the same; the
/// last report is done ([`RebuildProgress::is_done`]). It runs on the caller's task between two
/// looks, so keep it short: move a progress bar, set a gauge, log a line; `|_| {}` just waits.
///
/// # Errors
/// [`Error::Config`] for an unknown projection, engine errors.
pub async fn follow_rebuild(
    engine: &Engine,
    name: &str,
    mut on_progress: impl FnMut(RebuildProgress),
) -> Result<u64> {
    let targets: Vec<(String, u64)> =
        streams(engine, name).await?.into_iter().map(|s| (s.topic, s.last_position)).collect();
    let total: u64 = targets.iter().map(|(_, last)| last).sum();
    let mut reported = None;
    loop {
        let streams = streams(engine, name).await?;
        let handled: u64 = targets
            .iter()
            .map(|(topic, target)| {
                let watermark =
                    streams.iter().find(|s| &s.topic == topic).map_or(0, |s| s.status.watermark);
                watermark.min(*target)
            })
            .sum();
        let progress = RebuildProgress { handled, total };
        if reported != Some(progress) {
            on_progress(progress);
            reported = Some(progress);
        }
        if progress.is_done() {
            return Ok(total);
        }
        tokio::time::sleep(REBUILD_POLL_INTERVAL).await;
    }
}

async fn streams(engine: &Engine, name: &str) -> Result<Vec<inorder::StreamInfo>> {
    engine
        .subscriptions()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.streams)
        .ok_or_else(|| Error::Config(format!("no projection (subscription) named {name}")))
}
