//! The CLI's client commands (they talk to a running server) and the in-process demo.

use std::{
    io::{BufRead, IsTerminal},
    sync::Arc,
};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use inorder::{
    Engine, EngineConfig, Event, Ordering, Reply, SubscriptionConfig, TopicConfig, handler_fn,
    limits::PARKED_LIST_MAX,
};
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    client::Client,
    limits::{
        DEMO_HANDLER_DELAY, DEMO_TIMEOUT, DEMO_USERS_MAX, PUBLISH_STDIN_BATCH_EVENTS,
        TAIL_FOLLOW_WAIT, TAIL_READ_EVENTS,
    },
};

/// What `inorder publish` sends.
pub struct PublishArgs {
    /// Topic.
    pub topic: String,
    /// Key (`partitionkey`).
    pub key: Option<String>,
    /// Action (`type`).
    pub action: Option<String>,
    /// Event id.
    pub id: Option<String>,
    /// JSON data; `None` reads one JSON value per line from stdin.
    pub data: Option<String>,
}

fn cloudevent(args: &PublishArgs, data: Value, id: Option<&str>) -> anyhow::Result<Value> {
    if data.get("specversion").is_some() {
        return Ok(data); // already a CloudEvent
    }
    let action =
        args.action.as_deref().context("--action is required unless the input is a CloudEvent")?;
    let mut event = json!({
        "specversion": "1.0", "type": action, "source": "/inorder/cli",
        "datacontenttype": "application/json", "data": data,
    });
    if let Some(key) = &args.key {
        event["partitionkey"] = key.clone().into();
    }
    if let Some(id) = id {
        event["id"] = id.into();
    }
    Ok(event)
}

/// `inorder publish`: one event, or one per stdin line (in batches, with a progress bar).
pub async fn publish(client: &Client, args: PublishArgs) -> anyhow::Result<()> {
    let path = format!("/v1/topics/{}/events", args.topic);
    if let Some(data) = &args.data {
        let data: Value = serde_json::from_str(data).context("the event data must be JSON")?;
        let event = cloudevent(&args, data, args.id.as_deref())?;
        let request = client
            .request(Method::POST, &path)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string());
        let (_, answer) = client.send(request).await?;
        println!("{}/{}", args.topic, answer["position"]);
        return Ok(());
    }
    if std::io::stdin().is_terminal() {
        bail!("give the event data as an argument, or pipe one JSON value per line");
    }
    let progress = ProgressBar::new_spinner();
    progress.set_style(ProgressStyle::with_template(
        "{spinner} {pos} events published ({per_sec}) {msg}",
    )?);
    let mut batch = Vec::with_capacity(PUBLISH_STDIN_BATCH_EVENTS);
    let (mut first, mut last) = (None, None);
    let flush = |batch: &mut Vec<Value>| {
        let body = Value::Array(std::mem::take(batch)).to_string();
        client
            .request(Method::POST, &format!("{path}:batch"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(body)
    };
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let data: Value = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not JSON", number + 1))?;
        batch.push(cloudevent(&args, data, None)?);
        if batch.len() == PUBLISH_STDIN_BATCH_EVENTS {
            let (_, answer) = client.send(flush(&mut batch)).await?;
            note_positions(&answer, &mut first, &mut last, &progress);
        }
    }
    if !batch.is_empty() {
        let (_, answer) = client.send(flush(&mut batch)).await?;
        note_positions(&answer, &mut first, &mut last, &progress);
    }
    progress.finish_with_message(match (first, last) {
        (Some(first), Some(last)) => format!("— positions {first}..={last} of {}", args.topic),
        _ => "— nothing read from stdin".to_owned(),
    });
    Ok(())
}

