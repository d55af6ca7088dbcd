//! Engine configuration: topics, subscriptions, ordering, retries.
//!
//! Plain Rust values; the server maps its TOML file onto them. [`EngineConfig::validate`]
//! checks everything before the engine touches the disk and names the offending item.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use inorder_log::{FsyncPolicy, Name};

use crate::{
    error::{Error, Result},
    limits::{
        KEYS_IN_FLIGHT_DEFAULT, KEYS_IN_FLIGHT_MAX, LEASE_TTL_DEFAULT, LEASE_TTL_MAX,
        LEASE_TTL_MIN, NODE_ID_MAX_BYTES, PARTITIONS_DEFAULT, PARTITIONS_MAX,
        RETENTION_INTERVAL_DEFAULT, RETENTION_INTERVAL_MAX, RETENTION_INTERVAL_MIN,
        RETRY_DELAY_MAX, RETRY_FACTOR_DEFAULT, RETRY_INITIAL_DEFAULT, RETRY_MAX_ATTEMPTS_DEFAULT,
        RETRY_MAX_DELAY_DEFAULT, SEQUENCE_TIMEOUT_MAX, TOPIC_ACTIONS_MAX, TOPICS_DEFAULT_MAX,
        TOPICS_MAX,
    },
    retention::Retention,
};

/// Everything the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where logs and state live (`topics/<topic>/`, `state/`).
    pub data_dir: PathBuf,
    /// When appends become durable (default `group`).
    pub fsync: FsyncPolicy,
    /// Create a topic on its first publish (otherwise only configured topics exist).
    pub auto_create_topics: bool,
    /// Segment size of topic logs.
    pub segment_bytes: u64,
    /// Most topics the engine holds (declared, stored and auto-created together): a publish to a
    /// new topic beyond it is refused with [`Error::TopicLimit`]. Each topic costs open files and
    /// memory, so anyone who can publish must not be able to create them without end.
    pub max_topics: usize,
    /// How often topics with a retention policy are purged.
    pub retention_interval: Duration,
    /// Topics declared up front.
    pub topics: Vec<TopicConfig>,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Cluster mode: this engine is one of several nodes sharing one storage, handling the
    /// partitions of each subscription's keys it leases (see [`crate::cluster`]). `None`: every
    /// key here.
    pub cluster: Option<ClusterConfig>,
}

/// This node's part in a cluster of engines sharing one storage (PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id, unique among live nodes (`hostname-pid` by default in the server).
    pub node: String,
    /// Partitions each subscription's keys are split into; every node must use the same.
    pub partitions: u16,
    /// How long a lease lasts without renewal: a dead node's partitions move after it.
    pub lease_ttl: Duration,
}

impl ClusterConfig {
    /// A node with the default partitions and lease.
    #[must_use]
    pub fn new(node: impl Into<String>) -> Self {
        Self { node: node.into(), partitions: PARTITIONS_DEFAULT, lease_ttl: LEASE_TTL_DEFAULT }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.node.is_empty()
            || self.node.len() > NODE_ID_MAX_BYTES
            || self.node.chars().any(char::is_control)
        {
            return Err(Error::config(format!(
                "cluster.node must be 1..={NODE_ID_MAX_BYTES} bytes without control characters"
            )));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return Err(Error::config(format!(
                "cluster.partitions must be within 1..={PARTITIONS_MAX}"
            )));
        }
        if !(LEASE_TTL_MIN..=LEASE_TTL_MAX).contains(&self.lease_ttl) {
            return Err(Error::config(format!(
                "cluster.lease_ttl must be within {}..={}",
                humanize(LEASE_TTL_MIN),
                humanize(LEASE_TTL_MAX)
            )));
        }
        Ok(())
    }
}

