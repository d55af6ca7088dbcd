//! Events: what producers publish and handlers receive.
//!
//! An event is a CloudEvent with the fields the engine needs named: `action` is the CloudEvents
//! `type`, `key` the ordering scope (the `partitionkey` extension, else `subject`). `data` stays
//! the producer's bytes with their content type; the engine never parses it. The log assigns
//! `position` when the event is appended; until then it is 0.

use std::{collections::BTreeMap, time::SystemTime};

use bytes::Bytes;
use inorder_log::Name;

use crate::{
    error::{Error, Result},
    limits::{
        EVENT_ACTION_BYTES_MAX, EVENT_DATA_BYTES_MAX, EVENT_EXTENSIONS_MAX, EVENT_ID_BYTES_MAX,
        EVENT_KEY_BYTES_MAX, EVENT_TEXT_BYTES_MAX, EXTENSION_NAME_BYTES_MAX,
    },
};

/// A value of a CloudEvents extension attribute, kept with its JSON type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    /// A string (also URIs and timestamps).
    String(String),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Boolean(bool),
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique id (producer-given, or a generated UUIDv7). Publishing an id twice to a topic
    /// returns the first position (deduplication of producer retries).
    pub id: String,
    /// The topic.
    pub topic: Name,
    /// The ordering scope: events of one key are handled in order.
    pub key: String,
    /// The event type (CloudEvents `type`), e.g. `user.created`.
    pub action: String,
    /// The payload, as the producer sent it.
    pub data: Bytes,
    /// The payload's media type (`application/json` when built with [`EventBuilder::json`]).
    pub data_content_type: Option<String>,
    /// When it happened, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// Who produced it (CloudEvents `source`).
    pub source: String,
    /// CloudEvents `subject`, if given.
    pub subject: Option<String>,
    /// CloudEvents `dataschema`, if given.
    pub data_schema: Option<String>,
    /// Correlation id (the `correlationid` extension).
    pub correlation_id: Option<String>,
    /// Causation id (the `causationid` extension): the id of the event that caused this one.
    pub causation_id: Option<String>,
    /// Producer sequence number (the `sequence` extension), for `sequence` ordering.
    pub sequence: Option<u64>,
    /// Every other extension attribute, by name.
    pub extensions: BTreeMap<String, ExtensionValue>,
    /// Position in the topic's log (0 before it is appended).
    pub position: u64,
    /// The node-wide commit position: one order across all topics, growing with `position`
    /// within a topic (0 before it is appended, and for events stored before commit positions
    /// existed). See [`Engine::read_all`](crate::Engine::read_all).
    pub commit: u64,
}

impl Event {
    /// Starts an event of `action` for `key` on `topic`.
    pub fn builder(topic: &str, key: impl Into<String>, action: impl Into<String>) -> EventBuilder {
        EventBuilder {
            topic: topic.to_owned(),
            key: key.into(),
            action: action.into(),
            id: None,
            data: Bytes::new(),
            data_content_type: None,
            time_micros: None,
            source: None,
            subject: None,
            data_schema: None,
            correlation_id: None,
            causation_id: None,
            sequence: None,
            extensions: BTreeMap::new(),
        }
    }

