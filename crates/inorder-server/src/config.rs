//! `inorder.toml`: the server's configuration file, its `INORDER_*` environment overrides, and
//! its translation into an engine configuration.
//!
//! Every key can be overridden by an environment variable: `INORDER_` followed by the key path in
//! capitals, levels joined by `__`. Entries of `[[topics]]` and `[[subscriptions]]` are addressed
//! by name: `INORDER_LISTEN=0.0.0.0:7070`, `INORDER_AUTH__TOKENS=a,b`,
//! `INORDER_SUBSCRIPTIONS__PURCHASES__ORDERING=fifo`. A value is read as TOML when it parses as
//! one (numbers, booleans, arrays), else as a string; a comma list becomes an array of strings
//! where the key expects one.
//!
//! The file is read by serde: closed choices are enums, durations and counts are checked
//! against their limits ([`crate::limits`]) while they are read ([`values`]). So a bad file is
//! refused with the file name, line and key, `inorder.toml:12: subscriptions.s.ordering: unknown
//! variant ...` ([`source`]), and nothing the server computes from a value can overflow.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use inorder::EngineConfig;
use serde::Deserialize;

mod cluster;
mod delivery;
mod entries;
mod postgres;
mod source;
mod values;
mod webhook;

pub use self::{
    cluster::ClusterFile,
    delivery::Delivery,
    entries::{subscription_from_json, topic_from_json},
    postgres::{PostgresSinkFile, StorageChoice, StorageFile},
    webhook::WebhookFile,
};
use self::{
    source::Source,
    values::{DeliveryFile, FsyncFile, OnFailureFile, OrderingFile, StartFile},
};
use crate::limits::{
    BODY_LIMIT_BYTES_DEFAULT, DATA_DIR_DEFAULT, LEASE_TIMEOUT_DEFAULT, LISTEN_DEFAULT,
    PUBLISH_IN_FLIGHT_DEFAULT,
};

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where logs and state live.
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// `always`, `group` or `never`.
    pub fsync: Option<FsyncFile>,
    /// Create topics on first publish.
    pub auto_create_topics: Option<bool>,
    /// Most topics (declared and auto-created); a publish creating one more gets 403.
    #[serde(default, deserialize_with = "values::max_topics")]
    pub max_topics: Option<usize>,
    /// Largest request body (`1MiB`, `512KiB`, or bytes).
    #[serde(default, deserialize_with = "values::body_limit")]
    pub body_limit: Option<usize>,
    /// Default lease of pulled events (`30s`).
    #[serde(default, deserialize_with = "values::lease_timeout")]
    pub lease_timeout: Option<Duration>,
    /// Size of a topic log's segment files (`64MiB`): retention deletes whole segments.
    #[serde(default, deserialize_with = "values::segment_bytes")]
    pub segment_bytes: Option<u64>,
    /// How often topics with a retention policy are purged (`1s`).
    #[serde(default, deserialize_with = "values::retention_interval")]
    pub retention_interval: Option<Duration>,
    /// Publish requests handled at once; more get 503.
    #[serde(default, deserialize_with = "values::publish_in_flight")]
    pub publish_in_flight: Option<usize>,
    /// Where topics and state live: `file` (the embedded default) or `postgres`.
    pub storage: Option<StorageFile>,
    /// `[cluster]`: one node of several on one PostgreSQL.
    pub cluster: Option<ClusterFile>,
    /// Bearer tokens.
    #[serde(default)]
    pub auth: AuthFile,
    /// Topics.
    #[serde(default)]
    pub topics: Vec<TopicFile>,
    /// Subscriptions.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionFile>,
}

/// `[auth]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Accepted bearer tokens; empty disables auth.
    #[serde(default)]
    pub tokens: Vec<String>,
}

/// `[[topics]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicFile {
    /// Name.
    pub name: String,
    /// Actions contract.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Whether a completed sequence may start again.
    #[serde(default)]
    pub repeat: bool,
    /// How long a sequence may wait for a missing event (`10m`).
    #[serde(default, deserialize_with = "values::sequence_timeout")]
    pub sequence_timeout: Option<Duration>,
    /// `[topics.retention]`: which of its oldest events may be deleted.
    #[serde(default)]
    pub retention: RetentionFile,
}

