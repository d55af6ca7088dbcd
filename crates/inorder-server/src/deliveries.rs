//! The server's side of each subscription: the handler its delivery needs (a pull queue, the
//! PostgreSQL sink, a webhook) and what the HTTP API asks of it — its pull queue, its kind,
//! whether the configuration declares it. Subscriptions come and go at run time (the
//! management API), so this is a small registry behind a lock, read on every pull.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use inorder::Handler;
use inorder_postgres::PostgresSink;
use parking_lot::RwLock;

use crate::{
    config::{Delivery, SubscriptionServerConfig},
    pull::{PullHandler, PullQueue},
    webhook::WebhookHandler,
};

/// What the server keeps of one subscription.
#[derive(Clone)]
struct Entry {
    kind: &'static str,
    pull: Option<Arc<PullQueue>>,
}

/// Every subscription's delivery, by name.
#[derive(Default)]
pub struct Deliveries {
    entries: RwLock<HashMap<String, Entry>>,
}

/// A delivery's handler, and its pull queue for pull subscriptions.
pub struct Built {
    /// The engine's handler.
    pub handler: Arc<dyn Handler>,
    pull: Option<Arc<PullQueue>>,
    kind: &'static str,
}

/// Builds the handler of subscription `name`'s delivery (`keys_in_flight`: the engine's limit,
/// which sizes a webhook's connection pool).
///
/// # Errors
/// A PostgreSQL sink that cannot reach its database; a webhook client that cannot be built.
pub async fn build(
    name: &str,
    server: &SubscriptionServerConfig,
    keys_in_flight: usize,
) -> anyhow::Result<Built> {
    let kind = server.delivery.kind();
    Ok(match &server.delivery {
        Delivery::Pull => {
            let queue = PullQueue::start(server.lease_timeout);
            let handler = Arc::new(PullHandler::new(Arc::clone(&queue), server.max_per_key));
            Built { handler, pull: Some(queue), kind }
        }
        Delivery::Postgres(sink) => {
            let sink = PostgresSink::start(sink.clone())
                .await
                .with_context(|| format!("subscription {name}: starting the postgres sink"))?;
            Built { handler: Arc::new(sink), pull: None, kind }
        }
        Delivery::Webhook(webhook) => {
            let handler = WebhookHandler::new(name, webhook.clone(), keys_in_flight)
                .with_context(|| format!("subscription {name}: starting the webhook"))?;
            Built { handler: Arc::new(handler), pull: None, kind }
        }
    })
}

impl Deliveries {
    /// Records subscription `name`'s delivery (replacing an earlier one).
    pub fn insert(&self, name: &str, built: &Built) {
        let entry = Entry { kind: built.kind, pull: built.pull.clone() };
        self.entries.write().insert(name.to_owned(), entry);
    }

    /// Forgets subscription `name`.
    pub fn remove(&self, name: &str) {
        self.entries.write().remove(name);
    }

    /// The pull queue of a pull subscription.
    pub fn pull(&self, name: &str) -> Option<Arc<PullQueue>> {
        self.entries.read().get(name).and_then(|entry| entry.pull.clone())
    }

    /// `pull`, `postgres` or `webhook`.
    pub fn kind(&self, name: &str) -> Option<&'static str> {
        self.entries.read().get(name).map(|entry| entry.kind)
    }
}
