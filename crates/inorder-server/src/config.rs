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
//! A bad file is refused with the file name, line and key: `inorder.toml:12: unknown field ...`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use inorder::{
    EngineConfig, FailurePolicy, FsyncPolicy, Ordering, RetryPolicy, StartFrom, SubscriptionConfig,
    TopicConfig, limits::KEYS_IN_FLIGHT_MAX,
};
use inorder_postgres::SinkConfig;
use serde::Deserialize;

mod postgres;

use self::postgres::sink_config;
pub use self::postgres::{PostgresSinkFile, StorageChoice, StorageFile};
use crate::limits::{
    BODY_LIMIT_BYTES_DEFAULT, DATA_DIR_DEFAULT, LEASE_TIMEOUT_DEFAULT, LISTEN_DEFAULT,
    PUBLISH_IN_FLIGHT_DEFAULT, PULL_MAX_ATTEMPTS_DEFAULT,
};

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where logs and state live.
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    pub listen: Option<String>,
    /// `always`, `group` or `never`.
    pub fsync: Option<String>,
    /// Create topics on first publish.
    pub auto_create_topics: Option<bool>,
    /// Most topics (declared and auto-created); a publish creating one more gets 403.
    pub max_topics: Option<usize>,
    /// Largest request body (`1MiB`, `512KiB`, or bytes).
    pub body_limit: Option<toml::Value>,
    /// Default lease of pulled events (`30s`).
    pub lease_timeout: Option<String>,
    /// Publish requests handled at once; more get 503.
    pub publish_in_flight: Option<usize>,
    /// Where topics and state live: `file` (the embedded default) or `postgres`.
    pub storage: Option<StorageFile>,
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
    pub sequence_timeout: Option<String>,
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
    #[serde(default)]
    pub ordering: Option<String>,
    /// `pull` (HTTP consumers) or `postgres` (the batch sink).
    #[serde(default)]
    pub delivery: Option<String>,
    /// `[subscriptions.postgres]`: the sink's settings, for `delivery = "postgres"`.
    pub postgres: Option<PostgresSinkFile>,
    /// Keys handled (leased) at once.
    pub max_keys_in_flight: Option<usize>,
    /// `block` or `skip`.
    pub on_failure: Option<String>,
    /// `earliest` or `latest`.
    pub start: Option<String>,
    /// Lease of pulled events (`30s`).
    pub lease_timeout: Option<String>,
    /// Attempts before an event is parked.
    pub max_attempts: Option<u32>,
}

/// How a subscription's events are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// HTTP consumers pull, ack and nack.
    Pull,
    /// Batch-written into a PostgreSQL table.
    Postgres(SinkConfig),
}

impl Delivery {
    /// The name used in the configuration and `GET /v1/subscriptions`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// A subscription's server-side settings.
#[derive(Debug, Clone)]
pub struct SubscriptionServerConfig {
    /// How it is delivered.
    pub delivery: Delivery,
    /// Lease of pulled events.
    pub lease_timeout: Duration,
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
}

impl ServerConfig {
    /// The configuration of `inorder serve` without a file: defaults, topics created on first
    /// publish, then environment overrides.
    ///
    /// # Errors
    /// A bad override.
    pub fn embedded_default() -> anyhow::Result<Self> {
        let mut value = toml::Value::Table(toml::Table::new());
        apply_env_overrides(&mut value, std::env::vars())?;
        let file: FileConfig =
            value.try_into().context("environment overrides do not fit the configuration")?;
        Self::from_file(file, true)
    }

    /// Reads `path`, applies environment overrides, and checks everything.
    ///
    /// # Errors
    /// The file's problem with its line and key, or a configuration error naming the item.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut value: toml::Value = toml::from_str(&text).map_err(|e| located(path, &text, &e))?;
        // Without overrides, deserialize from the text itself so errors keep their line.
        let file: FileConfig = if apply_env_overrides(&mut value, std::env::vars())? == 0 {
            toml::from_str(&text).map_err(|e| located(path, &text, &e))?
        } else {
            value
                .try_into()
                .with_context(|| format!("{} (with INORDER_* overrides)", path.display()))?
        };
        Self::from_file(file, false)
    }