impl EngineConfig {
    /// A configuration with no topics or subscriptions, fsync = group, no auto-creation.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Group,
            auto_create_topics: false,
            segment_bytes: inorder_log::limits::SEGMENT_BYTES_DEFAULT,
            max_topics: TOPICS_DEFAULT_MAX,
            retention_interval: RETENTION_INTERVAL_DEFAULT,
            topics: Vec::new(),
            subscriptions: Vec::new(),
            cluster: None,
        }
    }

    /// Adds a topic.
    #[must_use]
    pub fn topic(mut self, topic: TopicConfig) -> Self {
        self.topics.push(topic);
        self
    }

    /// Adds a subscription.
    #[must_use]
    pub fn subscription(mut self, subscription: SubscriptionConfig) -> Self {
        self.subscriptions.push(subscription);
        self
    }

    /// Checks names, actions, limits and references; names the offending item.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        if !(1..=TOPICS_MAX).contains(&self.max_topics) {
            return Err(Error::config(format!("max_topics must be within 1..={TOPICS_MAX}")));
        }
        if !(RETENTION_INTERVAL_MIN..=RETENTION_INTERVAL_MAX).contains(&self.retention_interval) {
            return Err(Error::config(format!(
                "retention_interval must be within {}ms..={}",
                RETENTION_INTERVAL_MIN.as_millis(),
                humanize(RETENTION_INTERVAL_MAX)
            )));
        }
        if self.topics.len() > self.max_topics {
            return Err(Error::config(format!(
                "{} topics are declared; max_topics is {}",
                self.topics.len(),
                self.max_topics
            )));
        }
        let mut topics = BTreeSet::new();
        for topic in &self.topics {
            topic.validate()?;
            if !topics.insert(topic.name.as_str()) {
                return Err(Error::config(format!("topic {} is declared twice", topic.name)));
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        let mut subscriptions = BTreeSet::new();
        for subscription in &self.subscriptions {
            subscription.validate()?;
            self.check_clustered(subscription)?;
            if !subscriptions.insert(subscription.name.as_str()) {
                return Err(Error::config(format!(
                    "subscription {} is declared twice",
                    subscription.name
                )));
            }
            for topic in &subscription.topics {
                if !self.auto_create_topics && !topics.contains(topic.as_str()) {
                    return Err(Error::config(format!(
                        "subscription {} names topic {topic}, which is not declared \
                         (declare it or set auto_create_topics)",
                        subscription.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses, in cluster mode, what partitions cannot keep yet: per-key commit order across
    /// several topics (its turns are one node's).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the subscription.
    pub fn check_clustered(&self, subscription: &SubscriptionConfig) -> Result<()> {
        let several = subscription.topics.len() + subscription.topic_patterns.len() > 1
            || !subscription.topic_patterns.is_empty();
        if self.cluster.is_some() && several && subscription.ordering == Ordering::Fifo {
            return Err(Error::config(format!(
                "subscription {}: fifo order over several topics is not available in cluster \
                 mode (use one topic, or ordering = \"none\" / \"actions\" / \"sequence\")",
                subscription.name
            )));
        }
        Ok(())
    }
}

/// A topic and its ordering contract.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// The topic's name (`[A-Za-z0-9._-]`, at most 200 bytes).
    pub name: String,
    /// The Seqy contract: per key, these actions are handled in this order, each once. Empty:
    /// any action is accepted. Publishing an action not listed is refused.
    pub actions: Vec<String>,
    /// When a key's sequence is complete, whether a new event starts a new sequence (`true`) or
    /// is parked as `sequence_complete` (`false`).
    pub repeat: bool,
    /// How long a key's sequence (or producer sequence) may wait for a missing event before its
    /// buffered events are parked as `timeout`. `None`: wait forever.
    pub sequence_timeout: Option<Duration>,
    /// Which of its oldest events may be deleted (default: none).
    pub retention: Retention,
}

impl TopicConfig {
    /// A topic without an actions contract.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            actions: Vec::new(),
            repeat: false,
            sequence_timeout: None,
            retention: Retention::forever(),
        }
    }

    /// Its retention policy.
    #[must_use]
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The actions, in order.
    #[must_use]
    pub fn actions<I: IntoIterator<Item = S>, S: Into<String>>(mut self, actions: I) -> Self {
        self.actions = actions.into_iter().map(Into::into).collect();
        self
    }

    /// Whether a completed sequence may start again.
    #[must_use]
    pub fn repeat(mut self, repeat: bool) -> Self {
        self.repeat = repeat;
        self
    }

    /// How long a sequence may wait for a missing event.
    #[must_use]
    pub fn sequence_timeout(mut self, timeout: Duration) -> Self {
        self.sequence_timeout = Some(timeout);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        Name::new("topic", &self.name).map_err(|e| Error::config(e.to_string()))?;
        if self.actions.len() > TOPIC_ACTIONS_MAX {
            return Err(Error::config(format!(
                "topic {} declares {} actions; at most {TOPIC_ACTIONS_MAX}",
                self.name,
                self.actions.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for action in &self.actions {
            if action.is_empty() || !seen.insert(action) {
                return Err(Error::config(format!(
                    "topic {} lists action {action:?} twice or empty",
                    self.name
                )));
            }
        }
        if self.sequence_timeout.is_some_and(|t| t.is_zero() || t > SEQUENCE_TIMEOUT_MAX) {
            return Err(Error::config(format!(
                "topic {}: sequence_timeout must be positive and at most {}",
                self.name,
                humanize(SEQUENCE_TIMEOUT_MAX)
            )));
        }
        self.retention.validate(&self.name)
    }
}

/// How a subscription orders the events of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Per key, in log order.
    #[default]
    Fifo,
    /// Per key, the topic's `actions` in their order, each once (the Seqy contract).
    Actions,
    /// Per key, by the producer's `sequence` number starting at 1: gaps wait, numbers already
    /// handled are dropped.
    Sequence,
    /// No per-key constraint: every event may run in parallel.
    None,
}

impl std::str::FromStr for Ordering {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fifo" => Ok(Self::Fifo),
            "actions" => Ok(Self::Actions),
            "sequence" => Ok(Self::Sequence),
            "none" => Ok(Self::None),
            other => Err(Error::config(format!(
                "ordering must be fifo, actions, sequence or none (got {other:?})"
            ))),
        }
    }
}

/// What happens to a key when one of its events is parked after its last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The key's later events wait (parked as `blocked`) until an operator retries or discards
    /// the failed one; then they run in order.
    Block,
    /// The key moves on to its next event.
    #[default]
    Skip,
}

impl std::str::FromStr for FailurePolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "block" => Ok(Self::Block),
            "skip" => Ok(Self::Skip),
            other => {
                Err(Error::config(format!("on_failure must be block or skip (got {other:?})")))
            }
        }
    }
}

/// Where a subscription starts on a topic it has never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// From the first event in the log.
    #[default]
    Earliest,
    /// From the next event appended.
    Latest,
}

