//! The supervisor of a stream: every stream runs under one, so a stream never stops silently.
//!
//! The supervisor runs the stream's [incarnations](super::task) one after another. An
//! incarnation starts from the durable progress (exactly as after a crash: at most the events
//! in flight are handed to the handler again) and ends with shutdown, an error, or a panic —
//! caught here, at the stream's boundary, so it fails this stream and not the process.
//!
//! | what ended the incarnation | decision | health |
//! |---|---|---|
//! | shutdown, or the engine stopping | stop | (unchanged) |
//! | a transient storage error | restart after a capped backoff, counted | `retrying` |
//! | a panic, fewer than [`STREAM_PANICS_MAX`] in a row | restart after the backoff | `retrying` |
//! | a panic, [`STREAM_PANICS_MAX`] in a row | fail | `failed` |
//! | corrupt, unavailable or refusing storage, a gap, an undecodable event, a bug | fail | `failed` |
//! | its partition's lease lost (cluster mode: fenced, or past its deadline) | stop | (unchanged: the lease keeper puts a mirror in its place) |
//!
//! Progress between failures (a durable checkpoint) resets the backoff and the panic count.
//! Before a restart the supervisor waits until the checkpointer has finished every checkpoint
//! the dead incarnation sent (a barrier through the same queue): the next incarnation must read
//! the state those checkpoints leave, never a mix of before and after.
//!
//! A failed stream stays visible — in its status (`GET /v1/subscriptions`, `/readyz`), in the
//! `inorder_streams_failed` gauge, in the log — and answers operator commands with
//! [`Error::StreamFailed`] until the engine stops.

use std::{panic::AssertUnwindSafe, sync::Arc};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    handle::{StreamHandle, StreamHealth, StreamMsg},
    task::{Stream, StreamIo},
};
use crate::{
    checkpoint::CommitRequest,
    cluster::LeaseClock,
    error::{Error, Result},
    handler::panic_message,
    limits::{
        STREAM_INBOX_DEPTH, STREAM_PANICS_MAX, STREAM_RESTART_DELAY_INITIAL,
        STREAM_RESTART_DELAY_MAX,
    },
    runtime::{StreamContext, SubscriptionRuntime, TopicRuntime},
    state::StreamId,
    storage::Storage,
    waiters::Waiters,
};

/// What every stream of an engine shares.
#[derive(Clone)]
pub(crate) struct StreamDeps {
    pub storage: Arc<dyn Storage>,
    pub checkpointer: mpsc::Sender<CommitRequest>,
    pub waiters: Arc<Waiters>,
    pub shutdown: watch::Receiver<bool>,
}

/// Why an incarnation ended.
enum Ending {
    Error(Error),
    Panic(String),
}

impl Ending {
    fn message(&self) -> String {
        match self {
            Self::Error(error) => error.to_string(),
            Self::Panic(message) => format!("the stream panicked: {message}"),
        }
    }
}

/// Starts the stream of `subscription` on `topic` (of the partition `lease` holds, in cluster
/// mode) under its supervisor. The first incarnation
/// is opened before this returns, so the stream's status is its durable progress from the
/// start; if opening fails, the supervisor handles that like any failure.
pub(crate) async fn start(
    subscription: Arc<SubscriptionRuntime>,
    topic: Arc<TopicRuntime>,
    lease: Option<Arc<LeaseClock>>,
    deps: StreamDeps,
) -> StreamHandle {
    let id = match &lease {
        Some(lease) => StreamId::partitioned(
            subscription.name.clone(),
            topic.name.clone(),
            lease.fence.partition,
        ),
        None => StreamId::new(subscription.name.clone(), topic.name.clone()),
    };
    let storage = Arc::clone(&deps.storage);
    let ctx = Arc::new(StreamContext { id, subscription, topic, storage, lease });
    let (inbox_sender, inbox) = mpsc::channel(STREAM_INBOX_DEPTH);
    let first = open(&ctx, &deps).await;
    let initial = first.as_ref().map(|stream| stream.status(0)).unwrap_or_default();
    let (status, status_receiver) = watch::channel(initial);
    let io = StreamIo { inbox, status, shutdown: deps.shutdown.clone() };
    let task = tokio::spawn(supervise(ctx, deps, io, first));
    StreamHandle { inbox: inbox_sender, status: status_receiver, task }
}

