//! A fault-injecting [`Storage`]: wraps the test's real storage and, on command, fails appends,
//! reads or durable commits with a typed error (or a panic), or hides positions from readers (a
//! gap in the log) — transient faults that heal, and faults that stay.

use std::{
    collections::HashSet,
    ops::RangeInclusive,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use inorder::{
    KeyState, Name, ParkedEvent, StorageError, StorageErrorKind, StreamId, StreamState,
    storage::{StateOp, Storage, StoredRecord, TopicReader},
};
use tokio::sync::watch;

/// What an armed fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with a storage error of this kind.
    Error(StorageErrorKind),
    /// Panic inside the storage call.
    Panic,
}

/// A fault for one kind of call: armed for the next `remaining` calls (`usize::MAX`: until
/// healed), optionally only for one topic.
#[derive(Default)]
struct Armed {
    fault: Option<Fault>,
    remaining: usize,
    topic: Option<String>,
}

/// The faults of a [`FaultyStorage`], shared with the test.
#[derive(Default)]
pub struct Faults {
    appends: Mutex<Armed>,
    reads: Mutex<Armed>,
    commits: Mutex<Armed>,
    hidden: Mutex<HashSet<(String, u64)>>,
    /// Faults injected so far.
    pub injected: AtomicUsize,
}

impl Faults {
    /// Fails the next `times` appends (`usize::MAX`: until [`Faults::heal`]).
    pub fn fail_appends(&self, fault: Fault, times: usize) {
        *self.appends.lock().unwrap() = Armed { fault: Some(fault), remaining: times, topic: None };
    }

    /// Fails the next `times` reads of `topic` (any topic if `None`).
    pub fn fail_reads(&self, fault: Fault, times: usize, topic: Option<&str>) {
        *self.reads.lock().unwrap() =
            Armed { fault: Some(fault), remaining: times, topic: topic.map(str::to_owned) };
    }

    /// Fails the next `times` durable commits (checkpoints; the id index is not durable).
    pub fn fail_commits(&self, fault: Fault, times: usize) {
        *self.commits.lock().unwrap() = Armed { fault: Some(fault), remaining: times, topic: None };
    }

    /// Readers of `topic` leave `position` out, as if the log had lost it.
    pub fn hide(&self, topic: &str, position: u64) {
        self.hidden.lock().unwrap().insert((topic.to_owned(), position));
    }

    /// Disarms every fault.
    pub fn heal(&self) {
        for armed in [&self.appends, &self.reads, &self.commits] {
            *armed.lock().unwrap() = Armed::default();
        }
    }

    fn check(&self, armed: &Mutex<Armed>, topic: Option<&str>, what: &str) -> inorder::Result<()> {
        let fault = {
            let mut armed = armed.lock().unwrap();
            let applies = armed.remaining > 0
                && armed.topic.as_deref().is_none_or(|wanted| Some(wanted) == topic);
            let Some(fault) = armed.fault.filter(|_| applies) else { return Ok(()) };
            if armed.remaining != usize::MAX {
                armed.remaining -= 1;
            }
            fault
        };
        self.injected.fetch_add(1, Ordering::SeqCst);
        match fault {
            Fault::Error(kind) => {
                Err(StorageError::new(kind, format!("injected {kind} fault in {what}")).into())
            }
            Fault::Panic => panic!("injected panic in {what}"),
        }
    }
}

/// The test's storage with [`Faults`] in front of it.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

struct FaultyReader {
    inner: Box<dyn TopicReader>,
    topic: String,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl TopicReader for FaultyReader {
    async fn read(&mut self, max: usize) -> inorder::Result<Vec<StoredRecord>> {
        self.faults.check(&self.faults.reads, Some(&self.topic), "read")?;
        let records = self.inner.read(max).await?;
        let hidden = self.faults.hidden.lock().unwrap();
        Ok(records
            .into_iter()
            .filter(|r| !hidden.contains(&(self.topic.clone(), r.position)))
            .collect())
    }

    fn next_position(&self) -> u64 {
        self.inner.next_position()
    }
}

#[async_trait::async_trait]
impl Storage for FaultyStorage {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn topics(&self) -> inorder::Result<Vec<Name>> {
        self.inner.topics().await
    }

