//! Topics, subscriptions and parked events.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use inorder::{Name, ParkedEvent, StreamHealth};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, name};
use crate::{limits::PARKED_LIST_DEFAULT, problem::Problem};

/// `GET /v1/topics`.
pub async fn topics(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let topics: Vec<Value> = state
        .engine
        .topics()
        .await?
        .into_iter()
        .map(|t| {
            json!({
                "name": t.name, "first_position": t.first_position, "last_position": t.last_position,
                "actions": t.actions, "subscriptions": t.subscriptions,
                "events": (t.last_position + 1).saturating_sub(t.first_position), "bytes": t.bytes,
                "retention": {
                    "max_age": t.retention.max_age.map(|age| humantime::format_duration(age).to_string()),
                    "max_bytes": t.retention.max_bytes, "max_events": t.retention.max_events,
                    "until_consumed": t.retention.until_consumed,
                },
            })
        })
        .collect();
    Ok(Json(json!({ "topics": topics })).into_response())
}

/// `GET /v1/subscriptions`: per topic stream its health (`state`, `error`, `restarts` while
/// retrying), position, watermark, lag, in-flight, parked and discarded counts; per
/// subscription the worst state of its streams, whether it is paused and declared in the file.
pub async fn subscriptions(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let list = subscriptions_json(&state).await?;
    Ok(Json(json!({ "subscriptions": list })).into_response())
}

/// Every subscription as `GET /v1/subscriptions` lists it.
pub(super) async fn subscriptions_json(state: &AppState) -> Result<Vec<Value>, Problem> {
    let mut list = Vec::new();
    for info in state.engine.subscriptions().await? {
        let streams: Vec<Value> = info
            .streams
            .iter()
            .map(|s| {
                let health = &s.status.health;
                let mut stream = json!({
                    "topic": s.topic, "state": health.as_str(), "error": health.error(),
                    "position": s.status.read_position.saturating_sub(1),
                    "watermark": s.status.watermark, "last_position": s.last_position, "lag": s.lag,
                    "in_flight": s.status.pending, "live_workers": s.status.live_workers,
                    "parked": s.status.parked, "discarded": s.status.discarded,
                });
                if let StreamHealth::Retrying { restarts, .. } = health {
                    stream["restarts"] = json!(restarts);
                }
                stream
            })
            .collect();
        let overall = overall_state(info.streams.iter().map(|s| &s.status.health));
        let (offered, leased) = state.deliveries.pull(&info.name).map_or((0, 0), |q| q.sizes());
        list.push(json!({
            "name": info.name, "state": overall,
            "ordering": format!("{:?}", info.ordering).to_lowercase(),
            "delivery": state.deliveries.kind(&info.name).unwrap_or("handler"),
            "paused": state.engine.is_paused(&info.name).unwrap_or(false),
            "declared": state.manager.declared("subscription", &info.name),
            "topics": streams, "handled": info.handled, "failed_attempts": info.failed_attempts,
            "parked_since_start": info.parked, "offered": offered, "leased": leased,
            "skipped_by_retention_since_start": info.skipped_by_retention,
        }));
    }
    Ok(list)
}

/// A subscription's state: the worst of its streams' (failed > retrying > running > remote: in
/// cluster mode, partitions other nodes hold); `running` without streams (a pattern that matches
/// no topic yet).
fn overall_state<'a>(streams: impl IntoIterator<Item = &'a StreamHealth>) -> &'static str {
    let severity = |health: &&StreamHealth| match health {
        StreamHealth::Remote => 0,
        StreamHealth::Running => 1,
        StreamHealth::Retrying { .. } => 2,
        StreamHealth::Failed { .. } => 3,
    };
    streams.into_iter().max_by_key(severity).map_or("running", StreamHealth::as_str)
}

/// Query of the parked listing.
#[derive(Debug, Deserialize)]
pub struct ParkedQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// A parked event's id in URLs: `{topic}:{position}`.
pub(super) fn parked_id(parked: &ParkedEvent) -> String {
    format!("{}:{}", parked.topic, parked.position)
}

fn parse_parked_id(id: &str) -> Result<(Name, u64), Problem> {
    let bad =
        || Problem::invalid_request(format!("a parked event id is topic:position, got {id:?}"));
    let (topic, position) = id.rsplit_once(':').ok_or_else(bad)?;
    Ok((name("topic", topic)?, position.parse().map_err(|_| bad())?))
}

/// `GET /v1/subscriptions/{name}/parked?after=topic:position&limit=N`.
pub async fn parked(
    State(state): State<Arc<AppState>>,
    Path(subscription): Path<String>,
    query: Result<Query<ParkedQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    let Query(query) = query.map_err(|e| Problem::invalid_request(e.body_text()))?;
    let after = query.after.as_deref().map(parse_parked_id).transpose()?;
    let limit =
        query.limit.unwrap_or(PARKED_LIST_DEFAULT).clamp(1, inorder::limits::PARKED_LIST_MAX);
    let parked = state.engine.parked(&subscription, after, limit).await?;
    let next = (parked.len() == limit).then(|| parked.last().map(parked_id)).flatten();
    let items: Vec<Value> = parked
        .iter()
        .map(|p| {
            json!({
                "id": parked_id(p), "topic": p.topic.as_str(), "position": p.position, "event_id": p.event_id,
                "key": p.key, "action": p.action, "reason": p.reason.as_str(), "error": p.error,
                "attempts": p.attempts, "parked_at": jiff::Timestamp::from_microsecond(p.parked_at_micros)
                    .map(|t| t.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(json!({ "parked": items, "next": next })).into_response())
}

/// `POST /v1/subscriptions/{name}/parked/{id}/retry`.
pub async fn retry_parked(
    State(state): State<Arc<AppState>>,
    Path((subscription, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    let (topic, position) = parse_parked_id(&id)?;
    state.engine.retry_parked(&subscription, topic.as_str(), position).await?;
    Ok(Json(json!({ "retried": id })).into_response())
}

/// `DELETE /v1/subscriptions/{name}/parked/{id}`.
pub async fn discard_parked(
    State(state): State<Arc<AppState>>,
    Path((subscription, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    name("subscription", &subscription)?;
    let (topic, position) = parse_parked_id(&id)?;
    state.engine.discard_parked(&subscription, topic.as_str(), position).await?;
    Ok(Json(json!({ "discarded": id })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_is_as_bad_as_its_worst_stream() {
        let running = StreamHealth::Running;
        let retrying = StreamHealth::Retrying { restarts: 2, error: "timed out".into() };
        let failed = StreamHealth::Failed { error: "corrupt".into() };
        let check = |streams: &[&StreamHealth], expected: &str| {
            assert_eq!(overall_state(streams.iter().copied()), expected, "{streams:?}");
        };
        check(&[], "running");
        check(&[&running, &running], "running");
        check(&[&running, &retrying, &running], "retrying");
        check(&[&failed, &retrying], "failed");
        check(&[&retrying, &running, &failed], "failed");
    }
}