fn note_positions(
    answer: &Value,
    first: &mut Option<u64>,
    last: &mut Option<u64>,
    progress: &ProgressBar,
) {
    let positions: Vec<u64> =
        answer["positions"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    first.get_or_insert(positions.first().copied().unwrap_or_default());
    *last = positions.last().copied().or(*last);
    progress.inc(positions.len() as u64);
}

/// `inorder tail`: prints events as JSON lines from `from` (of one topic, or without one every
/// topic in commit order); with `follow`, waits for more.
pub async fn tail(
    client: &Client,
    topic: Option<&str>,
    mut from: u64,
    follow: bool,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let mut printed = 0u64;
    loop {
        let wait = match follow {
            true => format!("&wait={}", humantime::format_duration(TAIL_FOLLOW_WAIT)),
            false => String::new(),
        };
        let path = match topic {
            Some(topic) => {
                format!("/v1/topics/{topic}/events?from={from}&limit={TAIL_READ_EVENTS}{wait}")
            }
            None => format!("/v1/events?from={from}&limit={TAIL_READ_EVENTS}{wait}"),
        };
        let answer = client.get(&path).await?;
        let events = answer["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            println!("{event}");
            printed += 1;
            if limit.is_some_and(|limit| printed >= limit) {
                return Ok(());
            }
        }
        from = answer["next"].as_u64().unwrap_or(from);
        if events.is_empty() && !follow {
            return Ok(());
        }
    }
}

/// What `inorder status` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAnswer {
    /// Processed (exit code 0).
    Processed,
    /// Not yet (exit code 2).
    NotYet,
    /// Parked or discarded: it will not be processed unless an operator retries it (exit code 3).
    Parked,
}

/// `inorder status TOPIC/POSITION`: processed, not yet, or parked (and why).
pub async fn status(
    client: &Client,
    target: &str,
    wait: Option<&str>,
    subscription: Option<&str>,
) -> anyhow::Result<StatusAnswer> {
    let (topic, position) = target.rsplit_once('/').context("give the target as TOPIC/POSITION")?;
    let mut path = format!("/v1/status/{topic}/{position}?");
    if let Some(wait) = wait {
        path.push_str(&format!("wait={wait}&"));
    }
    if let Some(subscription) = subscription {
        path.push_str(&format!("subscription={subscription}"));
    }
    let answers = [StatusCode::TOO_EARLY, StatusCode::CONFLICT];
    let (status, body) =
        client.send_answering(client.request(Method::GET, &path), &answers).await?;
    let answer = match StatusCode::from_u16(status) {
        Ok(StatusCode::OK) => StatusAnswer::Processed,
        Ok(StatusCode::CONFLICT) => StatusAnswer::Parked,
        _ => StatusAnswer::NotYet,
    };
    match answer {
        StatusAnswer::Processed => println!("{topic}/{position}: processed"),
        StatusAnswer::NotYet => println!("{topic}/{position}: not processed yet"),
        StatusAnswer::Parked => println!(
            "{topic}/{position}: parked ({})",
            body["detail"].as_str().unwrap_or("no detail")
        ),
    }
    Ok(answer)
}

/// `inorder topics`.
pub async fn topics(client: &Client) -> anyhow::Result<()> {
    let answer = client.get("/v1/topics").await?;
    println!("{:<32} {:>10} {:>10}  subscriptions", "topic", "first", "last");
    for topic in answer["topics"].as_array().into_iter().flatten() {
        let subscriptions: Vec<&str> = topic["subscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<32} {:>10} {:>10}  {}",
            topic["name"].as_str().unwrap_or_default(),
            cell(&topic["first_position"]),
            cell(&topic["last_position"]),
            subscriptions.join(", ")
        );
    }
    Ok(())
}

