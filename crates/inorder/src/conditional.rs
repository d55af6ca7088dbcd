//! Conditional publishing: the compare-and-set that optimistic concurrency is built on.
//!
//! [`Engine::publish_new`] appends a batch only if none of its event ids is held by the topic or
//! being published by anyone else — all or nothing. A writer that names its events after the
//! stream version they create (`order-7@4`, `order-7@5`) thereby appends "at expected version
//! 3": of two writers racing for version 4, exactly one gets it, the other gets
//! [`Error::IdTaken`] and nothing of its batch is appended. [`Engine::positions_of`] finds
//! events by id, which lets the same writer read one key's stream without scanning the topic.
//!
//! Why this is atomic: every id of the batch is *claimed* first (the dedupe claims that also
//! serialise producer retries), then looked up in the durable index; claims are kept until the
//! indexer has written the ids, so at every instant an id is in the claims, in the index, or not
//! published. The claims live in the engine's memory, so they decide among writers sharing one
//! engine; a storage shared by several processes decides itself, atomically with the append
//! ([`Storage::append_new`](crate::storage::Storage::append_new): PostgreSQL inserts the ids in
//! the appending transaction, and a held id rolls it back), so of two nodes racing for one id
//! exactly one appends.

use crate::{
    dedupe::Claim,
    engine::Engine,
    error::{Error, Result},
    event::Event,
    limits::LOOKUP_IDS_MAX,
    publish::Append,
    runtime::TopicRuntime,
};

impl Engine {
    /// Appends events of one topic only if none of their ids exists in the topic or is being
    /// published; returns their positions once durable. All or nothing.
    ///
    /// # Errors
    /// [`Error::IdTaken`] (nothing appended) naming the first id already held, and the errors of
    /// [`Engine::publish_batch`].
    pub async fn publish_new(&self, events: Vec<Event>) -> Result<Vec<u64>> {
        let topic = self.check_batch(&events).await?;
        let mut claims = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match topic.dedupe.claim(&event.id) {
                Claim::Mine(guard) => claims.push((i, guard)),
                // Dropping the claims taken so far releases them.
                Claim::Theirs(_) => return Err(taken(&topic, &event.id)),
            }
        }
        let ids = events.iter().map(|e| e.id.clone()).collect();
        let known = self.inner.storage.event_positions(&topic.name, ids).await?;
        if let Some(i) = known.iter().position(Option::is_some) {
            return Err(taken(&topic, &events[i].id));
        }
        let mut positions = vec![0u64; events.len()];
        self.append_claimed(&topic, &events, claims, &mut positions, Append::New).await?;
        Ok(positions)
    }

    /// The positions of the events with these ids in `topic` (`None` where the topic holds no
    /// such event yet), at most [`LOOKUP_IDS_MAX`] ids per call.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::InvalidBatch`] for too many ids, storage errors.
    pub async fn positions_of(&self, topic: &str, ids: Vec<String>) -> Result<Vec<Option<u64>>> {
        if ids.len() > LOOKUP_IDS_MAX {
            return Err(Error::InvalidBatch {
                reason: format!("{} ids to look up; at most {LOOKUP_IDS_MAX}", ids.len()),
            });
        }
        let topic = self.existing_topic(topic)?;
        // Claims first: a claim released since was indexed before it was released.
        let mut found: Vec<Option<u64>> = ids.iter().map(|id| topic.dedupe.position(id)).collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|i| found[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let lookup = missing.iter().map(|i| ids[*i].clone()).collect();
        let stored = self.inner.storage.event_positions(&topic.name, lookup).await?;
        for (i, position) in missing.into_iter().zip(stored) {
            found[i] = position;
        }
        Ok(found)
    }
}

fn taken(topic: &TopicRuntime, id: &str) -> Error {
    Error::IdTaken { topic: topic.name.to_string(), id: id.to_owned() }
}