/// Exponential backoff with jitter for failed handler calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Each further delay is the previous one times this.
    pub factor: f64,
    /// Upper bound of a delay.
    pub max_delay: Duration,
    /// Attempts (the first call included) before the event is parked.
    pub max_attempts: u32,
    /// Each delay is drawn uniformly from `[delay * (1 - jitter), delay]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: RETRY_INITIAL_DEFAULT,
            factor: RETRY_FACTOR_DEFAULT,
            max_delay: RETRY_MAX_DELAY_DEFAULT,
            max_attempts: RETRY_MAX_ATTEMPTS_DEFAULT,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based), before jitter.
    #[must_use]
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let delay = self.initial.as_secs_f64() * self.factor.powi(exponent);
        Duration::try_from_secs_f64(delay).map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// The delay after failed attempt `attempt`, with jitter.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        base.mul_f64(1.0 - self.jitter * fastrand::f64())
    }

    fn validate(&self, subscription: &str) -> Result<()> {
        let bad = |what: &str| Err(Error::config(format!("subscription {subscription}: {what}")));
        if self.max_attempts == 0 {
            return bad("retry.max_attempts must be at least 1");
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return bad("retry.factor must be a finite number >= 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("retry.jitter must be within 0..=1");
        }
        if self.initial > self.max_delay {
            return bad("retry.initial must not exceed retry.max_delay");
        }
        if self.max_delay > RETRY_DELAY_MAX {
            return bad(&format!("retry.max_delay must be at most {}", humanize(RETRY_DELAY_MAX)));
        }
        Ok(())
    }
}

