//! CloudEvents 1.0 over HTTP: events in and out of the three modes.
//!
//! - **structured** (`application/cloudevents+json`): the body is the event as JSON;
//! - **binary**: attributes in `ce-*` headers, the body is `data`, `Content-Type` its type;
//! - **batch** (`application/cloudevents-batch+json`): a JSON array of structured events.
//!
//! Mapping: `type` is the action; the `partitionkey` extension, else `subject`, is the key;
//! `sequence`, `correlationid` and `causationid` extensions fill the matching fields; every other
//! attribute is kept and given back. `specversion` (`1.0`) and `type` are required; a missing
//! `id` is generated (UUIDv7) and a missing `source` is `/inorder`. JSON `data` is stored byte for
//! byte as sent (see [`members`]). Events going out — structured in reads and pulls, binary in
//! webhook requests ([`binary_headers`]) — carry every attribute they came in with, plus
//! `position`, `commit` (the node-wide commit position, an integer) and `partitionkey`.
//! `position` and `commit` are the engine's: sent in, they are ignored (a read event can be
//! published again as it is).

use std::str::FromStr;

use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use inorder::{Event, EventBuilder, ExtensionValue};
use serde_json::{Value, error::Category, value::RawValue};

mod members;
mod out;

use members::{Items, Members};

#[cfg(test)]
pub use self::out::render;
pub use self::out::{Structured, binary_headers};

use crate::limits::{EVENT_CORE_MEMBERS_MAX, EVENT_SOURCE_DEFAULT};

/// Why a request is not a CloudEvent (answered 400 `invalid-cloudevent`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

fn invalid(message: impl Into<String>) -> InvalidEvent {
    InvalidEvent(message.into())
}

/// Attributes with a meaning of their own (not kept as extensions), in the order
/// `from_members` unpacks them.
const CORE: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Extensions with a meaning of their own (they fill the event's fields).
const MAPPED_EXTENSIONS: [&str; 4] = ["partitionkey", "sequence", "correlationid", "causationid"];

const _: () = assert!(CORE.len() + MAPPED_EXTENSIONS.len() <= EVENT_CORE_MEMBERS_MAX);

/// One event in structured mode.
///
/// # Errors
/// [`InvalidEvent`] naming the attribute.
pub fn parse_structured(body: &[u8], topic: &str) -> Result<Event, InvalidEvent> {
    let members = serde_json::from_slice::<Members<'_>>(body).map_err(|e| match e.classify() {
        Category::Data => invalid(format!("a structured CloudEvent must be a JSON object: {e}")),
        _ => invalid(format!("malformed JSON: {e}")),
    })?;
    from_members(members, topic)
}

/// A batch (a JSON array of structured events). One bad event refuses the batch.
///
/// # Errors
/// [`InvalidEvent`] naming the index and attribute.
pub fn parse_batch(body: &[u8], topic: &str) -> Result<Vec<Event>, InvalidEvent> {
    let Items(items) = serde_json::from_slice(body).map_err(|e| match e.classify() {
        Category::Data => invalid(format!("a CloudEvents batch must be a JSON array: {e}")),
        _ => invalid(format!("malformed JSON: {e}")),
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_str::<Members<'_>>(item.get())
                .map_err(|e| invalid(format!("event {i}: not a JSON object: {e}")))
                .and_then(|members| from_members(members, topic))
                .map_err(|e| invalid(format!("event {i}: {e}")))
        })
        .collect()
}

/// A string attribute (`null` is absent).
fn text(name: &str, raw: Option<&RawValue>) -> Result<Option<String>, InvalidEvent> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(json) => serde_json::from_str::<String>(json)
            .map(Some)
            .map_err(|_| invalid(format!("{name} must be a string, got {json}"))),
    }
}

