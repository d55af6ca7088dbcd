//! The `inorder` command line against a running server, the in-process demo, and how a bad
//! configuration file is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ServerProcess, ack, inorder, lease_and_type, pull, stdout};

const CONFIG: &str = r#"
[[topics]]
name = "orders"

[[subscriptions]]
name = "audit"
topics = ["orders"]
delivery = "pull"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_tail_status_and_topics_through_the_cli() {
    let server = ServerProcess::start(CONFIG);
    let one = ["publish", "--topic", "orders", "--key", "o-1", "--action", "order.created"];
    let output = inorder(&server, &[&one[..], &[r#"{"total": 12}"#]].concat(), None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "orders/1\n");

    let lines = "{\"n\": 1}\n\n{\"n\": 2}\n{\"specversion\": \"1.0\", \"id\": \"own\", \"source\": \"/x\", \"type\": \"order.paid\"}\n";
    let batch = ["publish", "--topic", "orders", "--key", "o-2", "--action", "order.created"];
    let output = inorder(&server, &batch, Some(lines));
    assert!(output.status.success(), "{output:?}");

    let output = inorder(&server, &["tail", "--topic", "orders"], None);
    let events: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e["position"].as_u64().unwrap(), e["type"].as_str().unwrap(), e["data"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "order.created", serde_json::json!({"total": 12})),
            (2, "order.created", serde_json::json!({"n": 1})),
            (3, "order.created", serde_json::json!({"n": 2})),
            (4, "order.paid", serde_json::Value::Null),
        ]
    );
    // Without --topic: every topic in commit order, each event with its topic and commit.
    let output = inorder(&server, &["tail"], None);
    let all: Vec<serde_json::Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let commits: Vec<u64> = all.iter().map(|e| e["commit"].as_u64().unwrap()).collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");
    assert!(all.iter().all(|e| e["topic"] == "orders"), "{all:?}");
    assert_eq!(events[3]["id"], "own", "a line that is a CloudEvent is published as it is");

    let output = inorder(&server, &["status", "orders/1"], None);
    assert_eq!(output.status.code(), Some(2), "not processed yet: {output:?}");
    assert_eq!(stdout(&output), "orders/1: not processed yet\n");
    let messages = pull(&server, "audit", 1, "0s").await;
    let (lease, _) = lease_and_type(&messages[0]);
    ack(&server, "audit", &[lease]).await;
    let output = inorder(&server, &["status", "orders/1", "--wait", "5s"], None);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(stdout(&output), "orders/1: processed\n");

    let output = inorder(&server, &["topics"], None);
    assert!(output.status.success());
    let row = stdout(&output).lines().find(|l| l.starts_with("orders")).unwrap().to_owned();
    assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), ["orders", "1", "4"]);

    let output =
        inorder(&server, &["publish", "--topic", "orders", "--action", "x", "not json"], None);
    assert_eq!(output.status.code(), Some(1), "bad input is refused");
    assert!(String::from_utf8_lossy(&output.stderr).contains("JSON"), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_subscriptions_are_managed_through_the_cli() {
    let server = ServerProcess::start(CONFIG);
    let ok = |args: &[&str]| {
        let output = inorder(&server, args, None);
        assert!(output.status.success(), "{args:?}: {output:?}");
        stdout(&output)
    };
    let created =
        ok(&["topics", "create", "clicks", "--definition", r#"{"retention": {"max_age": "7d"}}"#]);
    assert!(created.starts_with("topic clicks created"), "{created}");
    let definition = server.dir.path().join("late.json");
    std::fs::write(&definition, r#"{"topics": ["clicks"], "ordering": "fifo"}"#).unwrap();
    let at_file = format!("@{}", definition.display());
    let created = ok(&["subscriptions", "create", "late", "--definition", &at_file]);
    assert!(created.starts_with("subscription late created"), "{created}");
    ok(&["publish", "--topic", "clicks", "--key", "u-1", "--action", "clicked", "{}"]);
    assert!(ok(&["subscriptions", "pause", "late"]).contains("paused"));
    assert!(ok(&["subscriptions", "resume", "late"]).contains("resumed"));
    let messages = pull(&server, "late", 1, "5s").await;
    ack(&server, "late", &[lease_and_type(&messages[0]).0]).await;
    let rewound = ok(&["subscriptions", "rewind", "late", "--position", "1"]);
    assert_eq!(rewound, "subscription late: clicks resumes at position 1\n");
    assert_eq!(pull(&server, "late", 1, "5s").await.len(), 1, "handed out again after the rewind");
    ok(&["subscriptions", "update", "late", "--definition", r#"{"max_attempts": 2}"#]);
    let listed = ok(&["subscriptions"]);
    assert!(listed.lines().any(|line| line.starts_with("late")), "{listed}");

    // The file's own are refused, naming the file; a consumed topic needs --force.
    let refused = inorder(&server, &["subscriptions", "delete", "audit"], None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("inorder.toml"), "{refused:?}");
    let refused = inorder(&server, &["topics", "delete", "clicks"], None);
    assert_eq!(refused.status.code(), Some(1), "a consumed topic needs --force");
    ok(&["topics", "delete", "clicks", "--force"]);
    ok(&["subscriptions", "delete", "late"]);
    assert!(!ok(&["topics"]).contains("clicks"));
}

#[test]
fn the_demo_shows_every_user_handled_in_order() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_inorder")).args(["demo", "--users", "4"]).output();
    let output = output.unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert_eq!(text.matches('✓').count(), 4, "{text}");
    assert!(!text.contains('✗'), "{text}");
}

#[test]
fn a_bad_configuration_file_is_refused_with_its_line() {
    let (code, stderr) =
        common::serve_refuses("[[topics]]\nname = \"orders\"\nretention = \"forever\"\n");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("inorder.toml:3:"), "{stderr}");
    assert!(stderr.contains("retention"), "{stderr}");
}

#[test]
fn a_duration_above_its_maximum_is_refused_at_start_with_its_line_key_and_maximum() {
    let cases = [
        (
            "lease_timeout = \"10000000000000000000s\"\n",
            "inorder.toml:1: lease_timeout: must be at most 1day",
        ),
        (
            "[[topics]]\nname = \"orders\"\nsequence_timeout = \"10000000000000000000s\"\n",
            "inorder.toml:3: topics.orders.sequence_timeout: must be at most 30days",
        ),
        (
            "[[topics]]\nname = \"orders\"\n[[subscriptions]]\nname = \"s\"\ntopics = [\"orders\"]\n\
             lease_timeout = \"25h\"\n",
            "inorder.toml:6: subscriptions.s.lease_timeout: must be at most 1day",
        ),
    ];
    for (config, expected) in cases {
        let (code, stderr) = common::serve_refuses(config);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
}
