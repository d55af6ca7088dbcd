//! Aggregates and the command bus: the `Account` rules as given/when/then specs (no engine),
//! then through the bus — validation before append, rebuilding from events, optimistic
//! concurrency with bounded retries, snapshots and their schema, the registry, dispatch
//! consistency.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use common::{
    APPLIED, Account,
    AccountCommand::*,
    AccountError::{self, InsufficientFunds, ZeroAmount},
    AccountEvent::{self, Deposited, Granted},
    config, start,
};
use inorder::{Engine, HandlerError, Reply, SubscriptionConfig, handler_fn};
use inorder_cqrs::{
    Aggregate, BusOptions, CommandBus, CommandError, Dispatch, Error, aggregate::snapshot_topic,
    testing::AggregateSpec,
};

fn bus(engine: &Engine) -> CommandBus<Account> {
    CommandBus::new(engine.clone(), BusOptions::default()).unwrap()
}

type AccountSpec = AggregateSpec<Account>;

#[test]
fn spec_a_new_account_takes_a_deposit() {
    AccountSpec::given_no_events().when(Deposit(50)).then_expect_events([Deposited { amount: 50 }]);
}

#[test]
fn spec_a_grant_within_the_funds_is_granted() {
    AccountSpec::given([Deposited { amount: 50 }])
        .when(Grant(30))
        .then_expect_events([Granted { amount: 30 }]);
    AccountSpec::given([Deposited { amount: 50 }, Granted { amount: 30 }])
        .when(Grant(20))
        .then_expect_events([Granted { amount: 20 }]);
}

#[test]
fn spec_a_grant_with_insufficient_funds_is_refused_naming_what_is_available() {
    AccountSpec::given([Deposited { amount: 50 }])
        .when(Grant(80))
        .then_expect_error(InsufficientFunds { available: 50, requested: 80 });
    AccountSpec::given([Deposited { amount: 100 }, Granted { amount: 60 }])
        .when(Grant(50))
        .then_expect_error(InsufficientFunds { available: 40, requested: 50 });
    AccountSpec::given_no_events()
        .when(Grant(1))
        .then_expect_error_message("insufficient funds: 0 available, 1 requested");
}