    /// The payload parsed as JSON (`Null` when empty).
    ///
    /// # Errors
    /// If the payload is not JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        if self.data.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.data)
    }

    /// Checks the fields against the engine's limits (sizes, non-empty id and action).
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.data.len() > EVENT_DATA_BYTES_MAX {
            return Err(Error::InvalidEvent {
                reason: format!(
                    "data has {} bytes; at most {EVENT_DATA_BYTES_MAX}",
                    self.data.len()
                ),
                too_large: true,
            });
        }
        check_text("id", &self.id, EVENT_ID_BYTES_MAX, true)?;
        check_text("key", &self.key, EVENT_KEY_BYTES_MAX, false)?;
        check_text("action", &self.action, EVENT_ACTION_BYTES_MAX, true)?;
        check_text("source", &self.source, EVENT_TEXT_BYTES_MAX, false)?;
        for (field, value) in [
            ("datacontenttype", &self.data_content_type),
            ("subject", &self.subject),
            ("dataschema", &self.data_schema),
            ("correlationid", &self.correlation_id),
            ("causationid", &self.causation_id),
        ] {
            if let Some(value) = value {
                check_text(field, value, EVENT_TEXT_BYTES_MAX, false)?;
            }
        }
        if self.extensions.len() > EVENT_EXTENSIONS_MAX {
            return Err(Error::invalid_event(format!(
                "{} extension attributes; at most {EVENT_EXTENSIONS_MAX}",
                self.extensions.len()
            )));
        }
        for (name, value) in &self.extensions {
            let valid_name = !name.is_empty()
                && name.len() <= EXTENSION_NAME_BYTES_MAX
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_name {
                return Err(Error::invalid_event(format!(
                    "extension name {name:?} must be 1-{EXTENSION_NAME_BYTES_MAX} lowercase \
                     letters or digits"
                )));
            }
            if let ExtensionValue::String(text) = value {
                check_text(name, text, EVENT_TEXT_BYTES_MAX, false)?;
            }
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<()> {
    if required && value.is_empty() {
        return Err(Error::invalid_event(format!("{field} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::invalid_event(format!(
            "{field} has {} bytes; at most {max}",
            value.len()
        )));
    }
    Ok(())
}

/// Builds an [`Event`]; [`EventBuilder::build`] validates it.
#[derive(Debug, Clone)]
#[must_use]
pub struct EventBuilder {
    topic: String,
    key: String,
    action: String,
    id: Option<String>,
    data: Bytes,
    data_content_type: Option<String>,
    time_micros: Option<i64>,
    source: Option<String>,
    subject: Option<String>,
    data_schema: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    sequence: Option<u64>,
    extensions: BTreeMap<String, ExtensionValue>,
}

impl EventBuilder {
    /// The event id (default: a new UUIDv7).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// JSON data (content type `application/json`).
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.data = Bytes::from(value.to_string());
        self.data_content_type = Some("application/json".to_owned());
        self
    }

    /// Raw data with its media type.
    pub fn data(mut self, data: impl Into<Bytes>, content_type: Option<String>) -> Self {
        self.data = data.into();
        self.data_content_type = content_type;
        self
    }

    /// When it happened, in microseconds since the Unix epoch (default: now).
    pub fn time_micros(mut self, time_micros: i64) -> Self {
        self.time_micros = Some(time_micros);
        self
    }

    /// The producer (default: `inorder`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// CloudEvents `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// CloudEvents `dataschema`.
    pub fn data_schema(mut self, schema: impl Into<String>) -> Self {
        self.data_schema = Some(schema.into());
        self
    }

    /// Correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Causation id.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Producer sequence number (for `sequence` ordering).
    pub fn sequence(mut self, sequence: u64) -> Self {
        self.sequence = Some(sequence);
        self
    }

    /// Another extension attribute.
    pub fn extension(mut self, name: impl Into<String>, value: ExtensionValue) -> Self {
        self.extensions.insert(name.into(), value);
        self
    }

    /// The event, validated.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad topic name; [`Error::InvalidEvent`] for a bad field.
    pub fn build(self) -> Result<Event> {
        let event = Event {
            id: self.id.unwrap_or_else(new_event_id),
            topic: Name::new("topic", &self.topic)?,
            key: self.key,
            action: self.action,
            data: self.data,
            data_content_type: self.data_content_type,
            time_micros: self.time_micros.unwrap_or_else(now_micros),
            source: self.source.unwrap_or_else(|| "inorder".to_owned()),
            subject: self.subject,
            data_schema: self.data_schema,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            sequence: self.sequence,
            extensions: self.extensions,
            position: 0,
            commit: 0,
        };
        event.validate()?;
        Ok(event)
    }
}

/// A new, time-ordered unique event id.
#[must_use]
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now, in microseconds since the Unix epoch.
#[must_use]
pub fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_event_has_an_id_a_time_and_no_position() {
        let event = Event::builder("orders", "o-1", "order.created")
            .json(&serde_json::json!({"total": 12}))
            .build()
            .unwrap();
        assert_eq!(event.id.len(), 36);
        assert!(event.time_micros > 1_600_000_000_000_000);
        assert_eq!(event.position, 0);
        assert_eq!(event.json().unwrap()["total"], 12);
    }

    #[test]
    fn bad_fields_are_refused_with_their_name() {
        let cases = [
            Event::builder("orders", "k", "").build(),
            Event::builder("orders", "k", "a").id("").build(),
            Event::builder("orders", "k".repeat(EVENT_KEY_BYTES_MAX + 1), "a").build(),
            Event::builder("orders", "k", "a")
                .extension("Bad-Name", ExtensionValue::Boolean(true))
                .build(),
        ];
        for case in cases {
            assert!(matches!(case, Err(Error::InvalidEvent { .. })), "{case:?}");
        }
        let bad_topic = Event::builder("../etc", "k", "a").build();
        assert!(matches!(bad_topic, Err(Error::InvalidName(_))));
    }
}
