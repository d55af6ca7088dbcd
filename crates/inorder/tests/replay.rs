//! Replaying a subscription from the first event (`EngineBuilder::replay`): progress is reset
//! before the handler's `on_replay`, both before any stream starts; other subscriptions keep
//! their progress.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{Fixture, publish, settle, subscription};
use inorder::{Event, Handler, HandlerContext, HandlerError, Reply, TopicConfig};

/// A read model: the positions it saw; `on_replay` clears it (and records that it was called).
#[derive(Default)]
struct Model {
    seen: Mutex<Vec<u64>>,
    resets: Mutex<u32>,
}

struct ModelHandler(Arc<Model>);

#[async_trait::async_trait]
impl Handler for ModelHandler {
    async fn handle(&self, event: &Event, _: &HandlerContext) -> Result<Reply, HandlerError> {
        self.0.seen.lock().unwrap().push(event.position);
        Ok(Reply::Null)
    }

    async fn on_replay(&self) -> Result<(), HandlerError> {
        self.0.seen.lock().unwrap().clear();
        *self.0.resets.lock().unwrap() += 1;
        Ok(())
    }
}

fn fixture() -> Fixture {
    Fixture::new(|c| {
        c.topic(TopicConfig::new("posts"))
            .topic(TopicConfig::new("comments"))
            .subscription(inorder::SubscriptionConfig::new("projector", ["posts", "comments"]))
            .subscription(subscription("other", "posts"))
    })
}

fn sorted(model: &Model) -> Vec<u64> {
    let mut seen = model.seen.lock().unwrap().clone();
    seen.sort_unstable();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_subscription_handles_every_event_again_and_the_others_do_not() {
    let fixture = fixture();
    let (projector, other) = (Arc::new(Model::default()), Arc::new(Model::default()));
    let start = |replay: bool| {
        let (projector, other) = (Arc::clone(&projector), Arc::clone(&other));
        let fixture = &fixture;
        async move {
            let mut builder = fixture
                .builder()
                .await
                .handler("projector", ModelHandler(projector))
                .handler("other", ModelHandler(other));
            if replay {
                builder = builder.replay("projector");
            }
            builder.start().await.unwrap()
        }
    };
    let engine = start(false).await;
    for i in 0..3 {
        publish(&engine, "posts", &format!("p-{i}"), "post.created").await;
        publish(&engine, "comments", &format!("p-{i}"), "comment.added").await;
    }
    settle(&engine, "posts", 3).await;
    settle(&engine, "comments", 3).await;
    engine.shutdown().await;
    assert_eq!(sorted(&projector), [1, 1, 2, 2, 3, 3]);

    // A plain restart resumes from the checkpoints: nothing is handled again.
    let engine = start(false).await;
    publish(&engine, "posts", "p-9", "post.created").await;
    settle(&engine, "posts", 4).await;
    engine.shutdown().await;
    assert_eq!(sorted(&projector), [1, 1, 2, 2, 3, 3, 4]);
    assert_eq!(*projector.resets.lock().unwrap(), 0);

    // A replay clears the model and hands every event of both topics again.
    let engine = start(true).await;
    settle(&engine, "posts", 4).await;
    settle(&engine, "comments", 3).await;
    assert_eq!(*projector.resets.lock().unwrap(), 1);
    assert_eq!(sorted(&projector), [1, 1, 2, 2, 3, 3, 4], "rebuilt from the first event");
    assert_eq!(sorted(&other), [1, 2, 3, 4], "the other subscription kept its progress");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_an_unknown_subscription_is_refused() {
    let fixture = fixture();
    let refused = fixture
        .builder()
        .await
        .handler("projector", ModelHandler(Arc::default()))
        .handler("other", ModelHandler(Arc::default()))
        .replay("nope")
        .start()
        .await;
    assert!(matches!(refused, Err(inorder::Error::InvalidConfig { .. })));
}