    fn from_file(file: FileConfig, embedded: bool) -> anyhow::Result<Self> {
        let data_dir = file.data_dir.unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let listen_text = file.listen.unwrap_or_else(|| LISTEN_DEFAULT.to_string());
        let listen = listen_text
            .parse()
            .with_context(|| format!("listen: {listen_text:?} is not an address"))?;
        let fsync: FsyncPolicy = file
            .fsync
            .as_deref()
            .unwrap_or("group")
            .parse()
            .map_err(|e| anyhow::anyhow!("fsync: {e}"))?;
        let default_lease = match &file.lease_timeout {
            Some(text) => duration("lease_timeout", text)?,
            None => LEASE_TIMEOUT_DEFAULT,
        };
        let body_limit_bytes = match &file.body_limit {
            None => BODY_LIMIT_BYTES_DEFAULT,
            Some(toml::Value::Integer(n)) => {
                usize::try_from(*n).context("body_limit must be positive")?
            }
            Some(toml::Value::String(text)) => byte_size(text).context("body_limit")?,
            Some(other) => bail!("body_limit: expected a size like \"1MiB\", got {other}"),
        };
        let storage = StorageChoice::from_file(file.storage)?;
        let mut engine = EngineConfig::new(data_dir);
        engine.fsync = fsync;
        engine.auto_create_topics = file.auto_create_topics.unwrap_or(embedded);
        if let Some(max) = file.max_topics {
            engine.max_topics = max;
        }
        for topic in file.topics {
            let mut config =
                TopicConfig::new(&topic.name).actions(topic.actions).repeat(topic.repeat);
            if let Some(text) = &topic.sequence_timeout {
                config = config.sequence_timeout(duration(
                    &format!("topics.{}.sequence_timeout", topic.name),
                    text,
                )?);
            }
            engine.topics.push(config);
        }
        let mut subscriptions = BTreeMap::new();
        for sub in file.subscriptions {
            let at = |key: &str| format!("subscriptions.{}.{key}", sub.name);
            let delivery = match (sub.delivery.as_deref().unwrap_or("pull"), &sub.postgres) {
                ("pull", None) => Delivery::Pull,
                ("postgres", Some(postgres)) => {
                    Delivery::Postgres(sink_config(postgres, &at("postgres"))?)
                }
                ("postgres", None) => {
                    bail!(
                        "{}: delivery = \"postgres\" needs a [subscriptions.postgres] table",
                        at("delivery")
                    )
                }
                ("pull", Some(_)) => {
                    bail!("{}: only for delivery = \"postgres\"", at("postgres"))
                }
                (other, _) => {
                    bail!("{}: unknown delivery {other:?} (pull, postgres)", at("delivery"))
                }
            };
            let lease_timeout = match &sub.lease_timeout {
                Some(text) => duration(&at("lease_timeout"), text)?,
                None => default_lease,
            };
            let mut config = SubscriptionConfig::new(&sub.name, sub.topics.clone());
            config.topic_patterns = sub.topic_patterns.clone();
            if let Some(ordering) = &sub.ordering {
                config.ordering = ordering
                    .parse::<Ordering>()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at("ordering")))?;
            }
            if let Some(policy) = &sub.on_failure {
                config.on_failure = policy
                    .parse::<FailurePolicy>()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at("on_failure")))?;
            }
            config.start = match sub.start.as_deref() {
                None | Some("earliest") => StartFrom::Earliest,
                Some("latest") => StartFrom::Latest,
                Some(other) => bail!("{}: expected earliest or latest, got {other:?}", at("start")),
            };
            match &delivery {
                // A pulled event is redelivered as soon as its lease expires or it is nacked
                // (with the nack's delay); after max_attempts it is parked.
                Delivery::Pull => {
                    config.retry = RetryPolicy {
                        initial: Duration::ZERO,
                        factor: 1.0,
                        max_delay: Duration::ZERO,
                        max_attempts: sub.max_attempts.unwrap_or(PULL_MAX_ATTEMPTS_DEFAULT),
                        jitter: 0.0,
                    };
                }
                // The sink retries outages itself; the engine only sees rows PostgreSQL refuses
                // (parked at once). Batches fill only if enough calls are in flight.
                Delivery::Postgres(sink) => {
                    config.max_keys_in_flight = sink.keys_in_flight().min(KEYS_IN_FLIGHT_MAX);
                    if let Some(attempts) = sub.max_attempts {
                        config.retry.max_attempts = attempts;
                    }
                }
            }
            if let Some(limit) = sub.max_keys_in_flight {
                config.max_keys_in_flight = limit;
            }
            subscriptions
                .insert(sub.name.clone(), SubscriptionServerConfig { delivery, lease_timeout });
            engine.subscriptions.push(config);
        }
        engine.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            engine,
            listen,
            body_limit_bytes,
            publish_in_flight: file.publish_in_flight.unwrap_or(PUBLISH_IN_FLIGHT_DEFAULT),
            tokens: file.auth.tokens,
            subscriptions,
            storage,
        })
    }
}

