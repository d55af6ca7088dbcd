//! A full disk, for real: `inorder serve` on a small tmpfs. Publishes fill it until the log
//! refuses with `503 storage-unavailable`; nothing that got a `201` is lost; once there is space
//! again a restart takes publishes again.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ServerProcess, client, event, problem_type, read_all};
use serde_json::json;

/// Mounts a tmpfs of `size` at `dir`; `false` (said loudly) where the machine does not allow it.
fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root, or CAP_SYS_ADMIN); the full-disk \
             path is covered by the SimVfs tests of inorder-log"
        );
    }
    mounted
}

fn remount(dir: &std::path::Path, size: &str) {
    let status = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "remount {dir:?}");
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_storage_unavailable_loses_nothing_and_recovers() {
    let holder = tempfile::tempdir().unwrap();
    let data = holder.path().join("data");
    if !mount_tmpfs(&data, "24m") {
        return;
    }
    let _unmount = Unmount(data.clone());
    let config = "auto_create_topics = true\n[[topics]]\nname = \"t\"\n";
    let mut server = ServerProcess::start_with_data(config, &data);
    let padding = "x".repeat(16 * 1024);
    let mut accepted = Vec::new();
    let refused = loop {
        let body = json!({
            "specversion": "1.0", "type": "a", "source": "/t", "partitionkey": "k",
            "id": format!("e-{}", accepted.len()), "data": { "padding": padding },
        });
        let response = client()
            .post(server.url("/v1/topics/t/events"))
            .header("content-type", "application/cloudevents+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        if status == 201 {
            accepted.push(body["position"].as_u64().unwrap());
            assert!(accepted.len() < 10_000, "24 MiB never filled up");
            continue;
        }
        break (status, body);
    };
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(problem_type(&refused.1), "storage-unavailable", "{}", refused.1);
    let again = common::post_event(&server, "t", &event("a", "k")).await;
    assert_eq!(again.0, 503, "the log stays latched: {}", again.1);

    // Space again, and a restart: every accepted event is there, and publishing works.
    remount(&data, "128m");
    server.kill_and_restart();
    let events = read_all(&server, "t").await;
    for position in &accepted {
        assert!(
            events.iter().any(|e| e["position"].as_u64() == Some(*position)),
            "accepted event {position} lost"
        );
    }
    let (status, body) = common::post_event(&server, "t", &event("a", "k")).await;
    assert_eq!(status, 201, "{body}");
}
