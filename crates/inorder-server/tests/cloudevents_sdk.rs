//! Interoperability with the CloudEvents Rust SDK, a client we did not write: events it builds
//! are accepted in structured and binary mode, and what the server returns parses back into the
//! same SDK events (with `position` and `commit` added).

#![allow(clippy::unwrap_used)]

mod common;

use cloudevents::{
    AttributesReader, Event, EventBuilder, EventBuilderV10,
    binding::http::{Builder, Serializer},
    message::{BinaryDeserializer, Result as MessageResult},
};
use common::{ServerProcess, client, decode, get};
use serde_json::json;

/// Collects what the SDK's binary-mode serializer writes: headers, then the body.
#[derive(Default)]
struct Collect {
    headers: Vec<(String, http::HeaderValue)>,
}

impl Builder<(Vec<(String, http::HeaderValue)>, Vec<u8>)> for Collect {
    fn header(&mut self, key: &str, value: http::HeaderValue) {
        self.headers.push((key.to_owned(), value));
    }
    fn body(
        &mut self,
        bytes: Vec<u8>,
    ) -> MessageResult<(Vec<(String, http::HeaderValue)>, Vec<u8>)> {
        Ok((std::mem::take(&mut self.headers), bytes))
    }
    fn finish(&mut self) -> MessageResult<(Vec<(String, http::HeaderValue)>, Vec<u8>)> {
        self.body(Vec::new())
    }
}

fn sdk_event(id: &str, ty: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("https://shop.example/orders")
        .ty(ty)
        .subject("o-1")
        .time("2026-11-23T10:00:00Z")
        .extension("partitionkey", "o-1")
        .extension("tenant", "acme")
        .data("application/json", json!({"total": 12, "lines": [1, 2]}))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_built_by_the_sdk_round_trip_in_structured_and_binary_mode() {
    let server = ServerProcess::start("[[topics]]\nname = \"orders\"\n");
    let structured = sdk_event("sdk-1", "order.created");
    let response = client()
        .post(server.url("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_string(&structured).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(decode(response).await, (201, json!({"position": 1})));

    let binary = sdk_event("sdk-2", "order.paid");
    let (headers, body) =
        BinaryDeserializer::deserialize_binary(binary.clone(), Serializer::new(Collect::default()))
            .unwrap();
    assert!(headers.iter().any(|(name, _)| name == "ce-partitionkey"), "{headers:?}");
    let mut request = client().post(server.url("/v1/topics/orders/events")).body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    assert_eq!(decode(request.send().await.unwrap()).await, (201, json!({"position": 2})));

    let (status, page) = get(&server, "/v1/topics/orders/events?from=1").await;
    assert_eq!(status, 200);
    let returned: Vec<Event> = serde_json::from_value(page["events"].clone()).unwrap();
    for (position, (mut back, sent)) in returned.into_iter().zip([structured, binary]).enumerate() {
        assert_eq!(
            back.extension("position").map(ToString::to_string),
            Some((position + 1).to_string())
        );
        assert_eq!(
            back.extension("commit").map(ToString::to_string),
            Some((position + 1).to_string())
        );
        back.remove_extension("position");
        back.remove_extension("commit");
        assert_eq!(back, sent, "the SDK reads back the event it sent");
        assert_eq!(back.datacontenttype(), Some("application/json"));
    }
}