/// A TOML error with file and line.
fn located(path: &Path, text: &str, error: &toml::de::Error) -> anyhow::Error {
    let before = |start: usize| &text[..start.min(text.len())];
    let line = error.span().map_or(0, |span| before(span.start).matches('\n').count() + 1);
    anyhow::anyhow!("{}:{line}: {}", path.display(), error.message())
}

fn duration(key: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{key}: {text:?} is not a duration like \"30s\""))
}

/// Parses `1MiB`, `512KiB`, `2MB`, `1000`.
pub fn byte_size(text: &str) -> anyhow::Result<usize> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize =
        number.parse().with_context(|| format!("{text:?} is not a size like \"1MiB\""))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        other => bail!("{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB)"),
    };
    number.checked_mul(factor).context("size too large")
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
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inorder.toml");
        std::fs::write(&path, text).unwrap();
        ServerConfig::load(&path)
    }

    #[test]
    fn the_documented_shape_loads() {
        let config = load(
            r#"
data_dir = "./inorder-data"
listen = "127.0.0.1:7070"
fsync = "group"

[[topics]]
name = "user_purchase"
actions = ["user.created", "user.purchased", "user.paid"]   # optional

[[subscriptions]]
name = "purchases"
topics = ["user_purchase"]
ordering = "actions"            # fifo | actions | sequence | none
delivery = "pull"
"#,
        )
        .unwrap();
        assert_eq!(config.engine.topics[0].actions.len(), 3);
        assert_eq!(config.engine.subscriptions[0].ordering, Ordering::Actions);
        assert!(!config.engine.auto_create_topics, "with a file only declared topics exist");
        assert_eq!(config.body_limit_bytes, 1 << 20);
    }

    #[test]
    fn the_readme_example_loads_with_every_optional_key_uncommented() {
        let readme = include_str!("../../../README.md");
        let block = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next());
        let text: String = block
            .expect("README has a toml block")
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = load(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(config.engine.subscriptions[0].max_keys_in_flight, 256);
        assert!(config.engine.topics[0].sequence_timeout.is_some());
    }

    #[test]
    fn a_bad_key_is_refused_with_its_line() {
        let err = load(
            "listen = \"127.0.0.1:7070\"\n\n[[subscriptions]]\nname = \"s\"\nordring = \"fifo\"\n",
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(":5:") && message.contains("ordring"), "{message}");
        let err =
            load("[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\nordering = \"random\"\n")
                .unwrap_err();
        assert!(format!("{err:#}").contains("subscriptions.s.ordering"), "{err:#}");
    }

    #[test]
    fn environment_variables_override_any_key() {
        let mut value: toml::Value = toml::from_str(
            "listen = \"a\"\n[[subscriptions]]\nname = \"purchases\"\nordering = \"actions\"\n",
        )
        .unwrap();
        let vars = [
            ("INORDER_LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
            ("INORDER_AUTH__TOKENS".to_owned(), "one,two".to_owned()),
            ("INORDER_SUBSCRIPTIONS__PURCHASES__ORDERING".to_owned(), "fifo".to_owned()),
            ("INORDER_PUBLISH_IN_FLIGHT".to_owned(), "7".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        apply_env_overrides(&mut value, vars).unwrap();
        assert_eq!(value["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(value["auth"]["tokens"].as_array().unwrap().len(), 2);
        assert_eq!(value["subscriptions"][0]["ordering"].as_str(), Some("fifo"));
        assert_eq!(value["publish_in_flight"].as_integer(), Some(7));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(byte_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(byte_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(byte_size("1000").unwrap(), 1000);
        assert!(byte_size("1XB").is_err());
    }
}
