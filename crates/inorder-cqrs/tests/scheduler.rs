//! The daily cycler: `system.cycled` once per date at the configured hour and time zone,
//! catch-up after downtime in date order, never a date twice (restarts, races), a loop that never
//! overlaps itself — all on a manual clock that runs days in milliseconds.

#![allow(clippy::unwrap_used)]

mod common;

use std::{future::Future, sync::Arc, time::Duration};

use inorder::{Engine, EngineConfig, Event, FsyncPolicy};
use inorder_cqrs::{
    Clock, DailyCycler, Error, ManualClock,
    limits::CYCLER_CATCH_UP_DATES_MAX,
    scheduler::{CYCLED_ACTION, CYCLER_KEY, CYCLER_SOURCE, DailyCyclerConfig, cycled_id},
};
use jiff::{Timestamp, civil::Date, tz::TimeZone};

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// An engine on a temporary directory that can be stopped and started again on the same data.
struct Fixture {
    dir: tempfile::TempDir,
    engine: Option<Engine>,
}

impl Fixture {
    async fn start() -> (Self, Engine) {
        let mut fixture = Self { dir: tempfile::tempdir().unwrap(), engine: None };
        let engine = fixture.restart().await;
        (fixture, engine)
    }

    /// Stops the running engine (if any) and starts a new one on the same data directory.
    async fn restart(&mut self) -> Engine {
        self.stop().await;
        let mut config = EngineConfig::new(self.dir.path());
        config.auto_create_topics = true;
        config.fsync = FsyncPolicy::Never;
        let engine = Engine::builder(config).start().await.unwrap();
        self.engine = Some(engine.clone());
        engine
    }

    async fn stop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await;
        }
    }
}

fn date(text: &str) -> Date {
    text.parse().unwrap()
}

fn instant(rfc3339: &str) -> Timestamp {
    rfc3339.parse().unwrap()
}

fn paris() -> TimeZone {
    TimeZone::get("Europe/Paris").unwrap()
}

/// Every date from `first` to `last`, inclusive.
fn dates(first: &str, last: &str) -> Vec<Date> {
    let (mut next, last) = (date(first), date(last));
    let mut all = Vec::new();
    while next <= last {
        all.push(next);
        next = next.tomorrow().unwrap();
    }
    all
}

fn cycler(engine: &Engine, config: DailyCyclerConfig, clock: &ManualClock) -> DailyCycler {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    DailyCycler::new(engine.clone(), config, clock).unwrap()
}

/// The cycler's daily events in log order, checked for their id and source.
async fn cycled_events(engine: &Engine) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let from = events.last().map_or(1, |event: &Event| event.position + 1);
        let batch = match engine.read("system", from, 256).await {
            Ok(batch) => batch,
            Err(inorder::Error::UnknownTopic { .. }) => return Vec::new(),
            Err(error) => panic!("reading the topic: {error}"),
        };
        if batch.is_empty() {
            break;
        }
        events.extend(batch);
    }
    events.retain(|event| event.action == CYCLED_ACTION && event.key == CYCLER_KEY);
    for event in &events {
        let data = event.json().unwrap();
        let date = date(data["date"].as_str().unwrap());
        assert_eq!(event.id, cycled_id(date), "the date is the id");
        assert_eq!(event.source, CYCLER_SOURCE);
    }
    events
}

