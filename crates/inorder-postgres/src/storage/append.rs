//! Group commit of appends: concurrent appends — to any topics — share one transaction.
//!
//! Every append takes the commit clock's row lock until it commits (see `schema`), so appends
//! are serial by design, across topics too, and one commit (a WAL flush) per append would cap
//! the database at the server's commit rate however many publishers wait. Instead this process
//! has one appender task: appends queue to it (bounded), and it writes everything queued — up to
//! [`STORAGE_APPEND_RECORDS_MAX`] events — as one statement: the clock is advanced once for the
//! whole group, each topic's counter by its events, and the events are inserted at their
//! positions and commit positions — one statement, one round trip, whatever the topics. Callers
//! return only after that commit, so durability is unchanged; if the transaction fails, every
//! caller in the group gets the error and nothing was appended. A caller whose topic does not
//! exist gets [`inorder::Error::UnknownTopic`] while the others of its group commit.
//!
//! Other nodes have their own appenders; they serialise on the clock's row lock, so positions
//! stay unique and gap-free per topic, and commit positions are committed in order.

use std::{collections::BTreeMap, ops::RangeInclusive, sync::Arc};

use bytes::Bytes;
use deadpool_postgres::Pool;
use inorder::Name;
use tokio::sync::oneshot;

use super::{
    db_error,
    notify::{COMMIT_WATCH, Watches},
    pool_error, schema, to_u64,
};
use crate::limits::{STORAGE_APPEND_QUEUE_DEPTH, STORAGE_APPEND_RECORDS_MAX};

/// One statement for a whole group, any topics, one round trip: takes the group's commit
/// positions from the clock (its row lock, held until commit, comes first: the topics' update
/// joins its result), advances each topic's counter by its events, inserts every event at its
/// position (its rank within its topic) and commit position (its rank in the group), and queues
/// a `NOTIFY` per topic, delivered on commit. `$1`: each event's topic, `$2`: its payload. A
/// topic without a row gets no row back (and its events are not inserted).
const APPEND: &str = "\
    WITH clock AS ( \
        UPDATE inorder_commit_clock SET last_commit = last_commit + cardinality($2::bytea[]) \
        RETURNING last_commit), \
    events AS ( \
        SELECT e.topic, e.payload, e.ordinal, \
               row_number() OVER (PARTITION BY e.topic ORDER BY e.ordinal) AS nth, \
               count(*) OVER (PARTITION BY e.topic) AS n \
        FROM UNNEST($1::text[], $2::bytea[]) WITH ORDINALITY AS e(topic, payload, ordinal)), \
    counts AS (SELECT topic, n, sum(octet_length(payload)) AS bytes FROM events \
               GROUP BY topic, n), \
    counter AS ( \
        UPDATE inorder_topics AS t SET last_position = t.last_position + c.n, \
               payload_bytes = t.payload_bytes + c.bytes \
        FROM counts AS c, clock WHERE t.name = c.topic \
        RETURNING t.name, t.last_position, c.n, clock.last_commit), \
    appended AS ( \
        INSERT INTO inorder_events (topic, position, commit_position, payload) \
        SELECT e.topic, counter.last_position - counter.n + e.nth, \
               counter.last_commit - cardinality($2::bytea[]) + e.ordinal, e.payload \
        FROM events AS e JOIN counter ON counter.name = e.topic) \
    SELECT name, last_position, last_commit, \
           pg_notify($3, last_position::text || ' ' || name), \
           pg_notify($3, last_commit::text || ' #commit') FROM counter";

/// [`APPEND`] for a group of one topic (most groups): the same effect without the window
/// functions. `$1`: the topic.
const APPEND_ONE: &str = "\
    WITH clock AS ( \
        UPDATE inorder_commit_clock SET last_commit = last_commit + cardinality($2::bytea[]) \
        RETURNING last_commit), \
    counter AS ( \
        UPDATE inorder_topics SET last_position = last_position + cardinality($2::bytea[]), \
               payload_bytes = payload_bytes + \
                   (SELECT coalesce(sum(octet_length(p)), 0) FROM unnest($2::bytea[]) AS p) \
        FROM clock WHERE name = $1 RETURNING name, last_position, clock.last_commit), \
    appended AS ( \
        INSERT INTO inorder_events (topic, position, commit_position, payload) \
        SELECT $1, counter.last_position - cardinality($2::bytea[]) + event.ordinal, \
               counter.last_commit - cardinality($2::bytea[]) + event.ordinal, event.payload \
        FROM counter, UNNEST($2::bytea[]) WITH ORDINALITY AS event(payload, ordinal)) \
    SELECT name, last_position, last_commit, \
           pg_notify($3, last_position::text || ' ' || $1), \
           pg_notify($3, last_commit::text || ' #commit') FROM counter";

