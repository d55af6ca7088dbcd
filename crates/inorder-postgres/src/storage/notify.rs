//! The watches of topics' last positions, fed by appends of this process and, through
//! `LISTEN`/`NOTIFY`, of every other process sharing the database.
//!
//! ```text
//! append (any node) ── COMMIT ──► NOTIFY inorder_appended '<last> <topic>'
//!                                    │
//!   LISTEN connection ─► poller task ─► bounded queue ─► listener task ─► Watches::advance
//!   own append ─────────────────────────────────────────────────────────► Watches::advance
//! ```
//!
//! No wakeup is lost: notifications are only sent on commit, so a watch never runs ahead of
//! what readers can see. A watch is registered *before* its topic's position is read, so an
//! append either is in that read or notifies a registered watch. When the LISTEN connection is
//! lost, the listener reconnects with backoff, `LISTEN`s again and only then re-reads the
//! positions of every watched topic: what committed while it was away is in that read. Watches
//! only move forward ([`Watches::advance`] keeps the maximum).

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use inorder::Name;
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

use super::schema::CHANNEL;
use crate::{
    error::{Error, Result},
    limits::{RETRY_DELAY_INITIAL, RETRY_DELAY_MAX, STORAGE_NOTIFY_QUEUE_DEPTH},
};

/// The watch senders, one per watched topic. A plain map behind a mutex: it is touched briefly
/// by appends, `watch()` and the listener, never across an `.await`.
#[derive(Default)]
pub(crate) struct Watches {
    senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

/// The watch of the commit clock, kept with the topics' under a key no topic name can take
/// (names allow only `A-Z a-z 0-9 . _ -`); appends notify it as `"<last commit> #commit"`.
pub(crate) const COMMIT_WATCH: &str = "#commit";

/// The watch of partition progress (cluster mode): commits of partition streams notify
/// `"<number> #progress"`, numbered by the `inorder_progress` sequence.
pub(crate) const PROGRESS_WATCH: &str = "#progress";

impl Watches {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.senders.lock()
    }

    /// A receiver of `topic`'s watch, registering the topic if it is new.
    pub(crate) fn subscribe(&self, topic: &Name) -> watch::Receiver<u64> {
        self.subscribe_key(topic.as_str())
    }