fn from_members(Members(members): Members<'_>, topic: &str) -> Result<Event, InvalidEvent> {
    let mut core: [Option<&RawValue>; CORE.len()] = [None; CORE.len()];
    let mut others = Vec::new();
    for (name, raw) in members {
        match CORE.iter().position(|core| *core == name) {
            Some(index) => core[index] = Some(raw),
            None => others.push((name, raw)),
        }
    }
    let [specversion, id, source, action, subject, time, content_type, schema, data, data_base64] =
        core;
    match text("specversion", specversion)?.as_deref() {
        Some("1.0") => {}
        Some(other) => return Err(invalid(format!("specversion must be \"1.0\", got {other:?}"))),
        None => return Err(invalid("specversion is required")),
    }
    let action = text("type", action)?.ok_or_else(|| invalid("type is required"))?;
    let content_type = text("datacontenttype", content_type)?;
    let data = match (data.map(RawValue::get), text("data_base64", data_base64)?) {
        (Some(_), Some(_)) => return Err(invalid("data and data_base64 are mutually exclusive")),
        (None | Some("null"), None) => Bytes::new(),
        (None, Some(encoded)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| invalid(format!("data_base64: {e}")))?,
        ),
        (Some(json), None) if json.starts_with('"') && !is_json(content_type.as_deref()) => {
            Bytes::from(text("data", data)?.unwrap_or_default())
        }
        // JSON data is kept byte for byte as sent.
        (Some(json), None) => Bytes::copy_from_slice(json.as_bytes()),
    };
    let mut extensions = Vec::with_capacity(others.len());
    for (name, raw) in others {
        let value = match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(text)) => ExtensionValue::String(text),
            Ok(Value::Bool(flag)) => ExtensionValue::Boolean(flag),
            Ok(Value::Number(number)) => {
                ExtensionValue::Integer(number.as_i64().ok_or_else(|| {
                    invalid(format!("extension {name}: only integers are allowed"))
                })?)
            }
            _ => {
                return Err(invalid(format!(
                    "extension {name}: must be a string, integer or boolean, got {}",
                    raw.get()
                )));
            }
        };
        extensions.push((name.into_owned(), value));
    }
    let parts = Parts {
        topic,
        action,
        id: text("id", id)?,
        source: text("source", source)?,
        subject: text("subject", subject)?,
        time: text("time", time)?,
        content_type,
        schema: text("dataschema", schema)?,
        data,
        extensions,
    };
    parts.build()
}

/// One event in binary mode.
///
/// # Errors
/// [`InvalidEvent`] naming the header.
pub fn parse_binary(headers: &HeaderMap, body: Bytes, topic: &str) -> Result<Event, InvalidEvent> {
    let header = |name: &str| -> Result<Option<String>, InvalidEvent> {
        headers
            .get(name)
            .map(|value| {
                let raw =
                    value.to_str().map_err(|_| invalid(format!("header {name} is not text")))?;
                percent_decode(raw)
                    .ok_or_else(|| invalid(format!("header {name}: bad percent-encoding")))
            })
            .transpose()
    };
    match header("ce-specversion")?.as_deref() {
        Some("1.0") => {}
        Some(other) => return Err(invalid(format!("ce-specversion must be 1.0, got {other:?}"))),
        None => return Err(invalid("ce-specversion is required")),
    }
    let mut extensions = Vec::new();
    for (name, _) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else { continue };
        if CORE.contains(&attribute) {
            continue;
        }
        let value = header(name.as_str())?.unwrap_or_default();
        extensions.push((attribute.to_owned(), ExtensionValue::String(value)));
    }
    let parts = Parts {
        topic,
        action: header("ce-type")?.ok_or_else(|| invalid("ce-type is required"))?,
        id: header("ce-id")?,
        source: header("ce-source")?,
        subject: header("ce-subject")?,
        time: header("ce-time")?,
        content_type: header("content-type")?,
        schema: header("ce-dataschema")?,
        data: body,
        extensions,
    };
    parts.build()
}

struct Parts<'a> {
    topic: &'a str,
    action: String,
    id: Option<String>,
    source: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    content_type: Option<String>,
    schema: Option<String>,
    data: Bytes,
    extensions: Vec<(String, ExtensionValue)>,
}

/// Attributes the engine sets on events going out; ignored on events coming in.
const ENGINE_ATTRIBUTES: [&str; 2] = ["position", "commit"];