/// `[topics.retention]` (see [`inorder::Retention`]).
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Delete events appended longer ago (`7d`).
    #[serde(default, deserialize_with = "values::retention_age")]
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes (`10GiB`, or bytes).
    #[serde(default, deserialize_with = "values::retention_bytes")]
    pub max_bytes: Option<u64>,
    /// Keep at most this many events.
    #[serde(default, deserialize_with = "values::retention_events")]
    pub max_events: Option<u64>,
    /// Delete what every subscription of the topic has resolved.
    #[serde(default)]
    pub until_consumed: bool,
}

impl From<RetentionFile> for inorder::Retention {
    fn from(file: RetentionFile) -> Self {
        Self {
            max_age: file.max_age,
            max_bytes: file.max_bytes,
            max_events: file.max_events,
            until_consumed: file.until_consumed,
        }
    }
}

/// `[[subscriptions]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFile {
    /// Name.
    pub name: String,
    /// Topics by exact name.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topics by whole-name regular expression.
    #[serde(default)]
    pub topic_patterns: Vec<String>,
    /// `fifo`, `actions`, `sequence` or `none`.
    pub ordering: Option<OrderingFile>,
    /// `pull` (HTTP consumers, the default), `postgres` (the batch sink) or `webhook` (HTTP
    /// push).
    #[serde(default)]
    pub delivery: DeliveryFile,
    /// `[subscriptions.postgres]`: the sink's settings, for `delivery = "postgres"`.
    pub postgres: Option<PostgresSinkFile>,
    /// `[subscriptions.webhook]`: where to send events, for `delivery = "webhook"`.
    pub webhook: Option<WebhookFile>,
    /// Keys handled (leased) at once.
    pub max_keys_in_flight: Option<usize>,
    /// `block` or `skip`.
    pub on_failure: Option<OnFailureFile>,
    /// `earliest` or `latest`.
    pub start: Option<StartFile>,
    /// Lease of pulled events (`30s`).
    #[serde(default, deserialize_with = "values::lease_timeout")]
    pub lease_timeout: Option<Duration>,
    /// Consecutive events of one key a pull may lease at once (pull delivery; 1 by default).
    pub max_per_key: Option<usize>,
    /// Attempts before an event is parked.
    pub max_attempts: Option<u32>,
    /// Delay before a webhook's second attempt (`100ms`), doubling after each failure.
    #[serde(default, deserialize_with = "values::retry_delay")]
    pub retry_initial: Option<Duration>,
    /// Longest delay between a webhook's attempts (`30s`).
    #[serde(default, deserialize_with = "values::retry_delay")]
    pub retry_max_delay: Option<Duration>,
}

/// A subscription's server-side settings.
#[derive(Debug, Clone)]
pub struct SubscriptionServerConfig {
    /// How it is delivered.
    pub delivery: Delivery,
    /// Lease of pulled events.
    pub lease_timeout: Duration,
    /// Consecutive events of one key a pull may lease at once.
    pub max_per_key: usize,
}

/// Everything `inorder serve` runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// Publish requests handled at once.
    pub publish_in_flight: usize,
    /// Bearer tokens (empty: no auth).
    pub tokens: Vec<String>,
    /// Per subscription.
    pub subscriptions: BTreeMap<String, SubscriptionServerConfig>,
    /// The storage backend.
    pub storage: StorageChoice,
    /// The lease of pull subscriptions that set none.
    pub default_lease: Duration,
    /// Where the declared topics and subscriptions come from (the file's path, or the
    /// environment), for the management API's refusals.
    pub declared_in: String,
}

impl ServerConfig {
    /// The configuration of `inorder serve` without a file: defaults, topics created on first
    /// publish, then environment overrides.
    ///
    /// # Errors
    /// A bad override, naming its key.
    pub fn embedded_default() -> anyhow::Result<Self> {
        let mut value = toml::Value::Table(toml::Table::new());
        apply_env_overrides(&mut value, std::env::vars())?;
        let source = Source::overridden(None, &value)?;
        Self::from_file(source.deserialize()?, true, &source)
    }

