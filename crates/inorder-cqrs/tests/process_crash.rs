//! `kill -9` of a process running a process manager, several times: no event is ever emitted
//! twice, and every source event gets its emission in the end.
//!
//! The child publishes orders from a loop and runs the `invoicer` manager, which emits one
//! `invoice.issued` per order and prints `HANDLE position` from its handler. The checkpoint is
//! committed after each batch, so a kill lands between a handled (and emitted) event and its
//! checkpoint most of the time; the parent checks that this happened (an event handled in two
//! runs) so the test proves something.

#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use inorder::{Engine, EngineConfig, Event, HandlerError, TopicConfig};
use inorder_cqrs::{Emit, ProcessManager, process};

const CHILD_ENV: &str = "INORDER_CQRS_CRASH_CHILD";
const ROUNDS: u32 = 4;
const TEST: &str = "kill_9_between_emission_and_checkpoint_never_emits_twice";

struct Invoicer;

impl ProcessManager for Invoicer {
    type State = ();

    fn topics(&self) -> Vec<String> {
        vec!["orders".into()]
    }

    fn handle(&self, (): &(), event: &Event) -> Result<Vec<Emit>, HandlerError> {
        println!("HANDLE {}", event.position);
        // A little work per event widens the window between emission and checkpoint.
        std::thread::sleep(Duration::from_micros(300));
        let data = serde_json::json!({ "order": event.id });
        Ok(vec![Emit::new("invoices", &event.key, "invoice.issued", data)])
    }

    fn apply(&self, (): &mut (), _: &Event) {}
}

fn config(dir: &str) -> EngineConfig {
    EngineConfig::new(dir).topic(TopicConfig::new("orders")).topic(TopicConfig::new("invoices"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn kill_9_between_emission_and_checkpoint_never_emits_twice() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().to_str().unwrap().to_owned();
    let mut handled_in: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for round in 0..ROUNDS {
        for line in run_child_and_kill(&dir_str) {
            if let Some(position) = line.strip_prefix("HANDLE ") {
                handled_in.entry(position.parse().unwrap()).or_default().insert(round);
            }
        }
    }
    let rehandled = handled_in.values().filter(|rounds| rounds.len() > 1).count();
    assert!(
        rehandled > 0,
        "no kill landed between emission and checkpoint; the test proved nothing"
    );

    runtime().block_on(async {
        let engine = Engine::builder(config(&dir_str)).start().await.unwrap();
        let last = engine.storage().positions(&inorder::Name::new("t", "orders").unwrap()).await;
        let last = last.unwrap().1;
        assert!(last > 50, "the children published only {last} orders");
        let manager = process::start(engine.clone(), "invoicer", Invoicer).await.unwrap();
        assert!(manager.wait_handled("orders", last, Duration::from_secs(60)).await);
        manager.stop().await.unwrap();

        let mut causes = BTreeMap::<String, usize>::new();
        let mut from = 1;
        loop {
            let invoices = engine.read("invoices", from, 1000).await.unwrap();
            let Some(end) = invoices.last().map(|e| e.position) else { break };
            for invoice in invoices {
                *causes.entry(invoice.causation_id.unwrap()).or_default() += 1;
            }
            from = end + 1;
        }
        let twice: Vec<_> = causes.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "emitted twice: {twice:?}");
        let mut orders = BTreeSet::new();
        let mut from = 1;
        while from <= last {
            let batch = engine.read("orders", from, 1000).await.unwrap();
            from += batch.len() as u64;
            orders.extend(batch.into_iter().map(|e| e.id));
        }
        let invoiced: BTreeSet<String> = causes.into_keys().collect();
        assert_eq!(invoiced, orders, "every order invoiced exactly once ({rehandled} re-handled)");
        engine.shutdown().await;
    });
}

/// Publishes orders forever and runs the invoicer, until killed.
fn child(dir: &str) -> ! {
    runtime().block_on(async {
        let engine = Engine::builder(config(dir)).start().await.unwrap();
        let _manager = process::start(engine.clone(), "invoicer", Invoicer).await.unwrap();
        for n in 0u64.. {
            let batch = (0..20)
                .map(|i| {
                    Event::builder("orders", format!("c-{}", (n + i) % 7), "order.placed")
                        .build()
                        .unwrap()
                })
                .collect();
            engine.publish_batch(batch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    unreachable!("the child runs until killed")
}

fn run_child_and_kill(dir: &str) -> Vec<String> {
    let after = Duration::from_millis(500 + fastrand::u64(0..400));
    inorder_testpg::child::run_and_kill(TEST, CHILD_ENV, dir, after).unwrap()
}
