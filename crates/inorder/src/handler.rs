//! Handlers: the user code a subscription calls for each event.
//!
//! A handler returns a [`Reply`] (any JSON; `Null` if there is nothing to say) on success. An
//! error is retried with backoff unless it is [`HandlerError::permanent`], in which case the
//! event is parked at once. A panic in a handler is caught and counted as a (retryable)
//! failure: it never takes a worker or the engine down.

use std::{future::Future, marker::PhantomData, pin::Pin, sync::Arc, time::Duration};

use crate::event::Event;

/// What a successful handler returns (delivered to `publish_and_wait` callers).
pub type Reply = serde_json::Value;

/// Why a handler call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying (network, timeouts, contention).
    pub fn retry(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true, retry_after: None }
    }

    /// A failure worth retrying after `delay` (instead of the retry policy's backoff).
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        Self { message: message.into(), retryable: true, retry_after: Some(delay) }
    }

    /// A failure no retry will fix (validation, a bug): the event is parked at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false, retry_after: None }
    }

    /// The delay the handler asked for before the next attempt, if any.
    #[must_use]
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the engine retries the event.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::retry(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::retry(message)
    }
}

/// What a handler did with a run of one key's consecutive events ([`Handler::handle_run`]).
///
/// The first `replies.len()` events of the run were handled, in order; if `failed` is set, the
/// event after them failed with it (retried or parked as any failure); the events after that
/// were not handled and are handed to the handler again, in order, once the handled ones are
/// durable.
#[derive(Debug, Default)]
pub struct RunReply {
    /// One reply per handled event, from the run's first on.
    pub replies: Vec<Reply>,
    /// Why the event after the handled ones failed, if it did.
    pub failed: Option<HandlerError>,
}

/// What a handler knows about the call beyond the event.
#[derive(Debug, Clone)]
pub struct HandlerContext {
    /// The subscription calling.
    pub subscription: inorder_log::Name,
    /// 1 for the first call of this event, 2 for the first retry, …
    pub attempt: u32,
}

/// The user code of a subscription.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one event. Called for one key at a time, in the subscription's order.
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError>;

    /// The most consecutive events of one key this handler takes in one call of
    /// [`Handler::handle_run`]. 1, the default, hands events one at a time to
    /// [`Handler::handle`]. The engine caps it at [`RUN_EVENTS_MAX`](crate::limits::RUN_EVENTS_MAX),
    /// and forms runs only where per-key order is one sequence: `fifo` ordering of a
    /// subscription over one topic (others, and retries, go one event at a time).
    fn max_run(&self) -> usize {
        1
    }

    /// Handles 2 ..= [`Handler::max_run`] consecutive events of one key, in their order, in one
    /// call: a key's next events wait while it runs, as for one event. The default calls
    /// [`Handler::handle`] for each in turn and stops at the first failure.
    async fn handle_run(&self, events: &[Event], context: &HandlerContext) -> RunReply {
        let mut replies = Vec::with_capacity(events.len());
        for event in events {
            match self.handle(event, context).await {
                Ok(reply) => replies.push(reply),
                Err(error) => return RunReply { replies, failed: Some(error) },
            }
        }
        RunReply { replies, failed: None }
    }

    /// Called when the subscription is replayed from its first event
    /// ([`EngineBuilder::replay`](crate::EngineBuilder::replay)): after its progress was reset
    /// and before its streams start. Clear what the handler built (a read model). The default
    /// does nothing.
    async fn on_replay(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A handler made from an async closure; see [`handler_fn`].
pub struct FnHandler<F, Fut> {
    function: F,
    _future: PhantomData<fn() -> Fut>,
}

/// Wraps `function(event, context)` as a [`Handler`].
pub fn handler_fn<F, Fut>(function: F) -> FnHandler<F, Fut>
where
    F: Fn(Event, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
{
    FnHandler { function, _future: PhantomData }
}

#[async_trait::async_trait]
impl<F, Fut> Handler for FnHandler<F, Fut>
where
    F: Fn(Event, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
{
    async fn handle(&self, event: &Event, context: &HandlerContext) -> Result<Reply, HandlerError> {
        (self.function)(event.clone(), context.clone()).await
    }
}

/// A shared handler.
pub(crate) type SharedHandler = Arc<dyn Handler>;

/// Calls the handler, turning a panic into a retryable failure.
pub(crate) async fn call(
    handler: &SharedHandler,
    event: &Event,
    context: &HandlerContext,
) -> Result<Reply, HandlerError> {
    use futures_util::FutureExt;
    let call: Pin<Box<dyn Future<Output = _> + Send + '_>> = handler.handle(event, context);
    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            Err(HandlerError::retry(format!("handler panicked: {}", panic_message(panic.as_ref()))))
        }
    }
}

/// Calls the handler for a run, turning a panic into a retryable failure of its first event.
pub(crate) async fn call_run(
    handler: &SharedHandler,
    events: &[Event],
    context: &HandlerContext,
) -> RunReply {
    use futures_util::FutureExt;
    let call: Pin<Box<dyn Future<Output = _> + Send + '_>> = handler.handle_run(events, context);
    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(reply) => reply,
        Err(panic) => RunReply {
            replies: Vec::new(),
            failed: Some(HandlerError::retry(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            ))),
        },
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
