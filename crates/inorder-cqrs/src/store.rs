//! Aggregate streams on the engine: reading one stream, appending at an expected version,
//! snapshots.
//!
//! A stream is the events of one key in the aggregate's topic. Event `n` of stream `id` has the
//! event id `{id}@{n}` — so the engine's id index doubles as the stream index (version → position,
//! [`Engine::positions_of`]), and appending at expected version `v` is publishing ids
//! `{id}@{v+1}…` with [`Engine::publish_new`]: if any exists or is being published, the append
//! is refused as a whole and the writer knows it lost the race.
//!
//! Snapshots are events too, in [`snapshot_topic`]: the state after version `v` is stored in
//! *slot* `v / every` with id `{id}@snapshot-{slot}.v{schema}`. Loading probes slots upwards in
//! batches and takes the highest found; a state type with a new
//! [`Aggregate::SNAPSHOT_SCHEMA`] simply finds none of the old ones. A snapshot is only an
//! optimisation: one that is missing or undecodable means replaying more events.

use inorder::Engine;
use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{Aggregate, DomainEvent, snapshot_topic},
    error::{Error, Result},
    limits::{
        AGGREGATE_ID_BYTES_MAX, INVALID_ID_QUOTED_CHARS_MAX, SNAPSHOT_LOOKUP_SLOTS,
        STREAM_LOOKUP_VERSIONS,
    },
};

/// An aggregate's state at a version.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// How many events it has applied (0: none).
    pub version: u64,
}

impl<A: Aggregate> Default for Loaded<A> {
    fn default() -> Self {
        Self { state: A::default(), version: 0 }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot<S> {
    schema: u32,
    version: u64,
    state: S,
}

/// The event id of version `version` of stream `id`.
#[must_use]
pub fn event_id(id: &str, version: u64) -> String {
    format!("{id}@{version}")
}

fn snapshot_id(id: &str, slot: u64, schema: u32) -> String {
    format!("{id}@snapshot-{slot}.v{schema}")
}

/// Refuses ids that cannot name a stream.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "must not be empty".to_owned()
    } else if id.len() > AGGREGATE_ID_BYTES_MAX {
        format!("longer than {AGGREGATE_ID_BYTES_MAX} bytes")
    } else if id.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::InvalidId { id: id.chars().take(INVALID_ID_QUOTED_CHARS_MAX).collect(), reason })
}

fn stream_name<A: Aggregate>(id: &str) -> String {
    format!("{}/{id}", A::TOPIC)
}

/// Loads stream `id`: the latest snapshot (when `snapshots`), then every later event.
pub(crate) async fn load<A: Aggregate>(
    engine: &Engine,
    id: &str,
    snapshots: bool,
) -> Result<Loaded<A>> {
    let mut loaded =
        if snapshots { latest_snapshot(engine, id).await? } else { None }.unwrap_or_default();
    catch_up(engine, id, &mut loaded).await?;
    Ok(loaded)
}

/// Applies the events of stream `id` after `loaded.version`; returns how many.
pub(crate) async fn catch_up<A: Aggregate>(
    engine: &Engine,
    id: &str,
    loaded: &mut Loaded<A>,
) -> Result<u64> {
    let start = loaded.version;
    loop {
        let from = loaded.version + 1;
        let ids = (from..from + STREAM_LOOKUP_VERSIONS).map(|v| event_id(id, v)).collect();
        let positions = match engine.positions_of(A::TOPIC, ids).await {
            Ok(positions) => positions,
            Err(inorder::Error::UnknownTopic { .. }) => return Ok(0),
            Err(other) => return Err(other.into()),
        };
        let found: Vec<u64> = positions.iter().map_while(|p| *p).collect();
        for run in runs(&found) {
            let events = engine.read(A::TOPIC, run.0, run.1).await?;
            if events.len() != run.1 {
                return Err(corrupt::<A>(
                    id,
                    format!("positions {}+{} not readable", run.0, run.1),
                ));
            }
            for event in events {
                let version = loaded.version + 1;
                if event.id != event_id(id, version) || event.key != id {
                    return Err(corrupt::<A>(
                        id,
                        format!("version {version} points at event {:?}", event.id),
                    ));
                }
                let decoded: A::Event = decode(&event, "event")?;
                loaded.state.apply(&decoded);
                loaded.version = version;
            }
        }
        if (found.len() as u64) < STREAM_LOOKUP_VERSIONS {
            return Ok(loaded.version - start);
        }
    }
}

/// Runs of consecutive positions as (first, count): one read each.
fn runs(positions: &[u64]) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &position in positions {
        match runs.last_mut() {
            Some((first, count)) if *first + *count as u64 == position => *count += 1,
            _ => runs.push((position, 1)),
        }
    }
    runs
}

fn corrupt<A: Aggregate>(id: &str, reason: String) -> Error {
    Error::Corrupt { stream: stream_name::<A>(id), reason }
}

fn decode<T: serde::de::DeserializeOwned>(event: &inorder::Event, what: &str) -> Result<T> {
    serde_json::from_slice(&event.data).map_err(|e| Error::Decode {
        topic: event.topic.to_string(),
        position: event.position,
        what: format!("{what} {:?}", event.action),
        reason: e.to_string(),
    })
}