#[test]
fn spec_zero_amounts_are_refused() {
    AccountSpec::given_no_events().when(Deposit(0)).then_expect_error(ZeroAmount);
    AccountSpec::given([Deposited { amount: 50 }]).when(Grant(0)).then_expect_error(ZeroAmount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_beyond_the_funds_is_refused_with_a_typed_error_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let accounts = bus(&engine);
    accounts.execute("acct-1", Deposit(50)).await.unwrap();
    let refused = accounts.execute("acct-1", Grant(80)).await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Rejected(AccountError::InsufficientFunds {
                available: 50,
                requested: 80
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(engine.read("accounts", 1, 10).await.unwrap().len(), 1, "only the deposit");
    let granted = accounts.execute("acct-1", Grant(30)).await.unwrap();
    assert_eq!(granted.version, 2);
    assert_eq!(granted.events, [AccountEvent::Granted { amount: 30 }]);
    let bad_id = accounts.execute("", Deposit(1)).await;
    assert!(matches!(bad_id, Err(CommandError::Failed(Error::InvalidId { .. }))));
    assert_eq!(engine.read("accounts", 1, 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_rebuilt_from_the_stream_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let accounts = bus(&engine);
    for (id, amount) in [("a", 10), ("b", 20), ("a", 5)] {
        accounts.execute(id, Deposit(amount)).await.unwrap();
    }
    accounts.execute("a", Grant(12)).await.unwrap();
    let events = engine.read("accounts", 1, 10).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| (e.id.as_str(), e.sequence)).collect();
    assert_eq!(ids, [("a@1", Some(1)), ("b@1", Some(1)), ("a@2", Some(2)), ("a@3", Some(3))]);
    engine.shutdown().await;

    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let loaded = bus(&engine).state("a").await.unwrap();
    assert_eq!((loaded.state, loaded.version), (Account { funds: 3, granted: 12 }, 3));
    assert_eq!(bus(&engine).state("never").await.unwrap().version, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_a_race_reloads_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let (first, second) = (bus(&engine), bus(&engine)); // two registries: two writers
    first.execute("acct", Deposit(100)).await.unwrap();
    assert_eq!(second.state("acct").await.unwrap().version, 1); // both live at version 1
    first.execute("acct", Grant(60)).await.unwrap(); // second's copy is now stale
    // Decided on version 1 (funds 100) it would grant; after catching up (funds 40) it refuses.
    let refused = second.execute("acct", Grant(50)).await;
    assert!(matches!(refused, Err(CommandError::Rejected(_))), "{refused:?}");
    let retried = second.execute("acct", Grant(40)).await.unwrap();
    assert_eq!((retried.version, retried.attempts), (3, 1), "caught up by the refusal");
    let deposited = first.execute("acct", Deposit(5)).await.unwrap(); // first is stale now
    assert_eq!((deposited.version, deposited.attempts), (4, 2));
    let state = first.state("acct").await.unwrap().state;
    assert_eq!(state, Account { funds: 5, granted: 100 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_lost_race_is_a_conflict_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let eager = bus(&engine);
    let strict = CommandBus::<Account>::new(
        engine.clone(),
        BusOptions { retries: 0, ..BusOptions::default() },
    )
    .unwrap();
    eager.execute("acct", Deposit(10)).await.unwrap();
    strict.state("acct").await.unwrap();
    eager.execute("acct", Deposit(10)).await.unwrap();
    let conflict = strict.execute("acct", Deposit(1)).await;
    assert!(
        matches!(&conflict, Err(CommandError::Failed(Error::Conflict { attempts: 1, .. }))),
        "{conflict:?}"
    );
    assert_eq!(engine.read("accounts", 1, 10).await.unwrap().len(), 2);
    // After a conflict the bus reloads the aggregate: the next command decides on fresh state.
    assert_eq!(strict.execute("acct", Deposit(1)).await.unwrap().version, 3);
}

/// Deposits 100 into `acct`, then grants 5 forty times at once, spread over `buses`; returns how
/// many grants were made and how many refused for want of funds.
async fn deposit_then_grant_forty_times(buses: &[CommandBus<Account>]) -> (usize, usize) {
    buses[0].execute("acct", Deposit(100)).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let bus = buses[i % buses.len()].clone();
            tokio::spawn(async move { bus.execute("acct", Grant(5)).await })
        })
        .collect();
    let (mut granted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(CommandError::Rejected(AccountError::InsufficientFunds { .. })) => refused += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    (granted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grants_through_many_writers_never_overdraw_and_versions_stay_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let options = BusOptions { retries: 100, ..BusOptions::default() };
    let buses: Vec<_> = (0..4)
        .map(|_| CommandBus::<Account>::new(engine.clone(), options.clone()).unwrap())
        .collect();
    assert_eq!(deposit_then_grant_forty_times(&buses).await, (20, 20), "exactly the funds");
    let events = engine.read("accounts", 1, 100).await.unwrap();
    let versions: Vec<_> = events.iter().map(|e| e.sequence.unwrap()).collect();
    assert_eq!(versions, (1..=21).collect::<Vec<u64>>());
    let state = buses[3].state("acct").await.unwrap();
    assert_eq!(state.state, Account { funds: 0, granted: 100 });
}

/// Two nodes on one PostgreSQL, each with its own engine and buses, grant from one account at
/// once: PostgreSQL decides each version, so exactly the funds are granted and the account's
/// versions stay contiguous — as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_commands_on_one_aggregate_never_overdraw() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = common::postgres_nodes(&config(dir.path()), 2).await;
    let options = BusOptions { retries: 100, ..BusOptions::default() };
    let buses: Vec<_> = nodes
        .iter()
        .map(|engine| CommandBus::<Account>::new(engine.clone(), options.clone()).unwrap())
        .collect();
    assert_eq!(deposit_then_grant_forty_times(&buses).await, (20, 20), "exactly the funds");
    let events = nodes[1].read("accounts", 1, 100).await.unwrap();
    let versions: Vec<_> = events.iter().map(|e| e.sequence.unwrap()).collect();
    assert_eq!(versions, (1..=21).collect::<Vec<u64>>(), "one event per version");
    for node in nodes {
        node.shutdown().await;
    }
}

/// A new state type for the same topic: snapshots of schema 1 must be ignored.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct AccountV2 {
    balance: i64,
}

impl Aggregate for AccountV2 {
    const TOPIC: &'static str = "accounts";
    const SNAPSHOT_SCHEMA: u32 = 2;
    type Command = ();
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, (): &()) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &AccountEvent) {
        APPLIED.fetch_add(1, Ordering::SeqCst);
        match *event {
            AccountEvent::Deposited { amount } => self.balance += amount.cast_signed(),
            AccountEvent::Granted { amount } => self.balance -= amount.cast_signed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_start_from_the_latest_snapshot_of_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let options = BusOptions { snapshot_every: 10, ..BusOptions::default() };
    let accounts = CommandBus::<Account>::new(engine.clone(), options.clone()).unwrap();
    for _ in 0..25 {
        accounts.execute("acct", Deposit(2)).await.unwrap();
    }
    let snapshots = engine.read(&snapshot_topic("accounts"), 1, 10).await.unwrap();
    let slots: Vec<_> = snapshots.iter().map(|s| (s.id.as_str(), s.sequence)).collect();
    assert_eq!(slots, [("acct@snapshot-1.v1", Some(10)), ("acct@snapshot-2.v1", Some(20))]);

    // A fresh bus (nothing live) replays only what follows the snapshot at version 20.
    let fresh = CommandBus::<Account>::new(engine.clone(), options.clone()).unwrap();
    let before = APPLIED.load(Ordering::SeqCst);
    let loaded = fresh.state("acct").await.unwrap();
    let replayed = APPLIED.load(Ordering::SeqCst) - before;
    assert_eq!((loaded.state.funds, loaded.version), (50, 25));
    assert!(replayed <= 5, "replayed {replayed} events; the snapshot covers 20");

    // Schema 2 ignores the schema-1 snapshots and rebuilds from all 25 events.
    let v2 = CommandBus::<AccountV2>::new(engine.clone(), options).unwrap();
    let before = APPLIED.load(Ordering::SeqCst);
    let loaded = v2.state("acct").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (50, 25));
    assert!(APPLIED.load(Ordering::SeqCst) - before >= 25, "rebuilt from the events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_aggregates_are_evicted_and_reloaded_on_the_next_command() {
    let dir = tempfile::tempdir().unwrap();
    let engine = start(inorder::Engine::builder(config(dir.path()))).await;
    let options = BusOptions { idle_timeout: Duration::from_millis(50), ..BusOptions::default() };
    let accounts = CommandBus::<Account>::new(engine.clone(), options).unwrap();
    for id in ["a", "b", "c"] {
        accounts.execute(id, Deposit(7)).await.unwrap();
    }
    assert_eq!(accounts.live(), 3);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while accounts.live() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the sweeper never evicted them");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = accounts.execute("b", Deposit(1)).await.unwrap();
    assert_eq!(again.version, 2, "reloaded from its stream");
    assert_eq!(accounts.state("b").await.unwrap().state.funds, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_dispatch_returns_after_the_projector_has_processed_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let balances = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let (seen, open) = (Arc::clone(&balances), Arc::new(tokio::sync::Semaphore::new(0)));
    let gate = Arc::clone(&open);
    let config = config(dir.path()).subscription(SubscriptionConfig::new("balances", ["accounts"]));
    let engine = start(inorder::Engine::builder(config).handler(
        "balances",
        handler_fn(move |event, _| {
            let (seen, gate) = (Arc::clone(&seen), Arc::clone(&gate));
            async move {
                // The projector is slow: it waits for the test to open the gate.
                gate.acquire().await.map_err(|_| HandlerError::retry("closed"))?.forget();
                seen.lock().unwrap().push((event.key.clone(), event.sequence.unwrap_or(0)));
                Ok::<_, HandlerError>(Reply::Null)
            }
        }),
    ))
    .await;
    let accounts = bus(&engine);
    // Gate closed: a strong dispatch gives up after its timeout, the event stays appended.
    let mut strong = Dispatch::strong(["balances"]);
    if let inorder_cqrs::Consistency::Strong { timeout, .. } = &mut strong.consistency {
        *timeout = Duration::from_millis(200);
    }
    let timed_out = accounts.execute_with("acct", Deposit(1), strong).await;
    assert!(
        matches!(
            timed_out,
            Err(CommandError::Failed(Error::ConsistencyTimeout { position: 1, .. }))
        ),
        "{timed_out:?}"
    );
    assert!(balances.lock().unwrap().is_empty());
    open.add_permits(1000);
    let executed =
        accounts.execute_with("acct", Deposit(1), Dispatch::strong(["balances"])).await.unwrap();
    assert_eq!(executed.version, 2);
    assert!(
        balances.lock().unwrap().contains(&("acct".to_owned(), 2)),
        "the projection holds the write when the command returns"
    );
}
