//! `inorder log verify` and `inorder log repair` on a real server's data directory: refused while
//! the server runs (it holds the logs' locks); a flipped bit in the middle of a topic's log is
//! reported with its file and byte offset (exit code 2), the server keeps the damaged topic
//! failed while the others work, and a repair moves the damage and everything after it into a
//! quarantine file next to the segment and retires their positions, after which the topic takes
//! events again — at new positions, so a subscription that had handled the old ones sees every
//! new event.

#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Output};

use common::{
    ServerProcess, ack, event, get, inorder, lease_and_type, post_event, pull, read_all, stdout,
};
use inorder_log::record::decode_record;

const CONFIG: &str = r#"
[[topics]]
name = "orders"

[[topics]]
name = "billing"

[[subscriptions]]
name = "audit"
topics = ["orders"]
delivery = "pull"
"#;

fn log_command(server: &ServerProcess, args: &[&str]) -> Output {
    let data = server.dir.path().join("data");
    let data = data.to_str().unwrap();
    let output = inorder(server, &[&["log"], args, &["--data-dir", data]].concat(), None);
    eprintln!("inorder log {args:?}: {output:?}\n{}", stdout(&output));
    output
}

/// Byte offsets of the records of a segment file.
fn record_offsets(segment: &Path) -> Vec<usize> {
    let bytes = std::fs::read(segment).unwrap();
    let mut offsets = Vec::new();
    let mut at = 32;
    while at < bytes.len() {
        offsets.push(at);
        at += decode_record(&bytes[at..]).unwrap().record_bytes;
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_flipped_bit_and_repair_moves_it_aside_so_the_topic_works_again() {
    let mut server = ServerProcess::start(CONFIG);
    for i in 0..100 {
        let (status, body) =
            post_event(&server, "orders", &event("order.created", &format!("o-{i}"))).await;
        assert_eq!(status, 201, "{body}");
    }
    for _ in 0..3 {
        assert_eq!(post_event(&server, "billing", &event("bill.sent", "b")).await.0, 201);
    }
    // The subscription handles all 100 events.
    let mut handled = 0;
    while handled < 100 {
        let messages = pull(&server, "audit", 100, "5s").await;
        let leases: Vec<_> = messages.iter().map(|m| lease_and_type(m).0).collect();
        ack(&server, "audit", &leases).await;
        handled += leases.len();
    }
    let (status, body) = get(&server, "/v1/status/orders/100?subscription=audit&wait=10s").await;
    assert_eq!(status, 200, "{body}");

    // A running server holds every log's lock: the tools refuse rather than read a live log.
    let output = log_command(&server, &["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("stop the server first"));
    assert!(server.terminate().success());

    let output = log_command(&server, &["verify"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.contains("orders: sound, positions 1..=100"), "{text}");
    assert!(text.contains("billing: sound, positions 1..=3"), "{text}");

    // Flip a bit in the data of event 50 of `orders`.
    let segment = server.dir.path().join("data/topics/orders/00000000000000000001.seg");
    let record_50 = record_offsets(&segment)[49];
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[record_50 + 20] ^= 0x08;
    std::fs::write(&segment, &bytes).unwrap();

    let output = log_command(&server, &["verify"]);
    assert_eq!(output.status.code(), Some(2), "damage found");
    let text = stdout(&output);
    let damage = format!(
        "orders: DAMAGED: record checksum mismatch at byte {record_50} of {} (position 50)",
        segment.display()
    );
    assert!(text.contains(&damage), "{text}");
    assert!(text.contains("billing: sound"), "{text}");
    assert_eq!(log_command(&server, &["verify", "--topic", "billing"]).status.code(), Some(0));

    // The server starts: the damaged topic refuses events, the other one takes them.
    server.restart();
    assert_ne!(post_event(&server, "orders", &event("order.created", "x")).await.0, 201);
    assert_eq!(post_event(&server, "billing", &event("bill.sent", "b")).await.0, 201);
    assert!(server.terminate().success());

    // Without --yes a repair only tells what it would do.
    let output = log_command(&server, &["repair", "--topic", "orders"]);
    assert_eq!(output.status.code(), Some(2));
    let quarantine = format!("{}.at-{record_50}.quarantine", segment.display());
    let text = stdout(&output);
    assert!(text.contains(&quarantine), "the plan says where the damage goes: {text}");
    assert!(text.contains("(positions 50..=100)"), "{text}");
    assert!(text.contains("positions 50..=100 are retired"), "{text}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was changed");

    let output = log_command(&server, &["repair", "--topic", "orders", "--yes"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.contains(
            "orders: repaired: positions 1..=49 stay in the log, positions 50..=100 are retired \
             (lost); the next event gets 101"
        ),
        "{text}"
    );
    assert_eq!(std::fs::read(&quarantine).unwrap(), bytes[record_50..], "kept, not deleted");
    assert_eq!(log_command(&server, &["verify"]).status.code(), Some(0));

    server.restart();
    let events = read_all(&server, "orders").await;
    assert_eq!(events.len(), 49, "reads skip the retired positions");
    let (status, body) = post_event(&server, "orders", &event("order.created", "again")).await;
    assert_eq!((status, body["position"].as_u64()), (201, Some(101)), "{body}");
    // The subscription had handled up to 100: it gets the new event, nothing is skipped.
    let messages = pull(&server, "audit", 10, "5s").await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["event"]["partitionkey"], "again", "{messages:?}");
    assert_eq!(read_all(&server, "billing").await.len(), 4);
}

#[test]
fn the_log_commands_name_what_they_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_inorder"))
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let output = run(&["log", "verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no topics directory"), "{output:?}");
    let output = run(&["log", "repair", "--topic", "../etc"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid topic name"), "{output:?}");
}
