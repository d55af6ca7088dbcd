//! CloudEvents going out: structured (the JSON of reads and pulls, [`render`]) and binary (the
//! `ce-*` headers of a webhook request, [`binary_headers`]). Both are built from one list of an
//! event's context attributes, so every mode carries the same ones: every attribute the event
//! came in with, plus `partitionkey`, `position` and `commit`.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};
use base64::Engine as _;
use inorder::{Event, ExtensionValue};
use serde_json::{Map, Value};

use super::{InvalidEvent, invalid, is_json};

/// The context attributes of an event going out — everything but `datacontenttype`, which
/// each mode carries its own way, and `data` — with `partitionkey`, `position` and `commit`.
fn attributes(event: &Event) -> Vec<(&str, Value)> {
    let mut attributes: Vec<(&str, Value)> = Vec::with_capacity(16 + event.extensions.len());
    attributes.push(("specversion", "1.0".into()));
    attributes.push(("id", event.id.as_str().into()));
    attributes.push(("source", event.source.as_str().into()));
    attributes.push(("type", event.action.as_str().into()));
    if let Ok(time) = jiff::Timestamp::from_microsecond(event.time_micros) {
        attributes.push(("time", time.to_string().into()));
    }
    let optional = [
        ("subject", &event.subject),
        ("dataschema", &event.data_schema),
        ("correlationid", &event.correlation_id),
        ("causationid", &event.causation_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            attributes.push((name, value.as_str().into()));
        }
    }
    attributes.push(("partitionkey", event.key.as_str().into()));
    if let Some(sequence) = event.sequence {
        attributes.push(("sequence", sequence.to_string().into()));
    }
    for (name, value) in &event.extensions {
        let value = match value {
            ExtensionValue::String(text) => Value::from(text.as_str()),
            ExtensionValue::Integer(n) => Value::from(*n),
            ExtensionValue::Boolean(flag) => Value::from(*flag),
        };
        attributes.push((name, value));
    }
    attributes.push(("position", event.position.into()));
    attributes.push(("commit", event.commit.into()));
    attributes
}

/// An event as a structured CloudEvent, with `position`, `commit` and `partitionkey`.
#[must_use]
pub fn render(event: &Event) -> Value {
    let mut object: Map<String, Value> =
        attributes(event).into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    if let Some(content_type) = &event.data_content_type {
        object.insert("datacontenttype".into(), content_type.clone().into());
    }
    if !event.data.is_empty() {
        let json = is_json(event.data_content_type.as_deref())
            .then(|| serde_json::from_slice::<Value>(&event.data).ok())
            .flatten();
        match (json, std::str::from_utf8(&event.data)) {
            (Some(value), _) => object.insert("data".into(), value),
            (None, Ok(text)) => object.insert("data".into(), text.into()),
            (None, Err(_)) => object.insert(
                "data_base64".into(),
                base64::engine::general_purpose::STANDARD.encode(&event.data).into(),
            ),
        };
    }
    Value::Object(object)
}

/// The headers of an event going out in binary mode (a webhook's request; the body is `data` as
/// stored): every attribute [`render`] writes as a `ce-` header, percent-encoded as the HTTP
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
        let text = match value {
            Value::String(text) => text,
            other => other.to_string(),
        };
        headers.insert(header, header_value(&percent_encode(&text)));
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