    /// Reads `path`, applies environment overrides, and checks everything.
    ///
    /// # Errors
    /// The file's problem with its line and key, or a configuration error naming the item.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut source = Source::file(path, text);
        let mut value: toml::Value = source.deserialize()?;
        // Without overrides, deserialize from the text itself so errors keep their line.
        if apply_env_overrides(&mut value, std::env::vars())? > 0 {
            source = Source::overridden(Some(path), &value)?;
        }
        Self::from_file(source.deserialize()?, false, &source)
    }

    fn from_file(file: FileConfig, embedded: bool, source: &Source) -> anyhow::Result<Self> {
        let default_lease = file.lease_timeout.unwrap_or(LEASE_TIMEOUT_DEFAULT);
        let storage = StorageChoice::from_file(file.storage, source)?;
        let mut engine =
            EngineConfig::new(file.data_dir.unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT)));
        engine.fsync = file.fsync.unwrap_or_default().into();
        engine.auto_create_topics = file.auto_create_topics.unwrap_or(embedded);
        if let Some(max) = file.max_topics {
            engine.max_topics = max;
        }
        if let Some(bytes) = file.segment_bytes {
            engine.segment_bytes = bytes;
        }
        if let Some(interval) = file.retention_interval {
            engine.retention_interval = interval;
        }
        if let Some(cluster) = file.cluster {
            engine.cluster = Some(cluster.into_config(&storage, source)?);
        }
        engine.topics.extend(file.topics.into_iter().map(entries::topic));
        let mut subscriptions = BTreeMap::new();
        for sub in &file.subscriptions {
            let (config, server) = entries::subscription(sub, default_lease, source)?;
            subscriptions.insert(sub.name.clone(), server);
            engine.subscriptions.push(config);
        }
        engine.validate().map_err(|e| source.whole_error(e))?;
        Ok(Self {
            engine,
            listen: file.listen.unwrap_or(LISTEN_DEFAULT),
            body_limit_bytes: file.body_limit.unwrap_or(BODY_LIMIT_BYTES_DEFAULT),
            publish_in_flight: file.publish_in_flight.unwrap_or(PUBLISH_IN_FLIGHT_DEFAULT),
            tokens: file.auth.tokens,
            subscriptions,
            storage,
            default_lease,
            declared_in: source.origin_name(),
        })
    }
}

/// Applies `INORDER_*` variables to the configuration value; returns how many applied.
pub fn apply_env_overrides(
    value: &mut toml::Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<usize> {
    let mut applied = 0;
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix("INORDER_") else { continue };
        if matches!(path, "SERVER" | "TOKEN" | "CONFIG") {
            continue; // CLI client settings, not configuration keys
        }
        let segments: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        set_path(value, &segments, parse_override(&raw))
            .with_context(|| format!("environment variable {name}"))?;
        applied += 1;
    }
    Ok(applied)
}

fn parse_override(raw: &str) -> toml::Value {
    if let Ok(table) = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        && let Some(value) = table.get("v")
    {
        return value.clone();
    }
    if raw.contains(',') {
        return toml::Value::Array(
            raw.split(',').map(|s| toml::Value::String(s.trim().to_owned())).collect(),
        );
    }
    toml::Value::String(raw.to_owned())
}

fn set_path(value: &mut toml::Value, path: &[String], new: toml::Value) -> anyhow::Result<()> {
    let Some((first, rest)) = path.split_first() else { bail!("empty key") };
    let table = value.as_table_mut().context("not a table")?;
    if rest.is_empty() {
        let new = match (table.get(first), new) {
            // A single string where an array is expected (`tokens = ["x"]`) becomes a one-item array.
            (Some(toml::Value::Array(_)), toml::Value::String(s)) => {
                toml::Value::Array(vec![toml::Value::String(s)])
            }
            (_, new) => new,
        };
        table.insert(first.clone(), new);
        return Ok(());
    }
    if matches!(first.as_str(), "topics" | "subscriptions") {
        let (entry_name, rest) =
            rest.split_first().context("name the entry: INORDER_SUBSCRIPTIONS__<NAME>__<KEY>")?;
        let entries =
            table.get_mut(first).and_then(toml::Value::as_array_mut).context("no such section")?;
        let entry = entries
            .iter_mut()
            .find(|e| {
                e.get("name")
                    .and_then(toml::Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(entry_name))
            })
            .with_context(|| format!("no {first} entry named {entry_name}"))?;
        return set_path(entry, rest, new);
    }
    let child =
        table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_path(child, rest, new)
}

#[cfg(test)]
mod tests;
