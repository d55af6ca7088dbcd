//! A process manager over several topics sees what happened in the order it happened (commit
//! order), also after being down. The specification's late-fee manager joins a daily cycle with
//! loans: every cycle charges each loan open at that moment. While it was down the log recorded
//! "11-02 cycled, atlas returned, 11-03 cycled, bible opened (back-dated)": the only fee is atlas
//! for 11-02. Reading one topic at a time — either order — charges the wrong loans.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::PATIENCE;
use inorder::{Engine, EngineConfig, Event, HandlerError, TopicConfig};
use inorder_cqrs::{Emit, ProcessManager, process};

/// Charges a fee to every open loan on each `system.cycled`.
struct LateFees {
    topics: Vec<String>,
}

impl ProcessManager for LateFees {
    type State = BTreeSet<String>;

    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    fn handle(&self, open: &Self::State, event: &Event) -> Result<Vec<Emit>, HandlerError> {
        if event.action != "system.cycled" {
            return Ok(Vec::new());
        }
        let date = event.key.clone();
        Ok(open
            .iter()
            .map(|loan| Emit::new("fees", loan, "fee.charged", serde_json::json!({ "date": date })))
            .collect())
    }

    fn apply(&self, open: &mut Self::State, event: &Event) {
        match event.action.as_str() {
            "loan.opened" => {
                open.insert(event.key.clone());
            }
            "loan.returned" => {
                open.remove(&event.key);
            }
            _ => {}
        }
    }
}

fn config(dir: &std::path::Path) -> EngineConfig {
    ["cycles", "loans", "fees"]
        .into_iter()
        .fold(EngineConfig::new(dir), |config, topic| config.topic(TopicConfig::new(topic)))
}

async fn publish(engine: &Engine, topic: &str, key: &str, action: &str) -> u64 {
    engine.publish(Event::builder(topic, key, action).build().unwrap()).await.unwrap()
}

async fn fees_after_downtime(topics: [&str; 2]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(config(dir.path())).start().await.unwrap();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let manager = process::start(engine.clone(), "late-fees", LateFees { topics: topics.clone() })
        .await
        .unwrap();
    let opened = publish(&engine, "loans", "atlas", "loan.opened").await;
    assert!(manager.wait_handled("loans", opened, PATIENCE).await);
    manager.stop().await.unwrap();

    // While it is down.
    publish(&engine, "cycles", "2026-11-02", "system.cycled").await;
    publish(&engine, "loans", "atlas", "loan.returned").await;
    let last_cycle = publish(&engine, "cycles", "2026-11-03", "system.cycled").await;
    let last_loan = publish(&engine, "loans", "bible", "loan.opened").await;

    let manager = process::start(engine.clone(), "late-fees", LateFees { topics }).await.unwrap();
    assert!(manager.wait_handled("cycles", last_cycle, PATIENCE).await);
    assert!(manager.wait_handled("loans", last_loan, PATIENCE).await);
    manager.stop().await.unwrap();
    let fees = engine.read("fees", 1, 100).await.unwrap();
    engine.shutdown().await;
    fees.iter()
        .map(|fee| {
            let data: serde_json::Value = serde_json::from_slice(&fee.data).unwrap();
            (fee.key.clone(), data["date"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_fee_manager_charges_the_loans_open_at_each_cycle_after_downtime() {
    let expected = [("atlas".to_owned(), "2026-11-02".to_owned())];
    assert_eq!(fees_after_downtime(["cycles", "loans"]).await, expected);
    assert_eq!(fees_after_downtime(["loans", "cycles"]).await, expected, "topic order irrelevant");
}