    /// A receiver of the watch under `key` (a topic name or [`COMMIT_WATCH`]).
    pub(crate) fn subscribe_key(&self, key: &str) -> watch::Receiver<u64> {
        self.lock().entry(key.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Raises `topic`'s watch to `position` (if watched and lower).
    pub(crate) fn advance(&self, topic: &str, position: u64) {
        if let Some(sender) = self.lock().get(topic) {
            sender.send_if_modified(|last| {
                let raise = position > *last;
                if raise {
                    *last = position;
                }
                raise
            });
        }
    }

    /// Forgets `topic` if nobody watches it (after `watch()` of an unknown topic).
    pub(crate) fn forget_unwatched(&self, topic: &Name) {
        let mut senders = self.lock();
        if senders.get(topic.as_str()).is_some_and(|s| s.receiver_count() == 0) {
            senders.remove(topic.as_str());
        }
    }

    /// Forgets a deleted topic's watch: its receivers see it closed (a topic created again
    /// under the name starts at position 1 with a watch of its own, never the old last one).
    pub(crate) fn forget(&self, topic: &Name) {
        self.lock().remove(topic.as_str());
    }

    /// The watched topics.
    fn topics(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Drops every sender: receivers see the channel closed (on close).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// The running listener: stop it with [`Listener::stop`] (dropping it stops it too).
pub(crate) struct Listener {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Opens the LISTEN connection (failing if it cannot) and starts the listener task, which
    /// keeps it open from then on.
    pub(crate) async fn start(
        config: tokio_postgres::Config,
        pool: Pool,
        watches: Arc<Watches>,
    ) -> Result<Self> {
        let session = Session::open(&config, &pool, &watches).await?;
        let (shutdown, stopped) = oneshot::channel();
        let task = tokio::spawn(run(session, config, pool, watches, stopped));
        Ok(Self { shutdown, task })
    }

    /// Stops the task and closes its connection.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// One LISTEN connection: its client (dropping it ends the connection) and its notifications.
struct Session {
    _client: Client,
    notifications: mpsc::Receiver<Notification>,
}

impl Session {
    /// Connects, `LISTEN`s, then re-reads the positions of every watched topic.
    async fn open(config: &tokio_postgres::Config, pool: &Pool, watches: &Watches) -> Result<Self> {
        let (client, mut connection) = config
            .connect(NoTls)
            .await
            .map_err(|source| Error::Connect { url: describe(config), source })?;
        let (sender, notifications) = mpsc::channel(STORAGE_NOTIFY_QUEUE_DEPTH);
        // The poller drives the connection: it must run for `LISTEN` below to complete.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        if sender.send(notification).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::debug!(%error, "postgres LISTEN connection ended");
                        return;
                    }
                    None => return,
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(Error::query("listen for appends"))?;
        resync(pool, watches).await?;
        Ok(Self { _client: client, notifications })
    }
}

/// Reads the last position of every watched topic into its watch.
async fn resync(pool: &Pool, watches: &Watches) -> Result<()> {
    let topics = watches.topics();
    if topics.is_empty() {
        return Ok(());
    }
    let client = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Closed => Error::Stopped,
        deadpool_postgres::PoolError::Backend(source) => {
            Error::Query { what: "connect to re-read positions", source }
        }
        other => Error::InvalidConfig(format!("connection pool: {other}")),
    })?;
    let rows = client
        .query(
            "SELECT name, last_position FROM inorder_topics WHERE name = ANY($1::text[]) \
             UNION ALL SELECT $2, last_commit FROM inorder_commit_clock \
             UNION ALL SELECT $3, last_value FROM inorder_progress",
            &[&topics, &COMMIT_WATCH, &PROGRESS_WATCH],
        )
        .await
        .map_err(Error::query("re-read topic positions"))?;
    for row in rows {
        let (topic, last): (&str, i64) = (row.get(0), row.get(1));
        if let Ok(last) = u64::try_from(last) {
            watches.advance(topic, last);
        }
    }
    Ok(())
}

/// The listener task: applies notifications; on a lost connection, reopens the session.
async fn run(
    mut session: Session,
    config: tokio_postgres::Config,
    pool: Pool,
    watches: Arc<Watches>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let notification = tokio::select! {
            _ = &mut stopped => return,
            notification = session.notifications.recv() => notification,
        };
        match notification {
            Some(notification) => apply(&watches, &notification),
            None => {
                tracing::warn!("postgres LISTEN connection lost; reconnecting");
                let mut delay = RETRY_DELAY_INITIAL;
                session = loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(jitter(delay)) => {}
                    }
                    match Session::open(&config, &pool, &watches).await {
                        Ok(session) => break session,
                        Err(Error::Stopped) => return,
                        Err(error) => {
                            tracing::warn!(%error, ?delay, "reopening the LISTEN connection");
                            delay = (delay * 2).min(RETRY_DELAY_MAX);
                        }
                    }
                };
                tracing::info!("postgres LISTEN connection restored");
            }
        }
    }
}

/// Applies one `"<last position> <topic>"` notification.
fn apply(watches: &Watches, notification: &Notification) {
    if notification.channel() != CHANNEL {
        return;
    }
    let parsed = notification
        .payload()
        .split_once(' ')
        .and_then(|(position, topic)| Some((position.parse::<u64>().ok()?, topic)));
    match parsed {
        Some((position, topic)) => watches.advance(topic, position),
        None => tracing::warn!(payload = notification.payload(), "malformed append notification"),
    }
}

/// `delay` plus up to a quarter more, so nodes that lost the server together do not return in
/// lockstep.
fn jitter(delay: Duration) -> Duration {
    delay + delay.mul_f64(fastrand::f64() / 4.0)
}

/// Host and database of `config`, for errors (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or(""))
}
