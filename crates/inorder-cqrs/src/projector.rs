//! Projectors: subscriptions whose handler keeps a read model up to date.
//!
//! A [`Projection`] is an engine subscription (fifo per key: the events of one entity update
//! its row in order, entities in parallel) whose handler calls [`Projector::project`]. Its
//! checkpoint is the subscription's durable progress, so a restart resumes where it stopped
//! ([`StartMode::FromCheckpoint`]). [`StartMode::Rebuild`] replays the subscription from the
//! first event: the engine resets the progress durably, then [`Projector::reset`] clears the
//! read model, then the events flow again (see the engine's `replay`).
//! [`follow_rebuild`] shows how far a rebuild is: a progress bar with events/s and ETA.
//!
//! A failed projection blocks its key (`on_failure = block`): a read model that skipped an
//! event would silently be wrong; an operator retries or discards the parked event.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
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

/// Waits until projection `name` has processed every event that existed when called, showing
/// a progress bar (events/s, ETA) on the terminal when `show`; returns how many events that
/// was.
///
/// # Errors
/// [`Error::Config`] for an unknown projection, engine errors.
pub async fn follow_rebuild(engine: &Engine, name: &str, show: bool) -> Result<u64> {
    let targets: Vec<(String, u64)> =
        streams(engine, name).await?.into_iter().map(|s| (s.topic, s.last_position)).collect();
    let total: u64 = targets.iter().map(|(_, last)| last).sum();
    let bar = if show { ProgressBar::new(total) } else { ProgressBar::hidden() };
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} events ({per_sec}, ETA {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(format!("rebuilding {name}"));
    loop {
        let streams = streams(engine, name).await?;
        let done: u64 = targets
            .iter()
            .map(|(topic, target)| {
                let watermark =
                    streams.iter().find(|s| &s.topic == topic).map_or(0, |s| s.status.watermark);
                watermark.min(*target)
            })
            .sum();
        bar.set_position(done);
        if done >= total {
            bar.finish_with_message(format!("rebuilt {name}"));
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