/// `inorder subscriptions`: one line per stream, its state last, followed by its error when it
/// is not running.
pub async fn subscriptions(client: &Client) -> anyhow::Result<()> {
    let answer = client.get("/v1/subscriptions").await?;
    println!(
        "{:<24} {:<24} {:>10} {:>10} {:>8} {:>9} {:>7}  state",
        "subscription", "topic", "watermark", "last", "lag", "in-flight", "parked"
    );
    for subscription in answer["subscriptions"].as_array().into_iter().flatten() {
        for topic in subscription["topics"].as_array().into_iter().flatten() {
            let state = topic["state"].as_str().unwrap_or("unknown");
            let error = topic["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
            println!(
                "{:<24} {:<24} {:>10} {:>10} {:>8} {:>9} {:>7}  {state}{error}",
                subscription["name"].as_str().unwrap_or_default(),
                topic["topic"].as_str().unwrap_or_default(),
                cell(&topic["watermark"]),
                cell(&topic["last_position"]),
                cell(&topic["lag"]),
                cell(&topic["in_flight"]),
                cell(&topic["parked"])
            );
        }
    }
    Ok(())
}

/// A JSON value as a table cell: `Value`'s own `Display` ignores the column width.
fn cell(value: &Value) -> String {
    value.to_string()
}

/// `inorder parked list|retry|discard`.
pub async fn parked(
    client: &Client,
    subscription: &str,
    action: &str,
    id: Option<&str>,
) -> anyhow::Result<()> {
    match (action, id) {
        ("list", _) => {
            let answer = client
                .get(&format!("/v1/subscriptions/{subscription}/parked?limit={PARKED_LIST_MAX}"))
                .await?;
            for parked in answer["parked"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} {:<18} key={} action={} attempts={} {}",
                    parked["id"].as_str().unwrap_or_default(),
                    parked["reason"].as_str().unwrap_or_default(),
                    parked["key"].as_str().unwrap_or_default(),
                    parked["action"].as_str().unwrap_or_default(),
                    parked["attempts"],
                    parked["error"].as_str().unwrap_or_default()
                );
            }
        }
        ("retry", Some(id)) => {
            client
                .send(client.request(
                    Method::POST,
                    &format!("/v1/subscriptions/{subscription}/parked/{id}/retry"),
                ))
                .await?;
            println!("retrying {id}");
        }
        ("discard", Some(id)) => {
            client
                .send(client.request(
                    Method::DELETE,
                    &format!("/v1/subscriptions/{subscription}/parked/{id}"),
                ))
                .await?;
            println!("discarded {id}");
        }
        (_, None) => bail!("{action} needs the parked event's id (topic:position)"),
        (other, _) => bail!("unknown parked action {other}"),
    }
    Ok(())
}

/// `inorder demo`: the Seqy purchase flow in-process. Several users' three actions are published
/// out of order; the handler sees each user's actions in order.
pub async fn demo(users: usize) -> anyhow::Result<()> {
    const ACTIONS: [&str; 3] = ["user.created", "user.purchased", "user.paid"];
    let dir = tempfile::tempdir()?;
    let config = EngineConfig::new(dir.path())
        .topic(TopicConfig::new("user_purchase").actions(ACTIONS))
        .subscription(
            SubscriptionConfig::new("purchases", ["user_purchase"]).ordering(Ordering::Actions),
        );
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let recorded = Arc::clone(&seen);
    let handler = handler_fn(move |event: Event, _| {
        let recorded = Arc::clone(&recorded);
        async move {
            println!(
                "  handled    {:<8} {:<15} (position {})",
                event.key, event.action, event.position
            );
            recorded.lock().push((event.key.clone(), event.action.clone()));
            tokio::time::sleep(DEMO_HANDLER_DELAY).await;
            Ok(Reply::Null)
        }
    });
    let engine = Engine::builder(config).handler("purchases", handler).start().await?;
    let names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
    let users: Vec<&str> =
        names.iter().copied().cycle().take(users.clamp(1, DEMO_USERS_MAX)).collect();
    // Each user gets another out-of-order permutation; users are interleaved.
    let orders = [[2, 1, 0], [1, 2, 0], [2, 0, 1], [0, 2, 1], [1, 0, 2]];
    println!("Topic user_purchase requires, per user: {}.", ACTIONS.join(" → "));
    println!("Publishing each user's actions out of order:");
    let mut last = 0;
    for step in 0..3 {
        for (i, user) in users.iter().enumerate() {
            let action = ACTIONS[orders[i % orders.len()][step]];
            let key =
                if users.len() > names.len() { format!("{user}-{i}") } else { (*user).to_owned() };
            last = engine
                .publish(Event::builder("user_purchase", key.clone(), action).build()?)
                .await?;
            println!("  published  {key:<8} {action:<15} (position {last})");
        }
    }
    if !engine.wait_processed("user_purchase", last, None, DEMO_TIMEOUT).await? {
        bail!("the demo did not finish in {}", humantime::format_duration(DEMO_TIMEOUT));
    }
    println!("Order each user's handler saw:");
    let seen = seen.lock().clone();
    let mut all_in_order = true;
    let mut keys: Vec<&String> = seen.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let actions: Vec<&str> =
            seen.iter().filter(|(k, _)| k == key).map(|(_, a)| a.as_str()).collect();
        let in_order = actions == ACTIONS;
        all_in_order &= in_order;
        println!("  {key:<8} {}  {}", actions.join(" → "), if in_order { "✓" } else { "✗" });
    }
    engine.shutdown().await;
    if !all_in_order {
        bail!("an out-of-order delivery: this is a bug");
    }
    println!("Every user's actions were handled in order, each once.");
    Ok(())
}