impl Parts<'_> {
    fn build(mut self) -> Result<Event, InvalidEvent> {
        self.extensions.retain(|(name, _)| !ENGINE_ATTRIBUTES.contains(&name.as_str()));
        let mut key = self.subject.clone().unwrap_or_default();
        let mut builder: EventBuilder = Event::builder(self.topic, String::new(), self.action)
            .source(self.source.unwrap_or_else(|| EVENT_SOURCE_DEFAULT.to_owned()))
            .data(self.data, self.content_type);
        if let Some(id) = self.id {
            builder = builder.id(id);
        }
        if let Some(subject) = self.subject {
            builder = builder.subject(subject);
        }
        if let Some(schema) = self.schema {
            builder = builder.data_schema(schema);
        }
        if let Some(time) = self.time {
            let timestamp = jiff::Timestamp::from_str(&time)
                .map_err(|e| invalid(format!("time must be RFC 3339, got {time:?}: {e}")))?;
            builder = builder.time_micros(timestamp.as_microsecond());
        }
        for (name, value) in self.extensions {
            builder = match (name.as_str(), value) {
                ("partitionkey", ExtensionValue::String(text)) => {
                    key = text;
                    builder
                }
                ("partitionkey", _) => return Err(invalid("partitionkey must be a string")),
                ("sequence", ExtensionValue::Integer(n)) => builder.sequence(
                    u64::try_from(n).map_err(|_| invalid("sequence must not be negative"))?,
                ),
                ("sequence", ExtensionValue::String(text)) => builder
                    .sequence(text.parse().map_err(|_| {
                        invalid(format!("sequence must be a number, got {text:?}"))
                    })?),
                ("correlationid", ExtensionValue::String(text)) => builder.correlation_id(text),
                ("causationid", ExtensionValue::String(text)) => builder.causation_id(text),
                (_, value) => builder.extension(name, value),
            };
        }
        let mut event = builder.build().map_err(|e| match e {
            inorder::Error::InvalidName(_) => {
                invalid(format!("invalid topic name {:?}", self.topic))
            }
            other => invalid(other.to_string()),
        })?;
        event.key = key;
        event.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(event)
    }
}

/// The essence of a media type: `application/json` of `application/json; charset=utf-8`. Media
/// types are case-insensitive: compare it with `eq_ignore_ascii_case`.
pub(crate) fn media_type_essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

/// Whether data of this content type is JSON (no content type is JSON, as CloudEvents says).
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|media_type| {
        let essence = media_type_essence(media_type);
        let suffix = essence.len().checked_sub("+json".len()).and_then(|at| essence.get(at..));
        essence.eq_ignore_ascii_case("application/json")
            || essence.eq_ignore_ascii_case("text/json")
            || suffix.is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
    })
}

