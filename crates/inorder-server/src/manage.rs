//! The management API's decisions: topics and subscriptions created, changed and deleted at run
//! time, their definitions kept durably in the engine's storage (kinds `topic` and
//! `subscription`, the request's JSON with the file's keys) and restored at start.
//!
//! - What the configuration declares is refused here (`409 declared`, naming where it is
//!   declared): the file is its source of truth. Pause, resume and rewind are operations, not
//!   definitions: they work on declared subscriptions too.
//! - One request at a time changes definitions (a lock), so concurrent creates and deletes of one
//!   name end in one of the states they would reach one after another; the definition is stored
//!   after the engine took the change and removed before it drops it, so a crash in between
//!   never brings back what was deleted.
//! - At start, stored topics are registered first, then stored subscriptions; one that no longer
//!   loads (a changed limit, a database gone) is logged as an error and counted in
//!   `inorder_definitions_failed`, never silently dropped, and can still be deleted.
//! - In cluster mode every node runs what is stored: [`Manager::sync`], every
//!   [`DEFINITIONS_SYNC_INTERVAL`], starts what another node created, restarts what it changed,
//!   stops what it deleted, and applies its pauses. The manager remembers what it applied, so a
//!   sync changes only what differs.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use inorder::{Engine, Rewind};
use serde_json::Value;

use crate::{
    config::{ServerConfig, subscription_from_json, topic_from_json},
    deliveries::{self, Deliveries},
    limits::DEFINITIONS_SYNC_INTERVAL,
    problem::Problem,
};

const TOPIC: &str = "topic";
const SUBSCRIPTION: &str = "subscription";

/// Creates, changes and deletes definitions.
pub struct Manager {
    engine: Engine,
    deliveries: Arc<Deliveries>,
    declared_topics: BTreeSet<String>,
    declared_subscriptions: BTreeSet<String>,
    declared_in: String,
    default_lease: Duration,
    changing: tokio::sync::Mutex<()>,
    /// The stored definitions this node runs, by kind and name (as stored: with the name).
    applied: parking_lot::Mutex<BTreeMap<(&'static str, String), Value>>,
}

/// Whether a `PUT` created the definition or found it as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Created: 201.
    Created,
    /// Already so (or changed in place): 200.
    Kept,
}

impl Manager {
    /// A manager for `engine`, started with `config`.
    pub fn new(engine: Engine, deliveries: Arc<Deliveries>, config: &ServerConfig) -> Self {
        Self {
            engine,
            deliveries,
            declared_topics: config.engine.topics.iter().map(|t| t.name.clone()).collect(),
            declared_subscriptions: config.subscriptions.keys().cloned().collect(),
            declared_in: config.declared_in.clone(),
            default_lease: config.default_lease,
            changing: tokio::sync::Mutex::new(()),
            applied: parking_lot::Mutex::default(),
        }
    }

