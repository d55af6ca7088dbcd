use inorder::Ordering;

use super::*;

pub(super) fn load(text: &str) -> anyhow::Result<ServerConfig> {
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
    let readme = include_str!("../../../../README.md");
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
    let err = load("[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\nordering = \"random\"\n")
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

/// Loads `text` and expects it refused with exactly `expected` after the file's name.
pub(super) fn refused(text: &str, expected: &str) {
    let error = format!("{:#}", load(text).unwrap_err());
    let (_, after) = error.split_once("inorder.toml").unwrap();
    assert_eq!(after, expected, "{text}");
}

#[test]
fn every_value_is_checked_with_its_line_and_key() {
    refused(
        "fsync = \"sometimes\"\n",
        ":1: fsync: unknown variant `sometimes`, expected one of `always`, `group`, `never`",
    );
    refused(
        "[[subscriptions]]\nname = \"s\"\n\nordering = \"random\"\n",
        ":4: subscriptions.s.ordering: unknown variant `random`, expected one of `fifo`, `actions`, `sequence`, `none`",
    );
    refused(
        "[[subscriptions]]\nname = \"s\"\non_failure = \"retry\"\n",
        ":3: subscriptions.s.on_failure: unknown variant `retry`, expected `block` or `skip`",
    );
    refused(
        "[[subscriptions]]\nname = \"s\"\nstart = \"now\"\n",
        ":3: subscriptions.s.start: unknown variant `now`, expected `earliest` or `latest`",
    );
    refused(
        "[[subscriptions]]\nname = \"s\"\ndelivery = \"smtp\"\n",
        ":3: subscriptions.s.delivery: unknown variant `smtp`, expected one of `pull`, `postgres`, `webhook`",
    );
    refused("listen = \"nowhere\"\n", ":1: listen: invalid socket address syntax");
    refused(
        "body_limit = \"1XB\"\n",
        ":1: body_limit: \"1XB\": unknown unit \"XB\" (B, KiB, MiB, GiB, TiB, KB, MB)",
    );
    refused("body_limit = -1\n", ":1: body_limit: -1 is not a size");
    refused(
        "[[topics]]\nname = \"t\"\n[topics.retention]\nmax_bytes = 0\n",
        ":4: topics.t.retention.max_bytes: must be within 1..=1125899906842624 bytes",
    );
    refused(
        "[[topics]]\nname = \"t\"\n[topics.retention]\nmax_events = 0\n",
        ":4: topics.t.retention.max_events: must be within 1..=9007199254740992, got 0",
    );
    refused(
        "[[topics]]\nname = \"t\"\n[topics.retention]\nmax_age = \"1000000d\"\n",
        ":4: topics.t.retention.max_age: must be at most 100years",
    );
    refused("retention_interval = \"1ms\"\n", ":1: retention_interval: must be at least 10ms");
    refused("[cluster]\nlease_ttl = \"10ms\"\n", ":2: cluster.lease_ttl: must be at least 1s");
    refused(
        "[cluster]\npartitions = 1000\n",
        ":2: cluster.partitions: must be within 1..=256, got 1000",
    );
    refused(
        "segment_bytes = \"1KiB\"\n",
        ":1: segment_bytes: must be within 4096..=1073741824 bytes",
    );
    refused("publish_in_flight = 0\n", ":1: publish_in_flight: must be within 1..=65536, got 0");
    refused(
        "storage = \"disk\"\n",
        ":1: storage: unknown variant `disk`, expected `file` or `postgres`",
    );
}

#[test]
fn every_duration_has_a_maximum_named_with_its_line_and_key() {
    refused(
        "lease_timeout = \"10000000000000000000s\"\n",
        ":1: lease_timeout: must be at most 1day",
    );
    refused("lease_timeout = \"0s\"\n", ":1: lease_timeout: must be at least 1ms");
    refused(
        "lease_timeout = \"soon\"\n",
        ":1: lease_timeout: invalid value: string \"soon\", expected a duration",
    );
    refused(
        "[[topics]]\nname = \"t\"\nsequence_timeout = \"10000000000000000000s\"\n",
        ":3: topics.t.sequence_timeout: must be at most 30days",
    );
    refused(
        "[[topics]]\nname = \"t\"\n[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\nlease_timeout = \"2days\"\n",
        ":6: subscriptions.s.lease_timeout: must be at most 1day",
    );
    let pull = "[[topics]]\nname = \"t\"\n[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\n";
    refused(
        &format!("{pull}max_per_key = 1001\n"),
        ":6: subscriptions.s.max_per_key: must be within 1..=1000",
    );
    refused(
        &format!("{pull}max_per_key = 0\n"),
        ":6: subscriptions.s.max_per_key: must be within 1..=1000",
    );
    refused(
        &format!(
            "{pull}delivery = \"webhook\"\nmax_per_key = 5\n[subscriptions.webhook]\nurl = \"http://h/\"\n"
        ),
        ":7: subscriptions.s.max_per_key: applies to delivery = \"pull\" only",
    );
    let config = load(&format!("{pull}max_per_key = 100\n")).unwrap();
    assert_eq!(config.subscriptions["s"].max_per_key, 100);
    let sink = "[[topics]]\nname = \"t\"\n[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\n\
                delivery = \"postgres\"\n[subscriptions.postgres]\nurl = \"postgres://h/db\"\ntable = \"t\"\n";
    refused(
        &format!("{sink}batch_timeout = \"61s\"\n"),
        ":10: subscriptions.s.postgres.batch_timeout: must be at most 1m",
    );
    refused(
        &format!("{sink}ttl = \"1000years\"\n"),
        ":10: subscriptions.s.postgres.ttl: must be at most 100years",
    );
    let config = load(&format!("{sink}batch_timeout = \"60s\"\nttl = \"7d\"\n")).unwrap();
    let Delivery::Postgres(sink) = &config.subscriptions["s"].delivery else { panic!("a sink") };
    assert_eq!(
        (sink.batch_timeout, sink.ttl),
        (Duration::from_secs(60), Some(Duration::from_secs(7 * 86_400)))
    );
}

#[test]
fn delivery_and_storage_rules_name_the_key_and_its_line() {
    let subscription =
        "[[topics]]\nname = \"t\"\n[[subscriptions]]\nname = \"s\"\ntopics = [\"t\"]\n";
    refused(
        &format!("{subscription}delivery = \"postgres\"\n"),
        ":6: subscriptions.s.delivery: delivery = \"postgres\" needs a [subscriptions.postgres] table",
    );
    refused(
        &format!(
            "{subscription}[subscriptions.postgres]\nurl = \"postgres://h/db\"\ntable = \"t\"\n"
        ),
        ":6: subscriptions.s.postgres: only for delivery = \"postgres\"",
    );
    refused(
        "[storage]\nbackend = \"postgres\"\n",
        ":1: storage: the postgres backend needs [storage.postgres] with a url",
    );
    refused(
        "[storage]\nbackend = \"file\"\n[storage.postgres]\nurl = \"postgres://h/db\"\n",
        ":3: storage.postgres: only for backend = \"postgres\"",
    );
    assert_eq!(load("storage = \"file\"\n").unwrap().storage, StorageChoice::File);
}

#[test]
fn cluster_mode_needs_the_postgres_storage_and_takes_its_settings() {
    let error = format!("{:#}", load("[cluster]\nnode = \"a\"\n").unwrap_err());
    assert!(error.contains("cluster mode needs storage = \"postgres\""), "{error}");
    let config = load(
        "[storage.postgres]\nurl = \"postgres://h/db\"\n[cluster]\nnode = \"a\"\n\
         partitions = 4\nlease_ttl = \"2s\"\n",
    )
    .unwrap();
    let cluster = config.engine.cluster.unwrap();
    assert_eq!((cluster.node.as_str(), cluster.partitions), ("a", 4));
    assert_eq!(cluster.lease_ttl, Duration::from_secs(2));
    let default = load("[storage.postgres]\nurl = \"postgres://h/db\"\n[cluster]\n").unwrap();
    let node = default.engine.cluster.unwrap().node;
    assert!(node.ends_with(&format!("-{}", std::process::id())), "{node}");
}

#[test]
fn overrides_are_checked_naming_the_key() {
    let mut value: toml::Value = toml::from_str("[[subscriptions]]\nname = \"s\"\n").unwrap();
    let vars = [("INORDER_SUBSCRIPTIONS__S__LEASE_TIMEOUT".to_owned(), "2days".to_owned())];
    apply_env_overrides(&mut value, vars).unwrap();
    let source = Source::overridden(Some(Path::new("inorder.toml")), &value).unwrap();
    let error = source.deserialize::<FileConfig>().unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "inorder.toml with INORDER_* overrides: subscriptions.s.lease_timeout: must be at most 1day"
    );
}
