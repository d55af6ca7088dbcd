//! A log shorter than what subscriptions resolved: never a position handed out twice, never an
//! event skipped. Refused when it means lost acknowledged events; with `fsync = never`, where a
//! power loss is expected to lose the unsynced tail, the lost positions are filled and said so.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Fixture, Recorder, RecordingHandler, event, processed, publish, subscription};
use inorder::{
    Engine, EngineConfig, EventStatus, FsyncPolicy, StorageErrorKind, TopicConfig,
    storage::FileStorage,
};
use inorder_log::{
    LogOptions,
    vfs::{Vfs, sim::SimVfs},
};

fn two_topics(c: EngineConfig) -> EngineConfig {
    c.topic(TopicConfig::new("t"))
        .topic(TopicConfig::new("other"))
        .subscription(subscription("s", "t"))
        .subscription(subscription("o", "other"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_below_what_was_handled_refuses_its_topic_not_the_engine() {
    if common::TestStorage::from_env() != common::TestStorage::File {
        return; // the Postgres backend has no log files to cut (its own test would need SQL)
    }
    let recorder = Arc::new(Recorder::default());
    let mut fixture = Fixture::new(two_topics);
    let handlers =
        || vec![("s", RecordingHandler::ok(&recorder)), ("o", RecordingHandler::ok(&recorder))];
    let engine = fixture.start(handlers()).await;
    for i in 0..10 {
        publish(&engine, "t", &format!("k{i}"), "a").await;
    }
    processed(&engine, "t", 10).await;
    fixture.stop().await;

    // An older copy of the log comes back: three events where ten were handled.
    let log_dir = fixture.dir.path().join("topics").join("t");
    std::fs::remove_dir_all(&log_dir).unwrap();
    let log = inorder_log::Log::open(&log_dir, LogOptions::default()).unwrap();
    let payloads: Vec<_> =
        (0..3).map(|i| inorder::codec::encode(&event("t", &format!("k{i}"), "a"))).collect();
    log.append_blocking(payloads).unwrap();
    drop(log);

    let engine = fixture.start(handlers()).await;
    let error = engine.publish(event("t", "k", "a")).await.unwrap_err();
    assert_eq!(error.storage_kind(), Some(StorageErrorKind::Corrupt), "{error}");
    let message = error.to_string();
    assert!(message.contains("ends at position 3") && message.contains("up to 10"), "{message}");
    publish(&engine, "other", "k", "a").await;
    processed(&engine, "other", 1).await;
    assert_eq!(
        engine.topics().await.unwrap().iter().find(|t| t.name == "t").unwrap().last_position,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_under_fsync_never_lost_positions_are_filled_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = two_topics(EngineConfig::new(dir.path()));
    config.fsync = FsyncPolicy::Never;
    let options = LogOptions { fsync: FsyncPolicy::Never, ..LogOptions::default() };
    let start = |vfs: Arc<dyn Vfs>, recorder: &Arc<Recorder>| {
        let storage = FileStorage::open_with_vfs(vfs, dir.path(), options).unwrap();
        Engine::builder(config.clone())
            .storage(Arc::new(storage))
            .handler("s", RecordingHandler::ok(recorder))
            .handler("o", RecordingHandler::ok(recorder))
            .start()
    };
    let recorder = Arc::new(Recorder::default());
    let vfs = Arc::new(SimVfs::new());
    let engine = start(Arc::clone(&vfs) as Arc<dyn Vfs>, &recorder).await.unwrap();
    let ids: Vec<String> = (1..=20).map(|i| format!("order-{i}")).collect();
    for id in &ids {
        let position = engine
            .publish(
                inorder::Event::builder("t", id.as_str(), "a").id(id.as_str()).build().unwrap(),
            )
            .await
            .unwrap();
        assert!(engine.wait_processed("t", position, None, common::PATIENCE).await.unwrap());
    }
    // The state journal is fsynced (the watermark 20 is durable); the topic log never was.
    let image = Arc::new(vfs.crash_power(7));
    engine.shutdown().await;

    let recorder = Arc::new(Recorder::default());
    let engine = start(Arc::clone(&image) as Arc<dyn Vfs>, &recorder).await.unwrap();
    let info = engine.topics().await.unwrap();
    let last = info.iter().find(|t| t.name == "t").unwrap().last_position;
    assert!(last >= 20, "the lost positions are filled up to the watermark: {last}");
    let survived = engine.read("t", 1, 100).await.unwrap();
    assert!(survived.len() < 20, "the power loss took some of the unsynced tail");
    assert!(survived.iter().all(|e| e.position <= 20));

    // A retry of an id whose event was lost appends it again, at a fresh position.
    let lost_id = ids.iter().find(|id| !survived.iter().any(|e| &e.id == *id)).unwrap();
    let again = engine
        .publish(inorder::Event::builder("t", "k", "a").id(lost_id.as_str()).build().unwrap())
        .await
        .unwrap();
    assert_eq!(again, last + 1, "never a position handed out twice");
    processed(&engine, "t", again).await;
    assert_eq!(engine.event_status("t", again, None).await.unwrap(), EventStatus::Processed);
    let handled: Vec<u64> = recorder.calls().iter().map(|c| c.position).collect();
    assert_eq!(handled, [again], "the new event is handled, the filled positions are not");
    engine.shutdown().await;
}
