//! `PgStorage` against a real PostgreSQL: positions under concurrent appenders and two nodes,
//! watches fed by LISTEN/NOTIFY (also after the LISTEN connection is killed), state commits
//! with the file backend's semantics, reopen, close.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use inorder::{
    Error, KeyState, Name, ParkReason, ParkedEvent, Progress, StreamId, StreamState,
    storage::{StateOp, Storage},
};
use inorder_postgres::{PgStorage, PgStorageOptions};

const PATIENCE: Duration = Duration::from_secs(10);

async fn fresh() -> String {
    tokio::task::spawn_blocking(inorder_testpg::fresh_database).await.unwrap().unwrap()
}

async fn open(url: &str) -> PgStorage {
    PgStorage::connect(url, PgStorageOptions::default()).await.unwrap()
}

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

fn stream(subscription: &str, topic: &str) -> StreamId {
    StreamId::new(name(subscription), name(topic))
}

fn payloads(texts: &[String]) -> Vec<Bytes> {
    texts.iter().map(|t| Bytes::from(t.clone())).collect()
}

/// Every record of `topic`, read in small batches.
async fn read_all(storage: &PgStorage, topic: &Name) -> Vec<(u64, String)> {
    let mut reader = storage.reader(topic, 1).await.unwrap();
    let mut all = Vec::new();
    loop {
        let records = reader.read(7).await.unwrap();
        if records.is_empty() {
            return all;
        }
        all.extend(
            records
                .into_iter()
                .map(|r| (r.position, String::from_utf8(r.payload.to_vec()).unwrap())),
        );
    }
}

