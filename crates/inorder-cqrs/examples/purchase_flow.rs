//! `purchase_flow`: the Seqy topic. Three actions per user — created, purchased, paid — are
//! published out of order; the `actions` subscription hands them to the handler in the topic's
//! order, each user independently.
//!
//! Run: `cargo run -p inorder-cqrs --example purchase_flow`

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use inorder::{
    Engine, EngineConfig, Event, Ordering, Reply, SubscriptionConfig, TopicConfig, handler_fn,
};
use parking_lot::Mutex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Publishes the purchase flow of three users backwards; returns the actions handled per user.
pub async fn run(dir: &Path) -> Result<BTreeMap<String, Vec<String>>, BoxError> {
    let config = EngineConfig::new(dir)
        .topic(TopicConfig::new("user_purchase").actions([
            "user.created",
            "user.purchased",
            "user.paid",
        ]))
        .subscription(
            SubscriptionConfig::new("purchases", ["user_purchase"]).ordering(Ordering::Actions),
        );
    let handled = Arc::new(Mutex::new(BTreeMap::<String, Vec<String>>::new()));
    let seen = Arc::clone(&handled);
    let engine = Engine::builder(config)
        .handler(
            "purchases",
            handler_fn(move |event, _| {
                let seen = Arc::clone(&seen);
                async move {
                    println!("handled {:<8} {}", event.key, event.action);
                    let mut seen = seen.lock();
                    seen.entry(event.key.clone()).or_default().push(event.action.clone());
                    Ok(Reply::Null)
                }
            }),
        )
        .start()
        .await?;
    let mut last = 0;
    for action in ["user.paid", "user.purchased", "user.created"] {
        for user in ["alice", "bob", "carol"] {
            println!("published {user:<8} {action}");
            last = engine.publish(Event::builder("user_purchase", user, action).build()?).await?;
        }
    }
    if !engine.wait_processed("user_purchase", last, None, Duration::from_secs(20)).await? {
        return Err("the purchases were not handled in time".into());
    }
    engine.shutdown().await;
    let handled = handled.lock().clone();
    Ok(handled)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let handled = run(dir.path()).await?;
    for (user, actions) in handled {
        println!("{user}: {}", actions.join(" → "));
    }
    Ok(())
}