type Answer = inorder::Result<RangeInclusive<u64>>;

/// One caller's append, waiting in the queue.
struct Request {
    topic: Name,
    payloads: Vec<Bytes>,
    reply: oneshot::Sender<Answer>,
}

/// The appender task of this process.
pub(super) struct Appenders {
    queue: parking_lot::Mutex<Option<flume::Sender<Request>>>,
}

impl Appenders {
    pub(super) fn new(pool: Pool, watches: Arc<Watches>) -> Self {
        let (queue, requests) = flume::bounded(STORAGE_APPEND_QUEUE_DEPTH);
        tokio::spawn(Appender { pool, watches }.run(requests));
        Self { queue: parking_lot::Mutex::new(Some(queue)) }
    }

    /// Appends `payloads` (1 to [`STORAGE_APPEND_RECORDS_MAX`], checked by the caller) to
    /// `topic`, sharing the commit with concurrent appends.
    pub(super) async fn append(&self, topic: &Name, payloads: Vec<Bytes>) -> Answer {
        let queue = self.queue.lock().clone().ok_or(inorder::Error::Stopped)?;
        let (reply, answer) = oneshot::channel();
        let request = Request { topic: topic.clone(), payloads, reply };
        queue.send_async(request).await.map_err(|_| inorder::Error::Stopped)?;
        answer.await.map_err(|_| inorder::Error::Stopped)?
    }

    /// Stops taking appends; the task ends after answering what it holds.
    pub(super) fn close(&self) {
        self.queue.lock().take();
    }
}

struct Appender {
    pool: Pool,
    watches: Arc<Watches>,
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

    /// Writes the group in one transaction and answers each request.
    async fn commit(&self, group: Vec<Request>, events: usize) {
        let mut by_topic: BTreeMap<Name, Vec<Request>> = BTreeMap::new();
        for request in group {
            by_topic.entry(request.topic.clone()).or_default().push(request);
        }
        match self.statement(&by_topic, events).await {
            Ok(lasts) => {
                metrics::counter!("inorder_pg_appended_events_total")
                    .increment(u64::try_from(events).unwrap_or(0));
                metrics::histogram!("inorder_pg_append_group_events")
                    .record(f64::from(u32::try_from(events).unwrap_or(u32::MAX)));
                for (topic, requests) in by_topic {
                    answer(&topic, requests, lasts.get(&topic).copied());
                }
            }
            Err(error) => {
                for request in by_topic.into_values().flatten() {
                    let _ = request.reply.send(Err(same_error(&error)));
                }
            }
        }
    }

    /// The statement; returns each existing topic's new last position.
    async fn statement(
        &self,
        by_topic: &BTreeMap<Name, Vec<Request>>,
        events: usize,
    ) -> inorder::Result<BTreeMap<Name, u64>> {
        let mut topics: Vec<&str> = Vec::with_capacity(events);
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(events);
        for (topic, requests) in by_topic {
            for payload in requests.iter().flat_map(|r| r.payloads.iter()) {
                topics.push(topic.as_str());
                payloads.push(payload.as_ref());
            }
        }
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = if let [(topic, _)] = by_topic.iter().collect::<Vec<_>>().as_slice() {
            let statement =
                client.prepare_cached(APPEND_ONE).await.map_err(db_error("append events"))?;
            client.query(&statement, &[&topic.as_str(), &payloads, &schema::CHANNEL]).await
        } else {
            let statement =
                client.prepare_cached(APPEND).await.map_err(db_error("append events"))?;
            client.query(&statement, &[&topics, &payloads, &schema::CHANNEL]).await
        }
        .map_err(db_error("append events"))?;
        let mut lasts = BTreeMap::new();
        for row in rows {
            let name: &str = row.get(0);
            let Some((topic, requests)) = by_topic.iter().find(|(topic, _)| topic.as_str() == name)
            else {
                continue;
            };
            let last = to_u64(row.get(1))?;
            let count = requests.iter().map(|r| r.payloads.len()).sum::<usize>();
            let count = u64::try_from(count).unwrap_or(u64::MAX);
            if last < count {
                return Err(inorder::StorageError::corrupt(format!(
                    "topic {topic}: counter {last} below the {count} events appended"
                ))
                .into());
            }
            self.watches.advance(name, last);
            self.watches.advance(COMMIT_WATCH, to_u64(row.get(2))?);
            lasts.insert(topic.clone(), last);
        }
        Ok(lasts)
    }
}

