//! CloudEvents going out: structured (the JSON of reads and pulls, [`render`]) and binary (the
//! `ce-*` headers of a webhook request, [`binary_headers`]). Both are built from one list of an
//! event's context attributes, so every mode carries the same ones: every attribute the event
//! came in with, plus `partitionkey`, `position` and `commit`.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};
use base64::Engine as _;
use inorder::{Event, ExtensionValue};
use serde::{Serialize, Serializer, ser::SerializeMap};
#[cfg(test)]
use serde_json::Value;
use serde_json::value::RawValue;

use super::{InvalidEvent, invalid, is_json};

/// One context attribute's value, borrowed from the event where it can be.
enum Attr<'a> {
    Str(&'a str),
    Time(jiff::Timestamp),
    /// A number CloudEvents carries as a string (`sequence`).
    Digits(u64),
    Int(i64),
    Count(u64),
    Bool(bool),
}

impl Serialize for Attr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Str(text) => serializer.serialize_str(text),
            Self::Time(time) => serializer.collect_str(time),
            Self::Digits(n) => serializer.collect_str(n),
            Self::Int(n) => serializer.serialize_i64(*n),
            Self::Count(n) => serializer.serialize_u64(*n),
            Self::Bool(flag) => serializer.serialize_bool(*flag),
        }
    }
}

impl Attr<'_> {
    /// The value as header text.
    fn text(&self) -> String {
        match self {
            Self::Str(text) => (*text).to_owned(),
            Self::Time(time) => time.to_string(),
            Self::Digits(n) | Self::Count(n) => n.to_string(),
            Self::Int(n) => n.to_string(),
            Self::Bool(flag) => flag.to_string(),
        }
    }
}

/// The context attributes of an event going out — everything but `datacontenttype`, which
/// each mode carries its own way, and `data` — with `partitionkey`, `position` and `commit`.
fn attributes(event: &Event) -> Vec<(&str, Attr<'_>)> {
    let mut attributes: Vec<(&str, Attr<'_>)> = Vec::with_capacity(16 + event.extensions.len());
    attributes.push(("specversion", Attr::Str("1.0")));
    attributes.push(("id", Attr::Str(&event.id)));
    attributes.push(("source", Attr::Str(&event.source)));
    attributes.push(("type", Attr::Str(&event.action)));
    if let Ok(time) = jiff::Timestamp::from_microsecond(event.time_micros) {
        attributes.push(("time", Attr::Time(time)));
    }
    let optional = [
        ("subject", &event.subject),
        ("dataschema", &event.data_schema),
        ("correlationid", &event.correlation_id),
        ("causationid", &event.causation_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            attributes.push((name, Attr::Str(value)));
        }
    }
    attributes.push(("partitionkey", Attr::Str(&event.key)));
    if let Some(sequence) = event.sequence {
        attributes.push(("sequence", Attr::Digits(sequence)));
    }
    for (name, value) in &event.extensions {
        let value = match value {
            ExtensionValue::String(text) => Attr::Str(text),
            ExtensionValue::Integer(n) => Attr::Int(*n),
            ExtensionValue::Boolean(flag) => Attr::Bool(*flag),
        };
        attributes.push((name, value));
    }
    attributes.push(("position", Attr::Count(event.position)));
    attributes.push(("commit", Attr::Count(event.commit)));
    attributes
}

/// An event's data in a structured CloudEvent.
enum Data<'a> {
    /// JSON data, as stored (checked to be JSON, not re-encoded).
    Json(&'a RawValue),
    Text(&'a str),
    Base64(String),
}

/// `data` (JSON or text) or `data_base64`, and its value; `None` without data.
fn data(event: &Event) -> Option<(&'static str, Data<'_>)> {
    if event.data.is_empty() {
        return None;
    }
    let json = is_json(event.data_content_type.as_deref())
        .then(|| serde_json::from_slice::<&RawValue>(&event.data).ok())
        .flatten();
    Some(match (json, std::str::from_utf8(&event.data)) {
        (Some(raw), _) => ("data", Data::Json(raw)),
        (None, Ok(text)) => ("data", Data::Text(text)),
        (None, Err(_)) => (
            "data_base64",
            Data::Base64(base64::engine::general_purpose::STANDARD.encode(&event.data)),
        ),
    })
}

/// An event as a structured CloudEvent, serialized straight from the event (its JSON data
/// copied as stored): what reads and pulls send.
pub struct Structured<'a> {
    /// The event.
    pub event: &'a Event,
    /// Whether to add its `topic` (reads across topics do).
    pub topic: bool,
}

impl Serialize for Structured<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in attributes(event) {
            map.serialize_entry(name, &value)?;
        }
        if let Some(content_type) = &event.data_content_type {
            map.serialize_entry("datacontenttype", content_type)?;
        }
        match data(event) {
            Some((name, Data::Json(raw))) => map.serialize_entry(name, raw)?,
            Some((name, Data::Text(text))) => map.serialize_entry(name, text)?,
            Some((name, Data::Base64(encoded))) => map.serialize_entry(name, &encoded)?,
            None => {}
        }
        if self.topic {
            map.serialize_entry("topic", event.topic.as_str())?;
        }
        map.end()
    }
}