/// A named consumer of one or more topics.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    /// The subscription's name (`[A-Za-z0-9._-]`).
    pub name: String,
    /// Topics consumed, by exact name.
    pub topics: Vec<String>,
    /// Topics consumed, by regular expression matched against the whole name (`user\..*`
    /// matches `user.x`, not `superuser.x`).
    pub topic_patterns: Vec<String>,
    /// Per-key ordering.
    pub ordering: Ordering,
    /// Most keys whose handler runs at once.
    pub max_keys_in_flight: usize,
    /// Retries of failed handler calls.
    pub retry: RetryPolicy,
    /// What a parked event does to its key.
    pub on_failure: FailurePolicy,
    /// Where to start on a topic never read.
    pub start: StartFrom,
}

impl SubscriptionConfig {
    /// A fifo subscription to the given topics with default limits.
    #[must_use]
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        name: impl Into<String>,
        topics: I,
    ) -> Self {
        Self {
            name: name.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            topic_patterns: Vec::new(),
            ordering: Ordering::Fifo,
            max_keys_in_flight: KEYS_IN_FLIGHT_DEFAULT,
            retry: RetryPolicy::default(),
            on_failure: FailurePolicy::Skip,
            start: StartFrom::Earliest,
        }
    }

    /// Sets the ordering.
    #[must_use]
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// Adds a topic pattern.
    #[must_use]
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.topic_patterns.push(pattern.into());
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the failure policy.
    #[must_use]
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Sets the keys-in-flight limit.
    #[must_use]
    pub fn max_keys_in_flight(mut self, limit: usize) -> Self {
        self.max_keys_in_flight = limit;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        Name::new("subscription", &self.name).map_err(|e| Error::config(e.to_string()))?;
        if self.topics.is_empty() && self.topic_patterns.is_empty() {
            return Err(Error::config(format!("subscription {} consumes no topic", self.name)));
        }
        for topic in &self.topics {
            Name::new("topic", topic)
                .map_err(|e| Error::config(format!("subscription {}: {e}", self.name)))?;
        }
        for pattern in &self.topic_patterns {
            TopicPattern::new(pattern)
                .map_err(|e| Error::config(format!("subscription {}: {e}", self.name)))?;
        }
        if !(1..=KEYS_IN_FLIGHT_MAX).contains(&self.max_keys_in_flight) {
            return Err(Error::config(format!(
                "subscription {}: max_keys_in_flight must be within 1..={KEYS_IN_FLIGHT_MAX}",
                self.name
            )));
        }
        self.retry.validate(&self.name)
    }
}

/// A duration as written in messages (`86400s`).
fn humanize(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// A topic pattern, anchored at both ends.
#[derive(Debug, Clone)]
pub struct TopicPattern(regex::Regex);

impl TopicPattern {
    /// Compiles `pattern` so that it must match a whole topic name.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the pattern does not compile.
    pub fn new(pattern: &str) -> Result<Self> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(Self)
            .map_err(|e| Error::config(format!("topic pattern {pattern:?}: {e}")))
    }

    /// Whether the whole `topic` matches.
    #[must_use]
    pub fn matches(&self, topic: &str) -> bool {
        self.0.is_match(topic)
    }
}

#[cfg(test)]
mod tests;