    async fn create_topic(&self, topic: &Name) -> inorder::Result<()> {
        self.inner.create_topic(topic).await
    }

    async fn append(
        &self,
        topic: &Name,
        payloads: Vec<Bytes>,
    ) -> inorder::Result<RangeInclusive<u64>> {
        self.faults.check(&self.faults.appends, Some(topic.as_str()), "append")?;
        self.inner.append(topic, payloads).await
    }

    async fn reader(&self, topic: &Name, from: u64) -> inorder::Result<Box<dyn TopicReader>> {
        let inner = self.inner.reader(topic, from).await?;
        Ok(Box::new(FaultyReader {
            inner,
            topic: topic.to_string(),
            faults: Arc::clone(&self.faults),
        }))
    }

    async fn positions(&self, topic: &Name) -> inorder::Result<(u64, u64)> {
        self.inner.positions(topic).await
    }

    async fn watch(&self, topic: &Name) -> inorder::Result<watch::Receiver<u64>> {
        self.inner.watch(topic).await
    }

    async fn read_all(
        &self,
        from: u64,
        max: usize,
    ) -> inorder::Result<Vec<(Name, inorder::storage::StoredRecord)>> {
        self.inner.read_all(from, max).await
    }

    async fn visible_commit(&self) -> inorder::Result<u64> {
        self.inner.visible_commit().await
    }

    async fn watch_commit(&self) -> inorder::Result<watch::Receiver<u64>> {
        self.inner.watch_commit().await
    }

    async fn commit(&self, ops: Vec<StateOp>, durable: bool) -> inorder::Result<()> {
        if durable {
            self.faults.check(&self.faults.commits, None, "commit")?;
        }
        self.inner.commit(ops, durable).await
    }

    async fn stream_state(&self, stream: &StreamId) -> inorder::Result<Option<StreamState>> {
        self.inner.stream_state(stream).await
    }

    async fn key_state(&self, stream: &StreamId, key: &str) -> inorder::Result<Option<KeyState>> {
        self.inner.key_state(stream, key).await
    }

    async fn parked(
        &self,
        subscription: &Name,
        after: Option<(Name, u64)>,
        max: usize,
    ) -> inorder::Result<Vec<ParkedEvent>> {
        self.inner.parked(subscription, after, max).await
    }

    async fn parked_event(
        &self,
        stream: &StreamId,
        position: u64,
    ) -> inorder::Result<Option<ParkedEvent>> {
        self.inner.parked_event(stream, position).await
    }

    async fn event_positions(
        &self,
        topic: &Name,
        ids: Vec<String>,
    ) -> inorder::Result<Vec<Option<u64>>> {
        self.inner.event_positions(topic, ids).await
    }

    async fn ids_indexed_to(&self, topic: &Name) -> inorder::Result<u64> {
        self.inner.ids_indexed_to(topic).await
    }

    fn decides_ids(&self) -> bool {
        self.inner.decides_ids()
    }

    async fn append_new(
        &self,
        topic: &Name,
        payloads: Vec<Bytes>,
        ids: Vec<String>,
    ) -> inorder::Result<RangeInclusive<u64>> {
        self.inner.append_new(topic, payloads, ids).await
    }

    async fn footprint(&self, topic: &Name) -> inorder::Result<inorder::Footprint> {
        self.inner.footprint(topic).await
    }

    async fn purge(
        &self,
        topic: &Name,
        request: &inorder::PurgeRequest,
    ) -> inorder::Result<inorder::Footprint> {
        self.inner.purge(topic, request).await
    }

    async fn put_definition(
        &self,
        kind: &str,
        name: &str,
        value: Option<Bytes>,
    ) -> inorder::Result<()> {
        self.inner.put_definition(kind, name, value).await
    }

    async fn definitions(&self, kind: &str) -> inorder::Result<Vec<(String, Bytes)>> {
        self.inner.definitions(kind).await
    }

    async fn forget_subscription(&self, subscription: &Name) -> inorder::Result<()> {
        self.inner.forget_subscription(subscription).await
    }

    async fn reset_stream(&self, stream: &StreamId, watermark: u64) -> inorder::Result<()> {
        self.inner.reset_stream(stream, watermark).await
    }

    async fn delete_topic(&self, topic: &Name) -> inorder::Result<()> {
        self.inner.delete_topic(topic).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