/// Opens an incarnation, a panic included.
async fn open(ctx: &Arc<StreamContext>, deps: &StreamDeps) -> Result<Stream, Ending> {
    match AssertUnwindSafe(Stream::open(ctx, &deps.checkpointer, &deps.waiters))
        .catch_unwind()
        .await
    {
        Ok(opened) => opened.map_err(Ending::Error),
        Err(panic) => Err(Ending::Panic(panic_message(panic.as_ref()))),
    }
}

async fn supervise(
    ctx: Arc<StreamContext>,
    deps: StreamDeps,
    mut io: StreamIo,
    first: Result<Stream, Ending>,
) {
    let mut next = Some(first);
    let (mut restarts, mut panics, mut delay) = (0u32, 0u32, STREAM_RESTART_DELAY_INITIAL);
    loop {
        let opened = match next.take() {
            Some(opened) => opened,
            None => open(&ctx, &deps).await,
        };
        let commits_before = io.status.borrow().commits;
        let ending = match opened {
            Ok(stream) => {
                if restarts > 0 {
                    let status = stream.status(commits_before);
                    io.status.send_replace(status);
                }
                match AssertUnwindSafe(stream.run(&mut io)).catch_unwind().await {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => Ending::Error(error),
                    Err(panic) => Ending::Panic(panic_message(panic.as_ref())),
                }
            }
            Err(ending) => ending,
        };
        if io.status.borrow().commits > commits_before {
            (restarts, panics, delay) = (0, 0, STREAM_RESTART_DELAY_INITIAL);
        }
        let restart = match &ending {
            Ending::Error(Error::Stopped) => return,
            Ending::Error(error @ Error::Fenced { .. }) => {
                // Another node holds the partition now: the lease keeper puts a mirror here.
                tracing::warn!(stream = %ctx.id, %error, "partition lost; its stream stops");
                return;
            }
            Ending::Error(error) => error.is_transient(),
            Ending::Panic(_) => {
                panics += 1;
                panics < STREAM_PANICS_MAX
            }
        };
        if *io.shutdown.borrow() {
            return;
        }
        if !restart {
            fail(&ctx, &mut io, &ending).await;
            return;
        }
        restarts += 1;
        let error: Arc<str> = ending.message().into();
        tracing::warn!(stream = %ctx.id, restarts, ?delay, %error, "stream failed; restarting");
        metrics::counter!(
            "inorder_stream_restarts_total",
            "subscription" => ctx.id.subscription.to_string(),
            "topic" => ctx.id.topic.to_string()
        )
        .increment(1);
        io.status.send_modify(|status| status.health = StreamHealth::Retrying { restarts, error });
        let settled = async {
            tokio::time::sleep(delay).await;
            checkpoints_settled(&deps.checkpointer).await
        };
        tokio::select! {
            settled = settled => if settled.is_err() { return },
            _ = io.shutdown.wait_for(|stop| *stop) => return,
        }
        delay = delay.saturating_mul(2).min(STREAM_RESTART_DELAY_MAX);
    }
}

/// Waits until the checkpointer finished every request queued before this one.
pub(crate) async fn checkpoints_settled(checkpointer: &mpsc::Sender<CommitRequest>) -> Result<()> {
    let (done, settled) = oneshot::channel();
    checkpointer
        .send(CommitRequest { ops: Vec::new(), fence: None, done })
        .await
        .map_err(|_| Error::Stopped)?;
    // A failed barrier still means every earlier request was answered.
    settled.await.map_err(|_| Error::Stopped).map(|_| ())
}

/// Marks the stream failed and answers operator commands until the engine stops.
async fn fail(ctx: &StreamContext, io: &mut StreamIo, ending: &Ending) {
    let error: Arc<str> = ending.message().into();
    tracing::error!(stream = %ctx.id, %error, "stream failed; it handles nothing until repaired and restarted");
    if let Some(turns) = &ctx.subscription.turns {
        // Its topic no longer holds the subscription's other topics back.
        turns.leave(&ctx.topic.name);
    }
    io.status
        .send_modify(|status| status.health = StreamHealth::Failed { error: Arc::clone(&error) });
    let failed = metrics::gauge!("inorder_streams_failed");
    failed.increment(1.0);
    loop {
        tokio::select! {
            Some(message) = io.inbox.recv() => {
                let refused = Err(Error::StreamFailed { stream: ctx.id.to_string(), error: error.to_string() });
                match message {
                    StreamMsg::Retry { reply, .. } | StreamMsg::Discard { reply, .. } => {
                        let _ = reply.send(refused);
                    }
                }
            }
            _ = io.shutdown.wait_for(|stop| *stop) => break,
        }
    }
    failed.decrement(1.0);
}