/// The engine events recording `events` as versions `expected + 1 …` of stream `id`.
pub(crate) fn encode<A: Aggregate>(
    id: &str,
    expected: u64,
    events: &[A::Event],
    metadata: &Metadata,
) -> Result<Vec<inorder::Event>> {
    let mut encoded = Vec::with_capacity(events.len());
    for (version, event) in (expected + 1..).zip(events) {
        let data = serde_json::to_value(event).map_err(|e| Error::Encode {
            what: format!("event {} of {}", event.action(), stream_name::<A>(id)),
            reason: e.to_string(),
        })?;
        let mut builder = inorder::Event::builder(A::TOPIC, id, event.action())
            .id(event_id(id, version))
            .sequence(version)
            .source(format!("inorder-cqrs/{}", A::TOPIC))
            .json(&data);
        if let Some(correlation) = &metadata.correlation_id {
            builder = builder.correlation_id(correlation.clone());
        }
        if let Some(causation) = &metadata.causation_id {
            builder = builder.causation_id(causation.clone());
        }
        encoded.push(builder.build()?);
    }
    Ok(encoded)
}

/// What a command carries onto the events it produces.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// The conversation the command belongs to (`correlationid`).
    pub correlation_id: Option<String>,
    /// The event or request that caused it (`causationid`).
    pub causation_id: Option<String>,
}

/// Finds the highest snapshot slot of stream `id` with the current schema and decodes it.
async fn latest_snapshot<A: Aggregate>(engine: &Engine, id: &str) -> Result<Option<Loaded<A>>> {
    let topic = snapshot_topic(A::TOPIC);
    let mut best: Option<u64> = None;
    let mut first = 1;
    loop {
        let slots: Vec<u64> = (first..first + SNAPSHOT_LOOKUP_SLOTS).collect();
        let ids = slots.iter().map(|s| snapshot_id(id, *s, A::SNAPSHOT_SCHEMA)).collect();
        let positions = match engine.positions_of(&topic, ids).await {
            Ok(positions) => positions,
            Err(inorder::Error::UnknownTopic { .. }) => return Ok(None),
            Err(other) => return Err(other.into()),
        };
        if let Some(found) = positions.iter().rev().flatten().next() {
            best = Some(*found);
        }
        // Go on while the batch's last slot exists (later ones may too).
        if positions.last().is_none_or(Option::is_none) {
            break;
        }
        first += SNAPSHOT_LOOKUP_SLOTS;
    }
    let Some(position) = best else { return Ok(None) };
    let Some(event) = engine.read(&topic, position, 1).await?.into_iter().next() else {
        return Ok(None);
    };
    match decode::<Snapshot<A>>(&event, "snapshot") {
        Ok(snapshot) if snapshot.schema == A::SNAPSHOT_SCHEMA => {
            Ok(Some(Loaded { state: snapshot.state, version: snapshot.version }))
        }
        Ok(snapshot) => {
            tracing::warn!(stream = %stream_name::<A>(id), schema = snapshot.schema, "ignoring a snapshot of another schema");
            Ok(None)
        }
        Err(error) => {
            tracing::warn!(stream = %stream_name::<A>(id), %error, "ignoring an undecodable snapshot");
            Ok(None)
        }
    }
}

/// Stores `loaded` as the snapshot of its slot (`version / every`) if no snapshot holds it yet.
pub(crate) async fn save_snapshot<A: Aggregate>(
    engine: &Engine,
    id: &str,
    loaded: &Loaded<A>,
    every: u64,
) -> Result<()> {
    let slot = loaded.version / every;
    let snapshot =
        Snapshot { schema: A::SNAPSHOT_SCHEMA, version: loaded.version, state: &loaded.state };
    let data = serde_json::to_value(&snapshot).map_err(|e| Error::Encode {
        what: format!("snapshot of {}", stream_name::<A>(id)),
        reason: e.to_string(),
    })?;
    let event = inorder::Event::builder(&snapshot_topic(A::TOPIC), id, "aggregate.snapshot")
        .id(snapshot_id(id, slot, A::SNAPSHOT_SCHEMA))
        .sequence(loaded.version)
        .source(format!("inorder-cqrs/{}", A::TOPIC))
        .json(&data)
        .build()?;
    // A slot already taken (another writer snapshotted it) keeps its first snapshot.
    engine.publish(event).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_positions_are_read_in_one_go() {
        assert_eq!(runs(&[]), []);
        assert_eq!(runs(&[4, 5, 6, 9, 10, 20]), [(4, 3), (9, 2), (20, 1)]);
    }

    #[test]
    fn ids_that_cannot_name_a_stream_are_refused() {
        assert!(check_id("acct-1").is_ok());
        assert!(matches!(check_id(""), Err(Error::InvalidId { .. })));
        assert!(matches!(check_id(&"x".repeat(201)), Err(Error::InvalidId { .. })));
        assert!(matches!(check_id("a\nb"), Err(Error::InvalidId { .. })));
    }
}