/// The dates of the daily events of the topic, in log order.
async fn cycled(engine: &Engine) -> Vec<Date> {
    let events = cycled_events(engine).await;
    events.iter().map(|event| date(event.json().unwrap()["date"].as_str().unwrap())).collect()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not done after {PATIENCE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_a_date_once_at_the_configured_hour_in_the_configured_time_zone() {
    let (_fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-01-15T05:59:00+01:00"));
    let config =
        DailyCyclerConfig::default().hour(6).time_zone(paris()).first_date(date("2024-01-15"));
    let cycler = cycler(&engine, config, &clock);

    assert_eq!(cycler.run_once().await.unwrap(), [], "05:59 in Paris: not due yet");
    clock.advance(Duration::from_secs(60));
    assert_eq!(cycler.run_once().await.unwrap(), [date("2024-01-15")], "06:00 in Paris");
    assert_eq!(cycler.run_once().await.unwrap(), [], "checked again at once");
    clock.set(instant("2024-01-15T23:59:59+01:00"));
    assert_eq!(cycler.run_once().await.unwrap(), [], "checked again late that day");

    let events = cycled_events(&engine).await;
    assert_eq!(events.len(), 1);
    let due = instant("2024-01-15T05:00:00Z");
    assert_eq!(events[0].time_micros, due.as_microsecond(), "the event time is the due instant");
    assert_eq!(
        events[0].json().unwrap(),
        serde_json::json!({"date": "2024-01-15", "scheduled_at": "2024-01-15T06:00:00+01:00"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_that_daylight_saving_time_skips_or_repeats_is_resolved_like_jiff_compatible() {
    let (_fixture, engine) = Fixture::start().await;
    // 2024-03-31: Paris skips 02:00-03:00, so 02:00 means 03:00+02:00 (01:00 UTC).
    let clock = ManualClock::new(instant("2024-03-31T00:59:59Z"));
    let config =
        DailyCyclerConfig::default().hour(2).time_zone(paris()).first_date(date("2024-03-31"));
    let cycler = cycler(&engine, config, &clock);
    assert_eq!(cycler.run_once().await.unwrap(), []);
    clock.set(instant("2024-03-31T01:00:00Z"));
    assert_eq!(cycler.run_once().await.unwrap(), [date("2024-03-31")]);

    // 2024-10-27: Paris repeats 02:00-03:00; the first 02:00 (+02:00, 00:00 UTC) counts.
    clock.set(instant("2024-10-26T23:59:59Z"));
    assert_eq!(cycler.run_once().await.unwrap(), dates("2024-04-01", "2024-10-26"));
    clock.set(instant("2024-10-27T00:00:00Z"));
    assert_eq!(cycler.run_once().await.unwrap(), [date("2024-10-27")]);

    let events = cycled_events(&engine).await;
    let scheduled =
        |event: &Event| event.json().unwrap()["scheduled_at"].as_str().unwrap().to_owned();
    assert_eq!(scheduled(&events[0]), "2024-03-31T03:00:00+02:00");
    assert_eq!(scheduled(events.last().unwrap()), "2024-10-27T02:00:00+02:00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_every_missed_date_in_order_after_a_five_day_outage() {
    let (mut fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-01-01T06:00:00+01:00"));
    // No first date: after the outage only the log says where to resume.
    let config = DailyCyclerConfig::default().hour(6).time_zone(paris());
    let before = cycler(&engine, config.clone(), &clock);
    assert_eq!(before.run_once().await.unwrap(), [date("2024-01-01")]);

    drop(before);
    fixture.stop().await;
    clock.advance(5 * DAY);
    let engine = fixture.restart().await;
    let after = cycler(&engine, config, &clock);

    assert_eq!(after.run_once().await.unwrap(), dates("2024-01-02", "2024-01-06"));
    assert_eq!(cycled(&engine).await, dates("2024-01-01", "2024-01-06"), "each once, in order");
    let times: Vec<i64> = cycled_events(&engine).await.iter().map(|e| e.time_micros).collect();
    assert!(times.is_sorted(), "event times ascend with the dates: {times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_cycles_a_date_twice() {
    let (mut fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-02-10T07:00:00Z"));
    let config = DailyCyclerConfig::default().hour(6).first_date(date("2024-02-08"));
    assert_eq!(
        cycler(&engine, config.clone(), &clock).run_once().await.unwrap(),
        dates("2024-02-08", "2024-02-10")
    );
    // Other events of the topic, and one whose id names no date, do not confuse the scan.
    for (id, action) in [("other-1", "system.other"), ("system.cycled/soon", CYCLED_ACTION)] {
        let event = Event::builder("system", "someone", action).id(id).build().unwrap();
        engine.publish(event).await.unwrap();
    }

    let engine = fixture.restart().await;
    assert_eq!(cycler(&engine, config.clone(), &clock).run_once().await.unwrap(), []);
    let redeployed = config.clone().first_date(date("2024-01-01")); // an earlier first date changes nothing
    assert_eq!(cycler(&engine, redeployed, &clock).run_once().await.unwrap(), []);
    clock.set(instant("2024-02-10T23:59:59Z"));
    let engine = fixture.restart().await;
    assert_eq!(cycler(&engine, config, &clock).run_once().await.unwrap(), []);

    assert_eq!(cycled(&engine).await, dates("2024-02-08", "2024-02-10"));
}

/// Runs the racers 16 times concurrently, alternating; every date any run published, sorted.
async fn race(racers: &[Arc<DailyCycler>; 2]) -> Vec<Date> {
    let runs: Vec<_> = (0..16)
        .map(|i| {
            let racer = Arc::clone(&racers[i % 2]);
            tokio::spawn(async move { racer.run_once().await.unwrap() })
        })
        .collect();
    let mut published = Vec::new();
    for run in runs {
        published.extend(run.await.unwrap());
    }
    published.sort();
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclers_racing_on_one_engine_cycle_each_date_once() {
    let (_fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-05-05T06:30:00Z"));
    let config = DailyCyclerConfig::default().hour(6).first_date(date("2024-05-01"));
    let racers = [
        Arc::new(cycler(&engine, config.clone(), &clock)),
        Arc::new(cycler(&engine, config, &clock)),
    ];

    assert_eq!(race(&racers).await, dates("2024-05-01", "2024-05-05"), "no date published twice");
    clock.advance(DAY);
    assert_eq!(race(&racers).await, [date("2024-05-06")]);
    assert_eq!(cycled(&engine).await, dates("2024-05-01", "2024-05-06"));
}

/// Two nodes on one PostgreSQL, each with its own cycler: every date is cycled once across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclers_on_two_nodes_of_one_database_cycle_each_date_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.auto_create_topics = true;
    let nodes = common::postgres_nodes(&config, 2).await;
    let clock = ManualClock::new(instant("2024-05-05T06:30:00Z"));
    let cycler_config = DailyCyclerConfig::default().hour(6).first_date(date("2024-05-01"));
    let racers = [
        Arc::new(cycler(&nodes[0], cycler_config.clone(), &clock)),
        Arc::new(cycler(&nodes[1], cycler_config, &clock)),
    ];
    assert_eq!(race(&racers).await, dates("2024-05-01", "2024-05-05"), "no date published twice");
    clock.advance(DAY);
    assert_eq!(race(&racers).await, [date("2024-05-06")]);
    assert_eq!(cycled(&nodes[1]).await, dates("2024-05-01", "2024-05-06"));
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawned_loop_cycles_once_a_day_without_overlapping_and_stops_cleanly() {
    let (_fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-06-01T00:00:00Z"));
    let config =
        DailyCyclerConfig::default().hour(6).check_every(HOUR).first_date(date("2024-06-01"));
    let handle = cycler(&engine, config, &clock).spawn();
    within("the first run", clock.until_sleepers(1)).await;

    for hours in 1..=72 {
        clock.advance(HOUR);
        within("a run after an hour", clock.until_sleepers(1)).await;
        assert_eq!(clock.sleepers(), 1, "one loop, sleeping between runs");
        let now = clock.now();
        let due: Vec<Date> = dates("2024-06-01", "2024-06-03")
            .into_iter()
            .filter(|d| {
                d.at(6, 0, 0, 0).to_zoned_datetime(TimeZone::UTC).unwrap().timestamp() <= now
            })
            .collect();
        assert_eq!(cycled(&engine).await, due, "after {hours} hours");
    }

    within("stopping", handle.stop()).await;
    assert_eq!(clock.sleepers(), 0, "the loop is gone");
    clock.advance(2 * DAY);
    tokio::task::yield_now().await;
    assert_eq!(cycled(&engine).await, dates("2024-06-01", "2024-06-03"), "nothing after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_without_a_first_date_cycles_only_the_latest_due_date() {
    let (_fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-01-15T03:00:00Z"));
    let cycler = cycler(&engine, DailyCyclerConfig::default().hour(6), &clock);
    assert_eq!(cycler.run_once().await.unwrap(), [date("2024-01-14")], "not history since 1970");
    clock.set(instant("2024-01-15T06:00:00Z"));
    assert_eq!(cycler.run_once().await.unwrap(), [date("2024-01-15")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_one_run_allows_continues_in_order() {
    let (_fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-02-05T00:00:00Z"));
    let config = DailyCyclerConfig::default().first_date(date("2022-01-01"));
    let all = dates("2022-01-01", "2024-02-05");
    assert!(all.len() > 2 * CYCLER_CATCH_UP_DATES_MAX, "the loop needs more than one run");

    let first_run = cycler(&engine, config.clone(), &clock).run_once().await.unwrap();
    assert_eq!(first_run, all[..CYCLER_CATCH_UP_DATES_MAX], "the oldest dates first");
    // The loop does not wait a check period while behind: it is done before it first sleeps.
    let handle = cycler(&engine, config, &clock).spawn();
    within("the catch-up", clock.until_sleepers(1)).await;
    handle.stop().await;
    assert_eq!(cycled(&engine).await, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused() {
    let (_fixture, engine) = Fixture::start().await;
    let clock = ManualClock::new(instant("2024-01-01T00:00:00Z"));
    let cases = [
        ("hour 24", DailyCyclerConfig::default().hour(24)),
        ("hour -1", DailyCyclerConfig::default().hour(-1)),
        ("zero check_every", DailyCyclerConfig::default().check_every(Duration::ZERO)),
        ("empty topic", DailyCyclerConfig::default().topic("")),
        ("topic with a space", DailyCyclerConfig::default().topic("bad topic")),
        ("topic with a slash", DailyCyclerConfig::default().topic("a/b")),
    ];
    for (case, config) in cases {
        assert!(matches!(config.validate(), Err(Error::Config(_))), "{case}: validate");
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let refused = DailyCycler::new(engine.clone(), config, clock);
        assert!(matches!(refused, Err(Error::Config(_))), "{case}: new");
    }
    assert!(DailyCyclerConfig::default().hour(23).topic("system.daily").validate().is_ok());
}