    /// Registers the stored topics, then starts the stored subscriptions.
    pub async fn restore(&self) {
        let mut failed = 0u32;
        for kind in [TOPIC, SUBSCRIPTION] {
            let stored = match self.engine.definitions(kind).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::error!(%error, kind, "cannot read the stored definitions");
                    failed += 1;
                    continue;
                }
            };
            for (name, value) in stored {
                let restored = match serde_json::from_slice::<Value>(&value) {
                    Ok(body) if kind == TOPIC => self
                        .start_topic(&name, &body)
                        .await
                        .map(|_| self.applied(kind, &name, &body)),
                    Ok(body) => self
                        .start_subscription(&name, &body, false)
                        .await
                        .map(|()| self.applied(kind, &name, &body)),
                    Err(error) => Err(Problem::internal(error.to_string())),
                };
                if let Err(problem) = restored {
                    tracing::error!(kind, %name, error = problem.detail(), "a stored definition did not load");
                    failed += 1;
                }
            }
        }
        metrics::gauge!("inorder_definitions_failed").set(f64::from(failed));
    }

    /// Cluster mode: brings this node to the stored definitions (see the module's notes).
    /// Failures are logged and retried at the next sync.
    pub async fn sync(&self) {
        let _changing = self.changing.lock().await;
        for kind in [TOPIC, SUBSCRIPTION] {
            let stored = match self.engine.definitions(kind).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(%error, kind, "cannot read the stored definitions to sync");
                    return;
                }
            };
            let stored: BTreeMap<String, Value> = stored
                .into_iter()
                .filter(|(name, _)| !self.declared(kind, name))
                .filter_map(|(name, value)| Some((name, serde_json::from_slice(&value).ok()?)))
                .collect();
            let applied: BTreeMap<String, Value> = self
                .applied
                .lock()
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, name), value)| (name.clone(), value.clone()))
                .collect();
            for (name, body) in &stored {
                let synced = match (kind, applied.get(name)) {
                    (_, Some(old)) if old == body => continue,
                    (TOPIC, None) => self.sync_topic(name, body, false).await,
                    (TOPIC, Some(_)) => self.sync_topic(name, body, true).await,
                    (_, old) => self.start_subscription(name, body, old.is_some()).await,
                };
                match synced {
                    Ok(()) => {
                        tracing::info!(kind, %name, "definition taken from another node");
                        self.applied(kind, name, body);
                    }
                    Err(problem) => tracing::warn!(kind, %name, error = problem.detail(),
                        "a definition made on another node did not load here; retrying"),
                }
            }
            for name in applied.keys().filter(|name| !stored.contains_key(*name)) {
                let removed = match kind {
                    TOPIC => match self.engine.delete_topic(name).await {
                        Ok(()) | Err(inorder::Error::UnknownTopic { .. }) => Ok(()),
                        Err(error) => Err(error),
                    },
                    _ => match self.engine.remove_subscription(name).await {
                        Ok(()) | Err(inorder::Error::UnknownSubscription { .. }) => {
                            self.deliveries.remove(name);
                            Ok(())
                        }
                        Err(error) => Err(error),
                    },
                };
                match removed {
                    Ok(()) => {
                        tracing::info!(kind, %name, "deleted on another node: stopped here");
                        self.applied.lock().remove(&(kind, name.clone()));
                    }
                    Err(error) => tracing::warn!(kind, %name, %error, "stopping a definition \
                        deleted on another node failed; retrying"),
                }
            }
        }
        if let Err(error) = self.engine.apply_stored_pauses().await {
            tracing::warn!(%error, "cannot apply the stored pauses");
        }
    }

    /// Runs [`Manager::sync`] every [`DEFINITIONS_SYNC_INTERVAL`] until aborted.
    pub fn spawn_sync(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DEFINITIONS_SYNC_INTERVAL).await;
                manager.sync().await;
            }
        })
    }

    /// A topic stored by another node: registered here (or found registered: created by a
    /// publish), its retention as stored.
    async fn sync_topic(&self, name: &str, body: &Value, known: bool) -> Result<(), Problem> {
        let config = topic_from_json(name, body).map_err(|e| invalid(&e))?;
        if !known {
            match self.engine.add_topic(config.clone()).await {
                Ok(()) | Err(inorder::Error::Exists { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(self.engine.set_retention(name, config.retention)?)
    }

    /// Remembers that this node runs `body` (as stored) for `kind` `name`.
    fn applied(&self, kind: &'static str, name: &str, body: &Value) {
        self.applied.lock().insert((kind, name.to_owned()), with_name(name, body));
    }

    fn refuse_declared(&self, kind: &str, name: &str) -> Result<(), Problem> {
        let declared = match kind {
            TOPIC => self.declared_topics.contains(name),
            _ => self.declared_subscriptions.contains(name),
        };
        if declared {
            return Err(Problem::declared(format!(
                "{kind} {name} is declared in {}: change it there",
                self.declared_in
            )));
        }
        Ok(())
    }

    /// The stored definition of `kind` `name` (`None`: declared in the file, or unknown).
    pub async fn definition(&self, kind: &str, name: &str) -> Result<Option<Value>, Problem> {
        let stored = self.engine.definitions(kind).await?;
        Ok(stored
            .into_iter()
            .find(|(stored, _)| stored == name)
            .and_then(|(_, value)| serde_json::from_slice(&value).ok()))
    }

    /// Whether `kind` `name` is declared in the configuration file.
    pub fn declared(&self, kind: &str, name: &str) -> bool {
        self.refuse_declared(kind, name).is_err()
    }

    /// `PUT /v1/topics/{name}`: creates the topic, or changes the retention of an existing one
    /// (every other key must stay as it is).
    pub async fn put_topic(&self, name: &str, body: &Value) -> Result<Put, Problem> {
        let _changing = self.changing.lock().await;
        self.refuse_declared(TOPIC, name)?;
        let config = topic_from_json(name, body).map_err(|e| invalid(&e))?;
        let existing = match self.engine.topic_info(name).await {
            Ok(topic) => Some(topic),
            Err(inorder::Error::UnknownTopic { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        let put = match existing {
            None => self.start_topic(name, body).await?,
            Some(topic) => {
                if topic.actions != config.actions {
                    return Err(Problem::from(inorder::Error::Exists {
                        what: "topic",
                        name: format!("{name} (with other actions; delete it first)"),
                    }));
                }
                self.engine.set_retention(name, config.retention)?;
                Put::Kept
            }
        };
        self.store(TOPIC, name, body).await?;
        Ok(put)
    }

    async fn start_topic(&self, name: &str, body: &Value) -> Result<Put, Problem> {
        let config = topic_from_json(name, body).map_err(|e| invalid(&e))?;
        self.engine.add_topic(config).await?;
        Ok(Put::Created)
    }

    /// `DELETE /v1/topics/{name}`: refused while subscriptions consume it, unless `force`.
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<(), Problem> {
        let _changing = self.changing.lock().await;
        self.refuse_declared(TOPIC, name)?;
        let topic = self.engine.topic_info(name).await?;
        if !topic.subscriptions.is_empty() && !force {
            return Err(Problem::in_use(format!(
                "topic {name} is consumed by {}; delete with ?force=true to delete it anyway \
                 (their progress on it goes with it)",
                topic.subscriptions.join(", ")
            )));
        }
        self.engine.put_definition(TOPIC, name, None).await?;
        self.applied.lock().remove(&(TOPIC, name.to_owned()));
        self.engine.delete_topic(name).await?;
        Ok(())
    }

    /// `PUT /v1/subscriptions/{name}`: creates the subscription (one that exists with the same
    /// definition is kept; with another, `409 exists`: change it with `PATCH`).
    pub async fn put_subscription(&self, name: &str, body: &Value) -> Result<Put, Problem> {
        let _changing = self.changing.lock().await;
        self.refuse_declared(SUBSCRIPTION, name)?;
        if self.deliveries.kind(name).is_some() {
            let same = self.definition(SUBSCRIPTION, name).await? == Some(with_name(name, body));
            if same {
                return Ok(Put::Kept);
            }
            return Err(Problem::from(inorder::Error::Exists {
                what: "subscription",
                name: format!("{name} (with another definition; change it with PATCH)"),
            }));
        }
        self.start_subscription(name, body, false).await?;
        if let Err(problem) = self.store(SUBSCRIPTION, name, body).await {
            let _ = self.engine.remove_subscription(name).await;
            self.deliveries.remove(name);
            return Err(problem);
        }
        Ok(Put::Created)
    }

    /// `PATCH /v1/subscriptions/{name}`: the keys given replace the stored ones (`null` removes
    /// one); the subscription restarts under the result, keeping its progress.
    pub async fn patch_subscription(&self, name: &str, patch: &Value) -> Result<Value, Problem> {
        let _changing = self.changing.lock().await;
        self.refuse_declared(SUBSCRIPTION, name)?;
        let Some(Value::Object(mut current)) = self.definition(SUBSCRIPTION, name).await? else {
            return Err(
                inorder::Error::UnknownSubscription { subscription: name.to_owned() }.into()
            );
        };
        let Value::Object(changes) = patch else {
            return Err(Problem::invalid_request("request body: must be a JSON object"));
        };
        for (key, value) in changes {
            if value.is_null() {
                current.remove(key);
            } else {
                current.insert(key.clone(), value.clone());
            }
        }
        let body = Value::Object(current);
        self.start_subscription(name, &body, true).await?;
        self.store(SUBSCRIPTION, name, &body).await?;
        Ok(with_name(name, &body))
    }

    /// `DELETE /v1/subscriptions/{name}`: stops it and deletes its progress.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), Problem> {
        let _changing = self.changing.lock().await;
        self.refuse_declared(SUBSCRIPTION, name)?;
        if self.deliveries.kind(name).is_none()
            && self.definition(SUBSCRIPTION, name).await?.is_none()
        {
            return Err(
                inorder::Error::UnknownSubscription { subscription: name.to_owned() }.into()
            );
        }
        self.engine.put_definition(SUBSCRIPTION, name, None).await?;
        self.applied.lock().remove(&(SUBSCRIPTION, name.to_owned()));
        match self.engine.remove_subscription(name).await {
            Ok(()) | Err(inorder::Error::UnknownSubscription { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        self.deliveries.remove(name);
        Ok(())
    }

    /// `POST /v1/subscriptions/{name}:rewind`.
    pub async fn rewind(&self, name: &str, to: Rewind) -> Result<Vec<(String, u64)>, Problem> {
        let _changing = self.changing.lock().await;
        Ok(self.engine.rewind_subscription(name, to).await?)
    }

    /// Builds the delivery of `body` and starts (or, with `replace`, restarts) the subscription.
    async fn start_subscription(
        &self,
        name: &str,
        body: &Value,
        replace: bool,
    ) -> Result<(), Problem> {
        let (config, server) =
            subscription_from_json(name, body, self.default_lease).map_err(|e| invalid(&e))?;
        let built = deliveries::build(name, &server, config.max_keys_in_flight)
            .await
            .map_err(|e| Problem::invalid_request(format!("{e:#}")))?;
        let handler = Arc::clone(&built.handler);
        if replace {
            self.engine.replace_subscription(config, handler).await?;
        } else {
            self.engine.add_subscription(config, handler).await?;
        }
        self.deliveries.insert(name, &built);
        Ok(())
    }

    async fn store(&self, kind: &'static str, name: &str, body: &Value) -> Result<(), Problem> {
        let value = Bytes::from(with_name(name, body).to_string());
        self.engine.put_definition(kind, name, Some(value)).await?;
        self.applied(kind, name, body);
        Ok(())
    }
}

/// `body` with its `name` set.
fn with_name(name: &str, body: &Value) -> Value {
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        map.insert("name".to_owned(), Value::String(name.to_owned()));
    }
    body
}

/// A definition the server cannot read: 400 `invalid-request`, naming the key.
fn invalid(error: &anyhow::Error) -> Problem {
    Problem::invalid_request(format!("{error:#}"))
}