/// Decodes `%XX` escapes (the CloudEvents HTTP binding's header encoding).
fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_structured_event_round_trips_with_every_attribute() {
        let body = json!({
            "specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.created",
            "subject": "s-1", "time": "2026-11-23T10:00:00.123456Z", "datacontenttype": "application/json",
            "dataschema": "https://example.com/order", "data": {"total": 12},
            "partitionkey": "o-7", "sequence": "3", "correlationid": "c-1", "tenant": "acme", "priority": 5,
        });
        let event = parse_structured(body.to_string().as_bytes(), "orders").unwrap();
        assert_eq!(
            (event.key.as_str(), event.action.as_str(), event.sequence),
            ("o-7", "order.created", Some(3))
        );
        let mut out = render(&event);
        assert_eq!((&out["position"], &out["commit"]), (&json!(0), &json!(0)));
        out.as_object_mut().unwrap().remove("position");
        out.as_object_mut().unwrap().remove("commit");
        assert_eq!(out, body);
    }

    #[test]
    fn position_and_commit_sent_in_are_ignored_the_engine_sets_them() {
        let body = json!({
            "specversion": "1.0", "type": "order.created", "source": "/shop",
            "position": 999, "commit": 12345, "partitionkey": "o-1",
        });
        let mut event = parse_structured(body.to_string().as_bytes(), "orders").unwrap();
        assert!(event.extensions.is_empty(), "{:?}", event.extensions);
        (event.position, event.commit) = (7, 42);
        let out = render(&event);
        assert_eq!((&out["position"], &out["commit"]), (&json!(7), &json!(42)));
        let mut headers = HeaderMap::new();
        for (name, value) in [("ce-specversion", "1.0"), ("ce-type", "a"), ("ce-commit", "5")] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let event = parse_binary(&headers, Bytes::new(), "orders").unwrap();
        assert!(event.extensions.is_empty(), "{:?}", event.extensions);
    }

    #[test]
    fn media_types_are_compared_without_case_or_parameters() {
        for json in [None, Some("application/json"), Some("Application/JSON; charset=utf-8")] {
            assert!(is_json(json), "{json:?}");
        }
        for json in ["text/json", "application/cloudevents+JSON", " application/ld+json ;x=1"] {
            assert!(is_json(Some(json)), "{json}");
        }
        for other in ["text/plain", "json", "+jso", "application/octet-stream", ""] {
            assert!(!is_json(Some(other)), "{other}");
        }
        assert_eq!(media_type_essence(" text/plain ; charset=utf-8"), "text/plain");
    }

    #[test]
    fn the_key_falls_back_to_the_subject() {
        let body = json!({"specversion": "1.0", "type": "a", "subject": "s-9"});
        assert_eq!(parse_structured(body.to_string().as_bytes(), "t").unwrap().key, "s-9");
    }

    #[test]
    fn text_and_binary_data_keep_their_form() {
        let text = json!({"specversion": "1.0", "type": "a", "datacontenttype": "text/plain", "data": "hi"});
        let event = parse_structured(text.to_string().as_bytes(), "t").unwrap();
        assert_eq!(event.data, "hi");
        assert_eq!(render(&event)["data"], "hi");
        let binary = json!({"specversion": "1.0", "type": "a", "datacontenttype": "application/octet-stream", "data_base64": "AP8="});
        let event = parse_structured(binary.to_string().as_bytes(), "t").unwrap();
        assert_eq!(event.data.as_ref(), [0, 255]);
        assert_eq!(render(&event)["data_base64"], "AP8=");
    }

    #[test]
    fn bad_events_name_what_is_wrong() {
        for (body, expect) in [
            ("{", "malformed JSON"),
            ("[]", "JSON object"),
            (r#"{"type":"a"}"#, "specversion"),
            (r#"{"specversion":"0.3","type":"a"}"#, "specversion"),
            (r#"{"specversion":"1.0"}"#, "type is required"),
            (r#"{"specversion":"1.0","type":"a","time":"yesterday"}"#, "RFC 3339"),
            (
                r#"{"specversion":"1.0","type":"a","data":1,"data_base64":"AA=="}"#,
                "mutually exclusive",
            ),
            (r#"{"specversion":"1.0","type":"a","nested":{"x":1}}"#, "extension nested"),
            (r#"{"specversion":"1.0","type":"a","sequence":"x"}"#, "sequence"),
        ] {
            let err = parse_structured(body.as_bytes(), "t").unwrap_err().to_string();
            assert!(err.contains(expect), "{body}: {err}");
        }
        let err = parse_batch(br#"[{"specversion":"1.0","type":"a"},{"specversion":"1.0"}]"#, "t")
            .unwrap_err();
        assert!(err.to_string().starts_with("event 1:"), "{err}");
    }

    #[test]
    fn binary_mode_reads_ce_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-type", "user.created"),
            ("ce-id", "b-1"),
            ("ce-source", "/users"),
            ("ce-partitionkey", "u-1"),
            ("ce-region", "eu%20west"),
            ("content-type", "application/json"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let event =
            parse_binary(&headers, Bytes::from_static(br#"{"name":"a"}"#), "users").unwrap();
        assert_eq!((event.id.as_str(), event.key.as_str()), ("b-1", "u-1"));
        assert_eq!(event.extensions["region"], ExtensionValue::String("eu west".into()));
        assert_eq!(render(&event)["data"]["name"], "a");
        headers.remove("ce-specversion");
        assert!(parse_binary(&headers, Bytes::new(), "users").is_err());
    }
}
