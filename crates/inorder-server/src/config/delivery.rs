//! How a subscription's events are delivered (`delivery` and its table), and what each delivery
//! asks of the engine's settings for it: its retry policy and its keys in flight.
//!
//! | delivery | table | retries |
//! |---|---|---|
//! | `pull` | none | at once when a lease expires or after a nack's delay; parked after `max_attempts` (default 5) |
//! | `postgres` | `[subscriptions.postgres]` | the sink retries outages itself; refused rows are parked at once |
//! | `webhook` | `[subscriptions.webhook]` | the engine's backoff (`retry_initial`, doubling, up to `retry_max_delay`, with jitter) or a receiver's `Retry-After`; parked after `max_attempts` |
//!
//! A table of another delivery, or a retry key outside a webhook, is refused naming the key:
//! nothing in the file is silently ignored.

use std::time::Duration;

use inorder::{RetryPolicy, SubscriptionConfig, limits::KEYS_IN_FLIGHT_MAX};
use inorder_postgres::SinkConfig;

use super::{
    SubscriptionFile, postgres::sink_config, source::Source, values::DeliveryFile,
    webhook::webhook_config,
};
use crate::{limits::PULL_MAX_ATTEMPTS_DEFAULT, webhook::WebhookConfig};

/// How a subscription's events are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// HTTP consumers pull, ack and nack.
    Pull,
    /// Batch-written into a PostgreSQL table.
    Postgres(SinkConfig),
    /// POSTed to a URL as CloudEvents (binary mode).
    Webhook(WebhookConfig),
}

impl Delivery {
    /// The name used in the configuration and `GET /v1/subscriptions`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Postgres(_) => "postgres",
            Self::Webhook(_) => "webhook",
        }
    }
}

/// Subscription `sub`'s delivery, from `delivery` and its table.
pub(super) fn delivery(sub: &SubscriptionFile, source: &Source) -> anyhow::Result<Delivery> {
    let key = |key: &'static str| ["subscriptions", sub.name.as_str(), key];
    let only_for = [
        ("postgres", sub.postgres.is_some(), DeliveryFile::Postgres),
        ("webhook", sub.webhook.is_some(), DeliveryFile::Webhook),
        ("retry_initial", sub.retry_initial.is_some(), DeliveryFile::Webhook),
        ("retry_max_delay", sub.retry_max_delay.is_some(), DeliveryFile::Webhook),
    ];
    for (name, given, delivery) in only_for {
        if given && sub.delivery != delivery {
            let message = format!("only for delivery = \"{}\"", delivery.as_str());
            return Err(source.key_error(&key(name), message));
        }
    }
    let missing = |table: &str| {
        let message = format!("delivery = \"{table}\" needs a [subscriptions.{table}] table");
        source.key_error(&key("delivery"), message)
    };
    Ok(match sub.delivery {
        DeliveryFile::Pull => Delivery::Pull,
        DeliveryFile::Postgres => {
            let file = sub.postgres.as_ref().ok_or_else(|| missing("postgres"))?;
            Delivery::Postgres(sink_config(file, &sub.name, source)?)
        }
        DeliveryFile::Webhook => {
            let file = sub.webhook.as_ref().ok_or_else(|| missing("webhook"))?;
            Delivery::Webhook(webhook_config(file, &sub.name, source)?)
        }
    })
}

/// Sets what `delivery` needs of the engine's `config` for subscription `sub`: its retry policy
/// (with `max_attempts` and, for a webhook, `retry_initial` and `retry_max_delay` from the file)
/// and its keys in flight.
pub(super) fn fit_engine_config(
    config: &mut SubscriptionConfig,
    delivery: &Delivery,
    sub: &SubscriptionFile,
    source: &Source,
) -> anyhow::Result<()> {
    match delivery {
        // A pulled event is redelivered as soon as its lease expires or it is nacked (with the
        // nack's delay); after max_attempts it is parked.
        Delivery::Pull => {
            config.retry = RetryPolicy {
                initial: Duration::ZERO,
                factor: 1.0,
                max_delay: Duration::ZERO,
                max_attempts: sub.max_attempts.unwrap_or(PULL_MAX_ATTEMPTS_DEFAULT),
                jitter: 0.0,
            };
        }
        // The sink retries outages itself; the engine only sees rows PostgreSQL refuses (parked
        // at once). Batches fill only if enough calls are in flight.
        Delivery::Postgres(sink) => {
            config.max_keys_in_flight = sink.keys_in_flight().min(KEYS_IN_FLIGHT_MAX);
            if let Some(attempts) = sub.max_attempts {
                config.retry.max_attempts = attempts;
            }
        }
        // Every failed request is retried with the engine's backoff (or after the receiver's
        // Retry-After) until max_attempts, then parked.
        Delivery::Webhook(_) => {
            let retry = &mut config.retry;
            retry.max_attempts = sub.max_attempts.unwrap_or(retry.max_attempts);
            retry.initial = sub.retry_initial.unwrap_or(retry.initial);
            retry.max_delay = sub.retry_max_delay.unwrap_or(retry.max_delay);
            if retry.initial > retry.max_delay {
                let message = format!(
                    "must not exceed retry_max_delay ({})",
                    humantime::format_duration(retry.max_delay)
                );
                return Err(
                    source.key_error(&["subscriptions", &sub.name, "retry_initial"], message)
                );
            }
        }
    }
    Ok(())
}
