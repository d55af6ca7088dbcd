//! One `[[topics]]` or `[[subscriptions]]` entry into the engine's and the server's settings:
//! from the file at start, or from a management API request (the same keys, as JSON — see
//! README "Managing topics and subscriptions"), so both are read by one piece of code.

use std::time::Duration;

use anyhow::Context;
use inorder::{SubscriptionConfig, TopicConfig};
use serde_json::Value;

use super::{
    Delivery, SubscriptionFile, SubscriptionServerConfig, TopicFile, delivery, source::Source,
};
use crate::limits::PULL_PER_KEY_MAX;

/// The engine's settings of a topic entry.
pub(super) fn topic(topic: TopicFile) -> TopicConfig {
    let mut config = TopicConfig::new(&topic.name).actions(topic.actions).repeat(topic.repeat);
    config.sequence_timeout = topic.sequence_timeout;
    config.retention = topic.retention.into();
    config
}

/// The engine's and the server's settings of a subscription entry.
pub(super) fn subscription(
    sub: &SubscriptionFile,
    default_lease: Duration,
    source: &Source,
) -> anyhow::Result<(SubscriptionConfig, SubscriptionServerConfig)> {
    let delivery = delivery::delivery(sub, source)?;
    let mut config = SubscriptionConfig::new(&sub.name, sub.topics.clone());
    config.topic_patterns.clone_from(&sub.topic_patterns);
    if let Some(ordering) = sub.ordering {
        config.ordering = ordering.into();
    }
    if let Some(policy) = sub.on_failure {
        config.on_failure = policy.into();
    }
    if let Some(start) = sub.start {
        config.start = start.into();
    }
    delivery::fit_engine_config(&mut config, &delivery, sub, source)?;
    if let Some(limit) = sub.max_keys_in_flight {
        config.max_keys_in_flight = limit;
    }
    let lease_timeout = sub.lease_timeout.unwrap_or(default_lease);
    let max_per_key = match (sub.max_per_key, &delivery) {
        (None, _) => 1,
        (Some(n), Delivery::Pull) if (1..=PULL_PER_KEY_MAX).contains(&n) => n,
        (Some(_), Delivery::Pull) => {
            let message = format!("must be within 1..={PULL_PER_KEY_MAX}");
            return Err(source.key_error(&["subscriptions", &sub.name, "max_per_key"], message));
        }
        (Some(_), _) => {
            let message = "applies to delivery = \"pull\" only";
            return Err(source.key_error(&["subscriptions", &sub.name, "max_per_key"], message));
        }
    };
    Ok((config, SubscriptionServerConfig { delivery, lease_timeout, max_per_key }))
}

/// `body` (a JSON object with the keys of `[[topics]]`) as topic `name`'s definition.
///
/// # Errors
/// A body that is not such an object, an unknown key, a value out of range — naming the key.
pub fn topic_from_json(name: &str, body: &Value) -> anyhow::Result<TopicConfig> {
    let file: TopicFile = serde_json::from_value(named(name, body)?).context("request body")?;
    Ok(topic(file))
}

/// `body` (a JSON object with the keys of `[[subscriptions]]`) as subscription `name`'s
/// definition; pull leases default to `default_lease`.
///
/// # Errors
/// As [`topic_from_json`], and the checks that relate keys (a delivery without its table).
pub fn subscription_from_json(
    name: &str,
    body: &Value,
    default_lease: Duration,
) -> anyhow::Result<(SubscriptionConfig, SubscriptionServerConfig)> {
    let file: SubscriptionFile =
        serde_json::from_value(named(name, body)?).context("request body")?;
    subscription(&file, default_lease, &Source::request())
}

/// `body` with `name` set (the path names it; a body naming another is refused).
fn named(name: &str, body: &Value) -> anyhow::Result<Value> {
    let Value::Object(map) = body else { anyhow::bail!("request body: must be a JSON object") };
    if let Some(given) = map.get("name")
        && given.as_str() != Some(name)
    {
        anyhow::bail!("request body: name: {given} differs from the name in the path ({name:?})");
    }
    let mut map = map.clone();
    map.insert("name".to_owned(), Value::String(name.to_owned()));
    Ok(Value::Object(map))
}