/// The ids of a conditional append, inserted in its transaction (`$2` ids, `$3` positions); a
/// held id inserts nothing and is missing from the answer.
const INSERT_NEW_IDS: &str = "\
    INSERT INTO inorder_event_ids (topic, id, position) \
    SELECT $1, i.id, i.position FROM UNNEST($2::bytea[], $3::bigint[]) AS i(id, position) \
    ON CONFLICT (topic, id) DO NOTHING RETURNING id";

/// Appends `payloads` to `topic` only if none of `ids` is in its id index, in one transaction
/// of its own: the append (the clock's and the topic's row locks, as every append), then the
/// ids inserted at their positions. A held id — indexed, or inserted by a transaction that
/// committed first (the clock's lock serialises them) — rolls everything back: of two nodes
/// racing for one id, exactly one appends. Outside the group commit: conditional appends (CQRS
/// commands, scheduler cycles) are few, and one must not fail the others of a group.
pub(super) async fn append_new(
    pool: &Pool,
    watches: &Watches,
    topic: &Name,
    payloads: Vec<Bytes>,
    ids: Vec<String>,
) -> Answer {
    let mut client = pool.get().await.map_err(pool_error)?;
    let transaction = client.transaction().await.map_err(db_error("begin a conditional append"))?;
    let payloads: Vec<&[u8]> = payloads.iter().map(AsRef::as_ref).collect();
    let rows = transaction
        .query(APPEND_ONE, &[&topic.as_str(), &payloads, &schema::CHANNEL])
        .await
        .map_err(db_error("append events"))?;
    let row =
        rows.first().ok_or_else(|| inorder::Error::UnknownTopic { topic: topic.to_string() })?;
    let (last, commit) = (to_u64(row.get(1))?, to_u64(row.get(2))?);
    let count = u64::try_from(payloads.len()).unwrap_or(u64::MAX);
    let first = (last + 1).checked_sub(count).ok_or_else(|| {
        inorder::StorageError::corrupt(format!("topic {topic}: counter {last} below {count}"))
    })?;
    let keys: Vec<&[u8]> = ids.iter().map(String::as_bytes).collect();
    let positions: Vec<i64> =
        (first..=last).map(|p| i64::try_from(p).unwrap_or(i64::MAX)).collect();
    let inserted = transaction
        .query(INSERT_NEW_IDS, &[&topic.as_str(), &keys, &positions])
        .await
        .map_err(db_error("insert the ids of a conditional append"))?;
    if inserted.len() < ids.len() {
        let new: std::collections::HashSet<Vec<u8>> =
            inserted.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect();
        let held = ids.iter().find(|id| !new.contains(id.as_bytes())).cloned().unwrap_or_default();
        // Dropping the transaction rolls the append and the ids back.
        return Err(inorder::Error::IdTaken { topic: topic.to_string(), id: held });
    }
    transaction.commit().await.map_err(db_error("commit a conditional append"))?;
    watches.advance(topic.as_str(), last);
    watches.advance(COMMIT_WATCH, commit);
    Ok(first..=last)
}

/// Answers a topic's requests with their slices of the positions ending at `last`, or with
/// `UnknownTopic` when the topic has no row.
fn answer(topic: &Name, requests: Vec<Request>, last: Option<u64>) {
    let Some(last) = last else {
        for request in requests {
            let _ =
                request.reply.send(Err(inorder::Error::UnknownTopic { topic: topic.to_string() }));
        }
        return;
    };
    let count: usize = requests.iter().map(|r| r.payloads.len()).sum();
    let mut next = last + 1 - u64::try_from(count).unwrap_or(u64::MAX);
    for request in requests {
        let count = u64::try_from(request.payloads.len()).unwrap_or(u64::MAX);
        let _ = request.reply.send(Ok(next..=next + count - 1));
        next += count;
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
