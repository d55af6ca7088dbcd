//! `late_fees`: the daily scheduler plus a process manager. The `DailyCycler` publishes
//! `system.cycled` once per date (here on a manual clock running five days in milliseconds); the
//! `late-fees` manager keeps the open loans and, on each cycled date, emits `fee.charged` for
//! every loan overdue on that date — effectively once, even if it is restarted.
//!
//! Run: `cargo run -p inorder-cqrs --example late_fees`

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use inorder::{Engine, EngineConfig, Event, HandlerError, TopicConfig};
use inorder_cqrs::{
    DailyCycler, Emit, ManualClock, ProcessManager, process, scheduler::DailyCyclerConfig,
};
use jiff::{Timestamp, civil::date};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Open loans: item → due date (`YYYY-MM-DD`).
struct LateFees;

impl ProcessManager for LateFees {
    type State = BTreeMap<String, String>;

    fn topics(&self) -> Vec<String> {
        vec!["loans".into(), "system".into()]
    }

    fn handle(&self, open: &Self::State, event: &Event) -> Result<Vec<Emit>, HandlerError> {
        if event.action != "system.cycled" {
            return Ok(Vec::new());
        }
        let data = event.json().map_err(|e| HandlerError::permanent(e.to_string()))?;
        let today = data["date"].as_str().ok_or("system.cycled without a date")?.to_owned();
        Ok(open
            .iter()
            .filter(|(_, due)| due.as_str() < today.as_str())
            .map(|(item, due)| {
                let fee =
                    serde_json::json!({ "item": item, "due": due, "date": today, "cents": 50 });
                Emit::new("fees", item, "fee.charged", fee)
            })
            .collect())
    }

    fn apply(&self, open: &mut Self::State, event: &Event) {
        let due = || event.json().ok().and_then(|d| d["due"].as_str().map(String::from));
        match event.action.as_str() {
            "loan.opened" => {
                if let Some(due) = due() {
                    open.insert(event.key.clone(), due);
                }
            }
            "loan.returned" => {
                open.remove(&event.key);
            }
            _ => {}
        }
    }
}

fn config(dir: &Path) -> EngineConfig {
    ["loans", "system", "fees"]
        .into_iter()
        .fold(EngineConfig::new(dir), |config, topic| config.topic(TopicConfig::new(topic)))
}

async fn loan(engine: &Engine, item: &str, action: &str, due: &str) -> Result<u64, BoxError> {
    let event =
        Event::builder("loans", item, action).json(&serde_json::json!({ "due": due })).build()?;
    Ok(engine.publish(event).await?)
}

async fn settle(engine: &Engine, manager: &process::ProcessHandle) -> Result<(), BoxError> {
    for topic in ["loans", "system"] {
        let last = engine.read(topic, 1, 10_000).await?.last().map_or(0, |e| e.position);
        if !manager.wait_handled(topic, last, Duration::from_secs(20)).await {
            return Err(format!("late-fees did not reach {topic}/{last}").into());
        }
    }
    Ok(())
}

/// Five days of loans and cycles, a restart of the manager; returns the fees as (item, date).
pub async fn run(dir: &Path) -> Result<Vec<(String, String)>, BoxError> {
    let engine = Engine::builder(config(dir)).start().await?;
    let clock = ManualClock::new("2026-11-01T05:00:00Z".parse::<Timestamp>()?);
    let cycler_config = DailyCyclerConfig::default().hour(6).first_date(date(2026, 11, 1));
    let cycler = DailyCycler::new(engine.clone(), cycler_config, Arc::new(clock.clone()))?;
    let mut manager = process::start(engine.clone(), "late-fees", LateFees).await?;

    loan(&engine, "atlas", "loan.opened", "2026-11-02").await?;
    loan(&engine, "bible", "loan.opened", "2026-11-03").await?;
    for day in 1..=5 {
        clock.advance(Duration::from_secs(24 * 3600)); // 06:00 of day `day` has passed
        for cycled in cycler.run_once().await? {
            println!("cycled {cycled}");
        }
        if day == 3 {
            loan(&engine, "bible", "loan.returned", "2026-11-03").await?;
            // Topics are read in rounds: let the return land before the next date is cycled.
            settle(&engine, &manager).await?;
        }
        if day == 4 {
            // A redeploy: the manager hydrates from its history and goes on.
            settle(&engine, &manager).await?;
            manager.stop().await?;
            manager = process::start(engine.clone(), "late-fees", LateFees).await?;
        }
    }
    settle(&engine, &manager).await?;
    manager.stop().await?;
    let fees = engine
        .read("fees", 1, 1000)
        .await?
        .iter()
        .map(|fee| {
            let data = fee.json().unwrap_or_default();
            (fee.key.clone(), data["date"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    engine.shutdown().await;
    Ok(fees)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    for (item, date) in run(dir.path()).await? {
        println!("fee.charged {item} for {date}");
    }
    Ok(())
}