/// [`Structured`] as a [`Value`] (tests look into it).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub fn render(event: &Event) -> Value {
    serde_json::to_value(Structured { event, topic: false }).unwrap()
}

/// The headers of an event going out in binary mode (a webhook's request; the body is `data` as
/// stored): every attribute [`Structured`] writes as a `ce-` header, percent-encoded as the HTTP
/// binding asks, and `datacontenttype` as `Content-Type` (as it is) — `application/json` for data
/// without one that is JSON, as [`render`] reads it.
///
/// # Errors
/// [`InvalidEvent`] if an extension's name cannot be a header name (the engine validates
/// extension names when an event is published, so only a bug gets here).
pub fn binary_headers(event: &Event) -> Result<HeaderMap, InvalidEvent> {
    let attributes = attributes(event);
    let mut headers = HeaderMap::with_capacity(attributes.len() + 1);
    for (name, value) in attributes {
        let header = HeaderName::try_from(format!("ce-{name}"))
            .map_err(|_| invalid(format!("attribute {name:?} cannot be a ce- header")))?;
        headers.insert(header, header_value(&percent_encode(&value.text())));
    }
    let content_type = match &event.data_content_type {
        // A media type goes as it is (quotes and spaces are its syntax); one that cannot be a
        // header value at all (a line break, non-ASCII) goes percent-encoded.
        Some(content_type) => Some(
            HeaderValue::from_str(content_type)
                .unwrap_or_else(|_| header_value(&percent_encode(content_type))),
        ),
        None if !event.data.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&event.data).is_ok() =>
        {
            Some(HeaderValue::from_static("application/json"))
        }
        None => None,
    };
    if let Some(content_type) = content_type {
        headers.insert(CONTENT_TYPE, content_type);
    }
    Ok(headers)
}

/// A header value of percent-encoded text.
fn header_value(encoded: &str) -> HeaderValue {
    HeaderValue::from_str(encoded).expect("percent-encoded text is visible ASCII")
}

/// Encodes what the CloudEvents HTTP binding asks to escape in a header: space, `"`, `%` and
/// every byte outside visible ASCII (`%XX`, of the UTF-8 bytes). The binary reader decodes it.
fn percent_encode(text: &str) -> String {
    let escaped = |byte: u8| !(0x21..=0x7e).contains(&byte) || byte == b'"' || byte == b'%';
    if !text.bytes().any(escaped) {
        return text.to_owned();
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() + 16);
    for byte in text.bytes() {
        if escaped(byte) {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::cloudevent::{parse_binary, parse_structured};

    #[test]
    fn binary_headers_carry_what_a_read_renders_and_parse_back() {
        let body = json!({
            "specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.created",
            "subject": "s-1", "time": "2026-11-23T10:00:00.123456Z",
            "dataschema": "https://example.com/order", "data": {"total": 12},
            "partitionkey": "o 7 \"ü\" 100%", "sequence": "3", "correlationid": "c-1",
            "tenant": "acme", "priority": 5, "urgent": true,
        });
        let mut event = parse_structured(body.to_string().as_bytes(), "orders").unwrap();
        (event.position, event.commit) = (7, 42);
        let headers = binary_headers(&event).unwrap();
        let header = |name: &str| headers[name].to_str().unwrap();
        assert_eq!(header("ce-partitionkey"), "o%207%20%22%C3%BC%22%20100%25");
        assert_eq!((header("ce-position"), header("ce-commit")), ("7", "42"));
        assert_eq!((header("ce-priority"), header("ce-urgent")), ("5", "true"));
        assert_eq!(header("content-type"), "application/json", "JSON data without a type");
        // Every attribute of a read is a header, and nothing else is.
        let rendered = render(&event);
        let mut from_headers: Vec<String> = headers
            .keys()
            .filter_map(|name| name.as_str().strip_prefix("ce-").map(str::to_owned))
            .collect();
        from_headers.sort();
        let mut from_read: Vec<String> =
            rendered.as_object().unwrap().keys().filter(|k| *k != "data").cloned().collect();
        from_read.sort();
        assert_eq!(from_headers, from_read);
        // What the server reads in binary mode is the event sent (extensions become strings).
        let back = parse_binary(&headers, event.data.clone(), "orders").unwrap();
        assert_eq!((back.id, back.key, back.sequence), (event.id, event.key, event.sequence));
        assert_eq!((back.subject, back.time_micros), (event.subject, event.time_micros));
        assert_eq!(back.extensions["urgent"], ExtensionValue::String("true".into()));
        assert_eq!(back.data, event.data);
    }

    #[test]
    fn binary_headers_keep_a_content_type_and_leave_non_json_untyped() {
        let text = json!({"specversion": "1.0", "type": "a", "datacontenttype": "text/plain; charset=\"utf-8\"", "data": "hi"});
        let event = parse_structured(text.to_string().as_bytes(), "t").unwrap();
        let headers = binary_headers(&event).unwrap();
        assert_eq!(headers["content-type"], "text/plain; charset=\"utf-8\"");
        let mut untyped = event;
        untyped.data_content_type = None;
        untyped.data = Bytes::from_static(b"not json");
        assert!(!binary_headers(&untyped).unwrap().contains_key("content-type"));
        untyped.data = Bytes::new();
        assert!(!binary_headers(&untyped).unwrap().contains_key("content-type"));
    }
}