/// Appends from `tasks` concurrent tasks over `storages`, each `appends` batches of 1-3 events,
/// and checks the returned ranges tile 1..=total and that each position holds what its
/// appender wrote.
async fn check_concurrent_appends(storages: &[Arc<PgStorage>], tasks: usize, appends: usize) {
    let topic = name("concurrent");
    for storage in storages {
        storage.create_topic(&topic).await.unwrap();
    }
    let mut handles = Vec::new();
    for task in 0..tasks {
        let storage = Arc::clone(&storages[task % storages.len()]);
        let topic = topic.clone();
        handles.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for append in 0..appends {
                let texts: Vec<String> =
                    (0..1 + (task + append) % 3).map(|i| format!("{task}/{append}/{i}")).collect();
                let range = storage.append(&topic, payloads(&texts)).await.unwrap();
                assert_eq!(range.clone().count(), texts.len(), "range {range:?} for {texts:?}");
                written.extend(range.zip(texts));
            }
            written
        }));
    }
    let mut expected = BTreeMap::new();
    for handle in handles {
        for (position, text) in handle.await.unwrap() {
            assert!(expected.insert(position, text).is_none(), "position {position} given twice");
        }
    }
    let total = u64::try_from(expected.len()).unwrap();
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    for storage in storages {
        assert_eq!(storage.positions(&topic).await.unwrap(), (1, total));
        assert_eq!(
            read_all(storage, &topic).await,
            expected.clone().into_iter().collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_get_every_position_exactly_once() {
    let storage = Arc::new(open(&fresh().await).await);
    check_concurrent_appends(&[storage], 16, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_append_gap_free_and_see_each_other_through_the_watch() {
    let url = fresh().await;
    let (a, b) = (Arc::new(open(&url).await), Arc::new(open(&url).await));
    let topic = name("orders");
    a.create_topic(&topic).await.unwrap();
    let mut watch = b.watch(&topic).await.unwrap();
    assert_eq!(*watch.borrow(), 0);
    let range = a.append(&topic, payloads(&["x".into(), "y".into()])).await.unwrap();
    assert_eq!(range, 1..=2);
    tokio::time::timeout(PATIENCE, watch.wait_for(|last| *last >= 2)).await.unwrap().unwrap();
    let mut concurrent = {
        a.create_topic(&name("concurrent")).await.unwrap();
        b.watch(&name("concurrent")).await.unwrap()
    };
    check_concurrent_appends(&[Arc::clone(&a), Arc::clone(&b)], 8, 20).await;
    let (_, last) = a.positions(&name("concurrent")).await.unwrap();
    let seen = tokio::time::timeout(PATIENCE, concurrent.wait_for(|seen| *seen == last)).await;
    assert!(seen.unwrap().is_ok(), "b's watch reached {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_catches_up_after_its_listen_connection_is_killed() {
    let url = fresh().await;
    let (a, b) = (open(&url).await, open(&url).await);
    let topic = name("orders");
    a.create_topic(&topic).await.unwrap();
    let mut watch = b.watch(&topic).await.unwrap();
    let killer = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let (client, connection) = killer;
    tokio::spawn(connection);
    let killed = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 2, "both nodes' LISTEN connections");
    // Appended while b is not listening: b re-reads positions once it listens again.
    a.append(&topic, payloads(&["lost?".into()])).await.unwrap();
    tokio::time::timeout(PATIENCE, watch.wait_for(|last| *last >= 1)).await.unwrap().unwrap();
    a.append(&topic, payloads(&["after".into()])).await.unwrap();
    tokio::time::timeout(PATIENCE, watch.wait_for(|last| *last >= 2)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_once_and_unknown_topics_are_refused() {
    let storage = open(&fresh().await).await;
    let (known, unknown) = (name("b.topic"), name("nope"));
    storage.create_topic(&known).await.unwrap();
    storage.create_topic(&known).await.unwrap();
    storage.create_topic(&name("a-topic")).await.unwrap();
    assert_eq!(storage.topics().await.unwrap(), [name("a-topic"), known.clone()]);
    assert_eq!(storage.positions(&known).await.unwrap(), (1, 0));
    assert_eq!(storage.backend(), "postgres");
    let unknown_topic = |e: Error| matches!(e, Error::UnknownTopic { topic } if topic == "nope");
    assert!(unknown_topic(storage.append(&unknown, payloads(&["x".into()])).await.unwrap_err()));
    assert!(unknown_topic(storage.positions(&unknown).await.unwrap_err()));
    assert!(unknown_topic(storage.watch(&unknown).await.unwrap_err()));
    assert!(unknown_topic(storage.reader(&unknown, 1).await.err().unwrap()));
    assert_eq!(storage.positions(&known).await.unwrap(), (1, 0), "nothing appended");
    let mut reader = storage.reader(&known, 1).await.unwrap();
    assert!(reader.read(10).await.unwrap().is_empty());
    storage.append(&known, payloads(&["1".into(), "2".into(), "3".into()])).await.unwrap();
    let records = reader.read(2).await.unwrap();
    assert_eq!(records.iter().map(|r| r.position).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(reader.next_position(), 3);
    let mut from_two = storage.reader(&known, 2).await.unwrap();
    assert_eq!(from_two.read(10).await.unwrap()[0].payload, Bytes::from("2"));
}

fn key(stream: &StreamId, key: &str, last_position: u64, next: u64, merge: bool) -> StateOp {
    let state = KeyState {
        last_position,
        last_time_micros: i64::try_from(last_position).unwrap() * 10,
        progress: Progress::Sequence { next },
        blocked_by: None,
    };
    StateOp::Key { stream: stream.clone(), key: key.into(), state, merge }
}

fn parked(subscription: &str, topic: &str, position: u64) -> ParkedEvent {
    ParkedEvent {
        subscription: name(subscription),
        topic: name(topic),
        position,
        event_id: format!("id-{position}"),
        key: "k\0with nul".into(),
        action: "a".into(),
        reason: ParkReason::Failed,
        error: Some("boom".into()),
        attempts: 3,
        parked_at_micros: 42,
        discarded_at_micros: None,
    }
}

async fn last_position(
    storage: &PgStorage,
    stream: &StreamId,
    key: &str,
) -> Option<(u64, Progress)> {
    storage.key_state(stream, key).await.unwrap().map(|s| (s.last_position, s.progress))
}

/// The parked events of subscription `sub` as (topic, position).
async fn list(storage: &PgStorage, after: Option<(Name, u64)>, max: usize) -> Vec<(String, u64)> {
    let parked = storage.parked(&name("sub"), after, max).await.unwrap();
    parked.into_iter().map(|p| (p.topic.to_string(), p.position)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_replace_merge_park_and_index_like_the_file_backend() {
    let storage = open(&fresh().await).await;
    let s = stream("sub", "t");
    // Replace, then merge into a stored row, into nothing, and twice in one batch.
    storage.commit(vec![key(&s, "a", 5, 1, false)], true).await.unwrap();
    storage
        .commit(
            vec![
                key(&s, "a", 3, 2, true),
                key(&s, "new", 4, 7, true),
                key(&s, "twice", 9, 1, true),
                key(&s, "twice", 2, 3, true),
                key(&s, "nul\0key", 1, 1, false),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(last_position(&storage, &s, "a").await, Some((5, Progress::Sequence { next: 2 })));
    assert_eq!(last_position(&storage, &s, "new").await, Some((4, Progress::Sequence { next: 7 })));
    assert_eq!(
        last_position(&storage, &s, "twice").await,
        Some((9, Progress::Sequence { next: 3 }))
    );
    assert_eq!(last_position(&storage, &s, "nul\0key").await.unwrap().0, 1);
    assert_eq!(storage.key_state(&s, "a").await.unwrap().unwrap().last_time_micros, 50);
    assert_eq!(last_position(&storage, &s, "missing").await, None);
    // A replace after a merge in the same batch wins; a merge after a replace merges into it.
    storage
        .commit(
            vec![key(&s, "a", 9, 4, true), key(&s, "a", 1, 5, false), key(&s, "a", 2, 6, true)],
            true,
        )
        .await
        .unwrap();
    assert_eq!(last_position(&storage, &s, "a").await, Some((2, Progress::Sequence { next: 6 })));

    let state = StreamState { watermark: 7, done_above: vec![(9..=11, 3)], max_time_micros: -5 };
    assert_eq!(storage.stream_state(&s).await.unwrap(), None);
    storage
        .commit(vec![StateOp::Stream { stream: s.clone(), state: state.clone() }], true)
        .await
        .unwrap();
    assert_eq!(storage.stream_state(&s).await.unwrap(), Some(state));

    // Park and unpark apply in order; listing is by (topic, position), after `after`.
    let ops = vec![
        StateOp::Park(parked("sub", "t", 4)),
        StateOp::Park(parked("sub", "t", 2)),
        StateOp::Park(parked("sub", "a", 9)),
        StateOp::Park(parked("sub", "t", 3)),
        StateOp::Unpark { stream: s.clone(), position: 3 },
        StateOp::Unpark { stream: s.clone(), position: 4 },
        StateOp::Park(parked("sub", "t", 4)),
        StateOp::Park(parked("other", "t", 1)),
    ];
    storage.commit(ops, true).await.unwrap();
    let all = [("a".to_owned(), 9), ("t".to_owned(), 2), ("t".to_owned(), 4)];
    assert_eq!(list(&storage, None, 10).await, all);
    assert_eq!(list(&storage, None, 2).await, all[..2]);
    assert_eq!(list(&storage, Some((name("a"), 9)), 10).await, all[1..]);
    assert_eq!(list(&storage, Some((name("t"), 2)), 10).await, all[2..]);
    assert_eq!(storage.parked_event(&s, 2).await.unwrap(), Some(parked("sub", "t", 2)));
    assert_eq!(storage.parked_event(&s, 3).await.unwrap(), None);

    // Event ids and the indexed-to mark.
    let t = name("t");
    let id = |id: &str, position| StateOp::EventId { topic: t.clone(), id: id.into(), position };
    let mark = |position| StateOp::IdsIndexedTo { topic: t.clone(), position };
    assert_eq!(storage.ids_indexed_to(&t).await.unwrap(), 0);
    storage.commit(vec![id("x", 1), id("y\0", 2), mark(2)], false).await.unwrap();
    let ids = vec!["y\0".to_owned(), "nope".to_owned(), "x".to_owned()];
    assert_eq!(storage.event_positions(&t, ids).await.unwrap(), [Some(2), None, Some(1)]);
    assert_eq!(storage.ids_indexed_to(&t).await.unwrap(), 2);
    assert_eq!(storage.event_positions(&name("other"), vec!["x".into()]).await.unwrap(), [None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_merges_of_one_key_keep_the_maximum() {
    let url = fresh().await;
    let (a, b) = (Arc::new(open(&url).await), Arc::new(open(&url).await));
    let s = stream("sub", "t");
    let mut handles = Vec::new();
    for task in 0..8u64 {
        let storage = Arc::clone(if task % 2 == 0 { &a } else { &b });
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let position = task * 100 + i;
                let ops = vec![
                    key(&s, "hot", position, 1, true),
                    key(&s, &format!("k{i}"), position, 1, true),
                ];
                storage.commit(ops, true).await.unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(last_position(&a, &s, "hot").await.unwrap().0, 719);
    assert_eq!(last_position(&b, &s, "k19").await.unwrap().0, 719);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_storage_keeps_events_and_state() {
    let url = fresh().await;
    let storage = open(&url).await;
    let (t, s) = (name("t"), stream("sub", "t"));
    storage.create_topic(&t).await.unwrap();
    storage.append(&t, payloads(&["a".into(), "b".into()])).await.unwrap();
    let state = StreamState { watermark: 2, ..StreamState::default() };
    let ops = vec![
        StateOp::Stream { stream: s.clone(), state: state.clone() },
        key(&s, "k", 2, 3, false),
        StateOp::Park(parked("sub", "t", 1)),
        StateOp::EventId { topic: t.clone(), id: "e".into(), position: 2 },
        StateOp::IdsIndexedTo { topic: t.clone(), position: 2 },
    ];
    storage.commit(ops, true).await.unwrap();
    storage.close().await;
    drop(storage);

    let storage = open(&url).await;
    assert_eq!(storage.topics().await.unwrap(), [name("t")]);
    assert_eq!(storage.positions(&t).await.unwrap(), (1, 2));
    assert_eq!(read_all(&storage, &t).await, [(1, "a".into()), (2, "b".into())]);
    assert_eq!(*storage.watch(&t).await.unwrap().borrow(), 2);
    assert_eq!(storage.append(&t, payloads(&["c".into()])).await.unwrap(), 3..=3);
    assert_eq!(storage.stream_state(&s).await.unwrap(), Some(state));
    assert_eq!(last_position(&storage, &s, "k").await, Some((2, Progress::Sequence { next: 3 })));
    assert_eq!(storage.parked_event(&s, 1).await.unwrap(), Some(parked("sub", "t", 1)));
    assert_eq!(storage.event_positions(&t, vec!["e".into()]).await.unwrap(), [Some(2)]);
    assert_eq!(storage.ids_indexed_to(&t).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_storage_refuses_everything_with_stopped() {
    let storage = open(&fresh().await).await;
    let (t, s) = (name("t"), stream("sub", "t"));
    storage.create_topic(&t).await.unwrap();
    let mut watch = storage.watch(&t).await.unwrap();
    let mut reader = storage.reader(&t, 1).await.unwrap();
    storage.close().await;
    storage.close().await;
    let stopped = |e: Error| matches!(e, Error::Stopped);
    assert!(stopped(storage.append(&t, payloads(&["x".into()])).await.unwrap_err()));
    assert!(stopped(storage.commit(vec![key(&s, "k", 1, 1, false)], true).await.unwrap_err()));
    assert!(stopped(storage.positions(&t).await.unwrap_err()));
    assert!(stopped(storage.topics().await.unwrap_err()));
    assert!(stopped(storage.stream_state(&s).await.unwrap_err()));
    assert!(stopped(reader.read(10).await.unwrap_err()));
    assert!(watch.changed().await.is_err(), "the watch is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_and_urls_are_refused_without_the_password() {
    let zero = PgStorageOptions { pool_size: 0 };
    let error = PgStorage::connect("postgres://u:secret@127.0.0.1:1/db", zero).await.unwrap_err();
    assert!(error.to_string().contains("pool size"), "{error}");
    let error =
        PgStorage::connect("postgres://u:secret@127.0.0.1:1/db", PgStorageOptions::default())
            .await
            .unwrap_err();
    assert!(!error.to_string().contains("secret"), "{error}");
}
