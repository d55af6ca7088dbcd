//! Group commit of appends: concurrent appends to one topic share one transaction.
//!
//! Every append of a topic takes the topic's row lock until it commits, so appends of a topic
//! are serial by design, and one commit (a WAL flush) per append would cap a topic at the
//! server's commit rate however many publishers wait. Instead each topic has one appender task
//! in this process: appends queue to it (bounded), and it writes everything queued — up to
//! [`STORAGE_APPEND_RECORDS_MAX`] events — as one statement, then hands each caller its own
//! slice of the positions. Callers return only after that commit, so durability is unchanged;
//! if the statement fails, every caller in the group gets the error and nothing was appended.
//!
//! Other nodes have their own appenders; they still serialise on the row lock, so positions stay
//! unique and gap-free across nodes.

use std::{collections::HashMap, ops::RangeInclusive, sync::Arc};

use bytes::Bytes;
use deadpool_postgres::Pool;
use inorder::Name;
use tokio::sync::oneshot;

use super::{db_error, notify::Watches, pool_error, schema, to_u64};
use crate::limits::{STORAGE_APPEND_QUEUE_DEPTH, STORAGE_APPEND_RECORDS_MAX};

/// Reserves commit positions under the clock's row lock, then positions under the topic's row
/// lock (reading the clock's result orders the locks: clock first, always), inserts the events
/// there, and queues a `NOTIFY` delivered on commit. No row back means the topic does not exist.
const APPEND: &str = "\
    WITH clock AS ( \
        UPDATE inorder_commit_clock SET last_commit = last_commit + cardinality($2::bytea[]) \
        RETURNING last_commit), \
    counter AS ( \
        UPDATE inorder_topics SET last_position = last_position + cardinality($2::bytea[]) \
        FROM clock WHERE name = $1 RETURNING last_position, clock.last_commit), \
    appended AS ( \
        INSERT INTO inorder_events (topic, position, commit_position, payload) \
        SELECT $1, counter.last_position - cardinality($2::bytea[]) + event.ordinal, \
               counter.last_commit - cardinality($2::bytea[]) + event.ordinal, event.payload \
        FROM counter, UNNEST($2::bytea[]) WITH ORDINALITY AS event(payload, ordinal)) \
    SELECT last_position, pg_notify($3, last_position::text || ' ' || $1) FROM counter";

type Answer = inorder::Result<RangeInclusive<u64>>;

/// One caller's append, waiting in its topic's queue.
struct Request {
    payloads: Vec<Bytes>,
    reply: oneshot::Sender<Answer>,
}

/// The appender tasks, one per topic appended to by this process.
pub(super) struct Appenders {
    pool: Pool,
    watches: Arc<Watches>,
    queues: parking_lot::Mutex<HashMap<Name, flume::Sender<Request>>>,
}

impl Appenders {
    pub(super) fn new(pool: Pool, watches: Arc<Watches>) -> Self {
        Self { pool, watches, queues: parking_lot::Mutex::new(HashMap::new()) }
    }

    /// Appends `payloads` (1 to [`STORAGE_APPEND_RECORDS_MAX`], checked by the caller) to
    /// `topic`, sharing the commit with concurrent appends.
    pub(super) async fn append(&self, topic: &Name, payloads: Vec<Bytes>) -> Answer {
        let queue = self.queue(topic);
        let (reply, answer) = oneshot::channel();
        queue.send_async(Request { payloads, reply }).await.map_err(|_| inorder::Error::Stopped)?;
        answer.await.map_err(|_| inorder::Error::Stopped)?
    }

    /// Stops taking appends; each task ends after answering what it holds.
    pub(super) fn close(&self) {
        self.queues.lock().clear();
    }

    fn queue(&self, topic: &Name) -> flume::Sender<Request> {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(topic) {
            return queue.clone();
        }
        let (queue, requests) = flume::bounded(STORAGE_APPEND_QUEUE_DEPTH);
        let task = Appender {
            pool: self.pool.clone(),
            watches: Arc::clone(&self.watches),
            topic: topic.clone(),
        };
        tokio::spawn(task.run(requests));
        queues.insert(topic.clone(), queue.clone());
        queue
    }
}

struct Appender {
    pool: Pool,
    watches: Arc<Watches>,
    topic: Name,
}

impl Appender {
    async fn run(self, requests: flume::Receiver<Request>) {
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match requests.recv_async().await {
                    Ok(request) => request,
                    Err(_) => return,
                },
            };
            let mut events = first.payloads.len();
            let mut group = vec![first];
            while let Ok(request) = requests.try_recv() {
                if events + request.payloads.len() > STORAGE_APPEND_RECORDS_MAX {
                    carried = Some(request);
                    break;
                }
                events += request.payloads.len();
                group.push(request);
            }
            self.commit(group, events).await;
        }
    }

    /// Writes the group as one statement and answers each request with its positions.
    async fn commit(&self, group: Vec<Request>, events: usize) {
        let payloads: Vec<&[u8]> =
            group.iter().flat_map(|r| r.payloads.iter().map(Bytes::as_ref)).collect();
        match self.append(&payloads).await {
            Ok(last) => {
                let mut next = last + 1 - u64::try_from(events).unwrap_or(u64::MAX);
                metrics::counter!("inorder_pg_appended_events_total")
                    .increment(u64::try_from(events).unwrap_or(0));
                metrics::histogram!("inorder_pg_append_group_events")
                    .record(f64::from(u32::try_from(events).unwrap_or(u32::MAX)));
                for request in group {
                    let count = u64::try_from(request.payloads.len()).unwrap_or(u64::MAX);
                    let _ = request.reply.send(Ok(next..=next + count - 1));
                    next += count;
                }
            }
            Err(error) => {
                for request in group {
                    let _ = request.reply.send(Err(same_error(&error)));
                }
            }
        }
    }

    /// The statement; returns the topic's new last position.
    async fn append(&self, payloads: &[&[u8]]) -> inorder::Result<u64> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(APPEND).await.map_err(db_error("append events"))?;
        let rows = client
            .query(&statement, &[&self.topic.as_str(), &payloads, &schema::CHANNEL])
            .await
            .map_err(db_error("append events"))?;
        let Some(row) = rows.first() else {
            return Err(inorder::Error::UnknownTopic { topic: self.topic.to_string() });
        };
        let last = to_u64(row.get(0))?;
        let count = u64::try_from(payloads.len()).unwrap_or(u64::MAX);
        if last < count {
            return Err(inorder::StorageError::corrupt(format!(
                "topic {}: counter {last} below the {count} events appended",
                self.topic
            ))
            .into());
        }
        self.watches.advance(self.topic.as_str(), last);
        Ok(last)
    }
}

/// The group's error for each of its callers (`inorder::Error` is not `Clone`).
fn same_error(error: &inorder::Error) -> inorder::Error {
    match error {
        inorder::Error::UnknownTopic { topic } => {
            inorder::Error::UnknownTopic { topic: topic.clone() }
        }
        inorder::Error::Stopped => inorder::Error::Stopped,
        inorder::Error::Storage(error) => inorder::Error::Storage(error.clone()),
        other => inorder::Error::Internal { what: other.to_string() },
    }
}
