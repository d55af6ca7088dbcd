//! `inorder topics create|delete` and `inorder subscriptions create|update|delete|pause|resume|
//! rewind`: the management API from the command line. A definition is JSON with the keys of
//! `inorder.toml`'s entries, given inline or as `@file.json`.

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;

/// `inorder topics …` (without one: list them).
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic, or change its retention (`PUT /v1/topics/{name}`).
    Create {
        /// The topic.
        name: String,
        /// Its definition: JSON with the keys of `[[topics]]` (`{"retention": {"max_age":
        /// "7d"}}`), or `@file.json`.
        #[arg(long)]
        definition: Option<String>,
    },
    /// Delete a topic and its events.
    Delete {
        /// The topic.
        name: String,
        /// Delete it even though subscriptions consume it.
        #[arg(long)]
        force: bool,
    },
}

/// `inorder subscriptions …` (without one: list them).
#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// Create a subscription (`PUT /v1/subscriptions/{name}`).
    Create {
        /// The subscription.
        name: String,
        /// Its definition: JSON with the keys of `[[subscriptions]]` (`{"topics": ["orders"],
        /// "ordering": "fifo"}`), or `@file.json`.
        #[arg(long)]
        definition: String,
    },
    /// Change keys of a subscription made through the API (`PATCH`; `null` removes a key).
    Update {
        /// The subscription.
        name: String,
        /// The keys to change, as JSON, or `@file.json`.
        #[arg(long)]
        definition: String,
    },
    /// Delete a subscription and its progress.
    Delete {
        /// The subscription.
        name: String,
    },
    /// Start no handler call until resumed (kept through restarts).
    Pause {
        /// The subscription.
        name: String,
    },
    /// Resume a paused subscription.
    Resume {
        /// The subscription.
        name: String,
    },
    /// Handle events again from a position or a time.
    Rewind {
        /// The subscription.
        name: String,
        /// The first position handled again.
        #[arg(long, conflicts_with = "time", required_unless_present = "time")]
        position: Option<u64>,
        /// The topic of --position (for a subscription of several topics).
        #[arg(long, requires = "position")]
        topic: Option<String>,
        /// From the first event at or after this RFC 3339 time, in every topic.
        #[arg(long)]
        time: Option<String>,
    },
}

/// A definition given inline or as `@path`.
fn definition(raw: Option<&str>) -> anyhow::Result<Value> {
    let Some(raw) = raw else { return Ok(json!({})) };
    let text = match raw.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => raw.to_owned(),
    };
    serde_json::from_str(&text).context("the definition is not JSON")
}

/// Runs a topics subcommand.
pub async fn topics(client: &Client, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::Create { name, definition: raw } => {
            let body = definition(raw.as_deref())?;
            let request = client.request(Method::PUT, &format!("/v1/topics/{name}")).json(&body);
            let (status, answer) = client.send(request).await?;
            let verb = if status == 201 { "created" } else { "kept" };
            println!("topic {name} {verb}: {answer}");
        }
        TopicsCommand::Delete { name, force } => {
            let path = format!("/v1/topics/{name}{}", if force { "?force=true" } else { "" });
            client.send(client.request(Method::DELETE, &path)).await?;
            println!("topic {name} deleted");
        }
    }
    Ok(())
}

/// Runs a subscriptions subcommand.
pub async fn subscriptions(client: &Client, command: SubscriptionsCommand) -> anyhow::Result<()> {
    let path = |name: &str, suffix: &str| format!("/v1/subscriptions/{name}{suffix}");
    match command {
        SubscriptionsCommand::Create { name, definition: raw } => {
            let body = definition(Some(&raw))?;
            let request = client.request(Method::PUT, &path(&name, "")).json(&body);
            let (status, answer) = client.send(request).await?;
            let verb = if status == 201 { "created" } else { "kept" };
            println!("subscription {name} {verb}: {answer}");
        }
        SubscriptionsCommand::Update { name, definition: raw } => {
            let body = definition(Some(&raw))?;
            let request = client.request(Method::PATCH, &path(&name, "")).json(&body);
            let (_, answer) = client.send(request).await?;
            println!("subscription {name} updated: {answer}");
        }
        SubscriptionsCommand::Delete { name } => {
            client.send(client.request(Method::DELETE, &path(&name, ""))).await?;
            println!("subscription {name} deleted");
        }
        SubscriptionsCommand::Pause { name } => {
            client.send(client.request(Method::POST, &path(&name, ":pause"))).await?;
            println!("subscription {name} paused");
        }
        SubscriptionsCommand::Resume { name } => {
            client.send(client.request(Method::POST, &path(&name, ":resume"))).await?;
            println!("subscription {name} resumed");
        }
        SubscriptionsCommand::Rewind { name, position, topic, time } => {
            let body = match (position, time) {
                (Some(position), _) => json!({ "position": position, "topic": topic }),
                (None, time) => json!({ "time": time }),
            };
            let request = client.request(Method::POST, &path(&name, ":rewind")).json(&body);
            let (_, answer) = client.send(request).await?;
            for topic in answer["rewound"].as_array().into_iter().flatten() {
                println!(
                    "subscription {name}: {} resumes at position {}",
                    topic["topic"].as_str().unwrap_or_default(),
                    topic["resumes_at"]
                );
            }
        }
    }
    Ok(())
}
