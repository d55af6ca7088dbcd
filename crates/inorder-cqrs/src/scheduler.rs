//! The daily scheduler: [`DailyCycler`] publishes `system.cycled` once per calendar date, at a
//! configured hour in a configured time zone, so that day-boundary work (closing a business day,
//! expiring reservations, monthly statements) is an ordinary event that handlers process in order
//! with everything else.
//!
//! Why it is built this way:
//!
//! - **The date is the idempotency key.** The event of date `D` has the id `system.cycled/D` and
//!   is appended with [`Engine::publish_new`], which appends only if no event of the topic holds
//!   that id. A restart, a redeploy or a second cycler on the same engine therefore never cycles a
//!   date twice: the loser of a race gets [`inorder::Error::IdTaken`], which means "already
//!   cycled" and is not an error. (`publish_new` is decided by PostgreSQL when several nodes
//!   share it, by the engine's claims on one node; across restarts the durable id index keeps
//!   it.)
//! - **Catch-up, in order.** A run finds the last cycled date (once per process, by scanning the
//!   topic; then from memory) and publishes every due date after it in ascending order, so an
//!   outage of five days produces five events on restart, oldest first. At most
//!   [`CYCLER_CATCH_UP_DATES_MAX`] dates are published per run; the spawned loop continues at once with
//!   the rest. A cycler that has never cycled starts at [`DailyCyclerConfig::first_date`], or
//!   else at the latest due date only — it does not replay history since the epoch.
//! - **No overlap.** Runs of one cycler are serialised, and the spawned loop schedules the next
//!   check [`DailyCyclerConfig::check_every`] after the current run *completed*, never on a fixed
//!   grid that a slow run could overrun.
//! - **Injectable time.** Every reading of "now" and every wait goes through a [`Clock`]:
//!   [`SystemClock`] in production, [`ManualClock`] in tests, which run days in milliseconds.
//! - **Time zones done by jiff.** Date `D` is due at `D` `hour:00` in the time zone, resolved with
//!   jiff's compatible disambiguation: an hour skipped by a DST change means the instant right
//!   after the gap, a repeated hour its first occurrence.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use inorder::{Engine, Event, Name};
use jiff::{
    Timestamp, ZonedDateTime,
    civil::{Date, Time},
    tz::TimeZone,
};
use tokio::{
    sync::{Mutex, oneshot, watch},
    task::JoinHandle,
};
use tracing::Instrument;

use crate::{
    error::{Error, Result},
    limits::{
        CYCLER_CATCH_UP_DATES_MAX, CYCLER_CHECK_EVERY_DEFAULT, CYCLER_HOUR_DEFAULT,
        CYCLER_HOUR_MAX, CYCLER_OTHER_PUBLISH_WAIT, CYCLER_TOPIC_DEFAULT, READ_BATCH_EVENTS,
    },
};

/// The action of the daily event.
pub const CYCLED_ACTION: &str = "system.cycled";
/// The key (ordering scope) of every daily event: one key, so dates are handled in order.
pub const CYCLER_KEY: &str = "daily-cycler";
/// The id of date `D`'s event is this prefix followed by `D` as `YYYY-MM-DD`.
pub const CYCLED_ID_PREFIX: &str = "system.cycled/";
/// The CloudEvents `source` of the daily events.
pub const CYCLER_SOURCE: &str = "inorder-cqrs/daily-cycler";

/// The source of "now" and of waiting, injectable so that tests control time.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;

    /// Returns once [`Clock::now`] has reached `at` (at once if it already has).
    async fn sleep_until(&self, at: Timestamp);
}

/// The real clock: the system's wall time; waits with tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep_until(&self, at: Timestamp) {
        // Timers run on the monotonic clock; re-checking the wall clock after each wait absorbs
        // wall-clock steps that happened meanwhile.
        loop {
            let Ok(left) = Duration::try_from(at.duration_since(Timestamp::now())) else {
                return; // negative: `at` has passed
            };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }
}

/// A clock that moves only when told to ([`ManualClock::set`], [`ManualClock::advance`]).
/// Sleepers wake as soon as the clock reaches their deadline. Clones share one clock.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<watch::Sender<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    now: Timestamp,
    /// The deadline of every pending [`Clock::sleep_until`], by sleeper number.
    deadlines: BTreeMap<u64, Timestamp>,
    next_sleeper: u64,
}

impl ManualState {
    /// Sleepers that are really blocked: their deadline is still ahead. (One whose deadline
    /// has passed is about to wake and is not counted.)
    fn sleepers(&self) -> usize {
        self.deadlines.values().filter(|deadline| **deadline > self.now).count()
    }
}

impl ManualClock {
    /// A clock showing `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        let state = ManualState { now: start, deadlines: BTreeMap::new(), next_sleeper: 0 };
        Self { state: Arc::new(watch::Sender::new(state)) }
    }

    /// Sets the time (backwards too) and wakes every sleeper whose deadline it reaches.
    pub fn set(&self, now: Timestamp) {
        self.state.send_modify(|state| state.now = now);
    }

    /// Moves the time forward by `by` (saturating at [`Timestamp::MAX`]).
    pub fn advance(&self, by: Duration) {
        self.state.send_modify(|state| {
            state.now = state.now.saturating_add(by).unwrap_or(Timestamp::MAX);
        });
    }

    /// How many tasks are blocked in [`Clock::sleep_until`] with a deadline still ahead.
    #[must_use]
    pub fn sleepers(&self) -> usize {
        self.state.borrow().sleepers()
    }

    /// Returns once at least `count` tasks are blocked in [`Clock::sleep_until`] with a deadline
    /// still ahead: after [`ManualClock::advance`], how a test waits until a loop woken by it has
    /// finished its work and gone back to sleep.
    pub async fn until_sleepers(&self, count: usize) {
        let mut receiver = self.state.subscribe();
        // The sender lives in `self`: the wait cannot fail.
        let _ = receiver.wait_for(|state| state.sleepers() >= count).await;
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.state.borrow().now
    }

    async fn sleep_until(&self, at: Timestamp) {
        let mut receiver = self.state.subscribe();
        let mut sleeper = 0;
        self.state.send_modify(|state| {
            sleeper = state.next_sleeper;
            state.next_sleeper += 1;
            state.deadlines.insert(sleeper, at);
        });
        // Unregisters on wake and on cancellation alike.
        let _registered = Registered { state: &self.state, sleeper };
        // The sender lives in `self`: the wait cannot fail.
        let _ = receiver.wait_for(|state| state.now >= at).await;
    }
}

/// A pending sleeper of a [`ManualClock`]; removes its deadline when dropped.
struct Registered<'a> {
    state: &'a watch::Sender<ManualState>,
    sleeper: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.state.send_modify(|state| {
            state.deadlines.remove(&self.sleeper);
        });
    }
}

/// What [`DailyCycler`] publishes, where, and when. Build from [`Default`] with the setters.
#[derive(Debug, Clone)]
pub struct DailyCyclerConfig {
    /// The topic of the daily events (default [`CYCLER_TOPIC_DEFAULT`]). The engine must accept it:
    /// declared with action `system.cycled` allowed, or auto-created.
    pub topic: String,
    /// The local hour, `0..=23`, at which a date becomes due (default [`CYCLER_HOUR_DEFAULT`]).
    pub hour: i8,
    /// The time zone the date and the hour are read in (default UTC). Use an IANA zone
    /// (`TimeZone::get("Europe/Paris")`) rather than a fixed offset to follow DST.
    pub time_zone: TimeZone,
    /// How long the spawned loop waits after a run completes before checking again (default
    /// [`CYCLER_CHECK_EVERY_DEFAULT`]). The lag between a date becoming due and its event is at most
    /// this plus the run time.
    pub check_every: Duration,
    /// The first date to cycle when none was ever cycled (and no date before it is ever
    /// cycled). Without it, a first run publishes only the latest due date.
    pub first_date: Option<Date>,
}

impl Default for DailyCyclerConfig {
    fn default() -> Self {
        Self {
            topic: CYCLER_TOPIC_DEFAULT.to_owned(),
            hour: CYCLER_HOUR_DEFAULT,
            time_zone: TimeZone::UTC,
            check_every: CYCLER_CHECK_EVERY_DEFAULT,
            first_date: None,
        }
    }
}

impl DailyCyclerConfig {
    /// Sets the topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets the local hour (`0..=23`) a date becomes due at.
    #[must_use]
    pub fn hour(mut self, hour: i8) -> Self {
        self.hour = hour;
        self
    }

    /// Sets the time zone.
    #[must_use]
    pub fn time_zone(mut self, time_zone: TimeZone) -> Self {
        self.time_zone = time_zone;
        self
    }

    /// Sets the pause between the end of one run and the next check.
    #[must_use]
    pub fn check_every(mut self, check_every: Duration) -> Self {
        self.check_every = check_every;
        self
    }

    /// Sets the first date to cycle when none was ever cycled.
    #[must_use]
    pub fn first_date(mut self, first_date: Date) -> Self {
        self.first_date = Some(first_date);
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`Error::Config`] for an hour outside `0..=23`, a zero `check_every`, an invalid topic
    /// name, or a `first_date` whose due instant is out of range.
    pub fn validate(&self) -> Result<()> {
        if !(0..=CYCLER_HOUR_MAX).contains(&self.hour) {
            return Err(Error::Config(format!(
                "daily cycler: hour {} is not in 0..={CYCLER_HOUR_MAX}",
                self.hour
            )));
        }
        if self.check_every.is_zero() {
            return Err(Error::Config("daily cycler: check_every must not be zero".to_owned()));
        }
        Name::new("topic", &self.topic)
            .map_err(|error| Error::Config(format!("daily cycler: {error}")))?;
        if let Some(first_date) = self.first_date {
            self.due_at(first_date)?;
        }
        Ok(())
    }

    /// The instant date `date` becomes due: `date` at `hour:00` in the time zone (an hour that
    /// DST skips resolves to the instant after the gap; a repeated hour to its first occurrence).
    ///
    /// # Errors
    /// [`Error::Config`] if the hour is out of range or the instant is outside jiff's range.
    pub fn due_at(&self, date: Date) -> Result<ZonedDateTime> {
        let out_of_range = |error: jiff::Error| {
            Error::Config(format!(
                "daily cycler: {date} at {}:00 in {} is out of range: {error}",
                self.hour,
                time_zone_name(&self.time_zone)
            ))
        };
        let time = Time::new(self.hour, 0, 0, 0).map_err(out_of_range)?;
        date.to_datetime(time).to_zoned_datetime(self.time_zone.clone()).map_err(out_of_range)
    }

    /// The latest date due at `now` (the local date of `now`, or the day before if its hour
    /// has not come yet).
    fn latest_due(&self, now: Timestamp) -> Result<Date> {
        let today = now.to_zoned_datetime(self.time_zone.clone()).date();
        if self.due_at(today)?.timestamp() <= now {
            return Ok(today);
        }
        today.yesterday().map_err(|error| Error::Config(format!("daily cycler: {today}: {error}")))
    }
}

/// The id of date `date`'s event: `system.cycled/YYYY-MM-DD`.
#[must_use]
pub fn cycled_id(date: Date) -> String {
    format!("{CYCLED_ID_PREFIX}{date}")
}

/// Publishes `system.cycled` once per due date; see the [module documentation](self).
pub struct DailyCycler {
    engine: Engine,
    config: DailyCyclerConfig,
    clock: Arc<dyn Clock>,
    /// Held for a whole run: runs of one cycler never overlap.
    memory: Mutex<Memory>,
}

/// What a cycler knows of the topic between runs.
#[derive(Debug, Clone, Copy)]
enum Memory {
    /// Nothing yet: the first run scans the topic.
    NotScanned,
    /// The latest date known to be cycled (by anyone), if any.
    Scanned { last_cycled: Option<Date> },
}

/// The result of one run.
#[derive(Debug, Default)]
struct Run {
    /// Dates this run published itself, ascending.
    published: Vec<Date>,
    /// More dates are due than one run may publish.
    behind: bool,
}

impl std::fmt::Debug for DailyCycler {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DailyCycler").field("config", &self.config).finish_non_exhaustive()
    }
}

impl DailyCycler {
    /// A cycler publishing through `engine`, reading time from `clock`.
    ///
    /// # Errors
    /// [`Error::Config`] if `config` is invalid ([`DailyCyclerConfig::validate`]).
    pub fn new(engine: Engine, config: DailyCyclerConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        config.validate()?;
        Ok(Self { engine, config, clock, memory: Mutex::new(Memory::NotScanned) })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DailyCyclerConfig {
        &self.config
    }

    /// Publishes every due date not cycled yet, ascending (at most [`CYCLER_CATCH_UP_DATES_MAX`]);
    /// returns the dates this call published itself. Dates someone else cycled meanwhile are
    /// skipped. Concurrent calls on one cycler run one after the other.
    ///
    /// # Errors
    /// [`Error::Engine`] if scanning or publishing failed (dates published before the failure
    /// stay published; the next run continues after them); [`Error::Config`] for a date whose
    /// due instant is out of range.
    pub async fn run_once(&self) -> Result<Vec<Date>> {
        Ok(self.run().await?.published)
    }

    /// Runs [`DailyCycler::run_once`] now and then again [`DailyCyclerConfig::check_every`]
    /// after each run completes, until the handle is stopped or dropped. A failed run is logged
    /// and retried at the next check. Must be called within a tokio runtime.
    #[must_use = "dropping the handle stops the cycler"]
    pub fn spawn(self) -> CyclerHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run_until(stopped));
        CyclerHandle { stop, task }
    }

    async fn run_until(self, mut stopped: oneshot::Receiver<()>) {
        loop {
            let behind = match self.run().await {
                Ok(run) => run.behind,
                Err(error) => {
                    tracing::error!(
                        topic = %self.config.topic,
                        %error,
                        "daily cycler: run failed; retrying at the next check"
                    );
                    false
                }
            };
            if behind {
                match stopped.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => continue,
                    _ => break,
                }
            }
            let next = self.clock.now().saturating_add(self.config.check_every);
            let next = next.unwrap_or(Timestamp::MAX);
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                () = self.clock.sleep_until(next) => {}
            }
        }
    }

    async fn run(&self) -> Result<Run> {
        let mut memory = self.memory.lock().await;
        let latest_due = self.config.latest_due(self.clock.now())?;
        let last_cycled = match *memory {
            Memory::Scanned { last_cycled } => last_cycled,
            Memory::NotScanned => {
                let last_cycled = self.scan_last_cycled().await?;
                *memory = Memory::Scanned { last_cycled };
                last_cycled
            }
        };
        let mut run = Run::default();
        let Some(mut date) = self.first_to_cycle(last_cycled, latest_due)? else {
            return Ok(run);
        };
        let mut attempted = 0;
        while date <= latest_due {
            if attempted == CYCLER_CATCH_UP_DATES_MAX {
                tracing::warn!(
                    topic = %self.config.topic,
                    next = %date,
                    %latest_due,
                    "daily cycler: more than {CYCLER_CATCH_UP_DATES_MAX} dates due; continuing in the next run"
                );
                run.behind = true;
                break;
            }
            attempted += 1;
            if self.cycle(date).await? {
                run.published.push(date);
            }
            *memory = Memory::Scanned { last_cycled: Some(date) };
            let Ok(next) = date.tomorrow() else { break };
            date = next;
        }
        Ok(run)
    }

    /// The first date this run should cycle, if any is due.
    fn first_to_cycle(&self, last_cycled: Option<Date>, latest_due: Date) -> Result<Option<Date>> {
        let start = match (last_cycled, self.config.first_date) {
            (Some(last), _) if last >= latest_due => return Ok(None),
            (Some(last), first_date) => {
                let next = last.tomorrow().map_err(|error| {
                    Error::Config(format!("daily cycler: the day after {last}: {error}"))
                })?;
                first_date.map_or(next, |first_date| next.max(first_date))
            }
            (None, Some(first_date)) => first_date,
            (None, None) => latest_due,
        };
        Ok((start <= latest_due).then_some(start))
    }

    /// Waits until the event `id`, which another cycler is publishing, is in the log: the next
    /// date must not land before it.
    async fn landed(&self, id: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CYCLER_OTHER_PUBLISH_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let found = self.engine.positions_of(&self.config.topic, vec![id.to_owned()]).await?;
            if found.first().copied().flatten().is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(id, "another cycler's publish did not land in time");
                return Err(inorder::Error::Timeout { waited: CYCLER_OTHER_PUBLISH_WAIT }.into());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Publishes date `date`'s event; `false` if it was already cycled.
    async fn cycle(&self, date: Date) -> Result<bool> {
        let topic = &self.config.topic;
        let due = self.config.due_at(date)?;
        let at = due.timestamp();
        let data = serde_json::json!({
            "date": date.to_string(),
            "scheduled_at": at.display_with_offset(due.offset()).to_string(),
        });
        let event = Event::builder(topic, CYCLER_KEY, CYCLED_ACTION)
            .id(cycled_id(date))
            .json(&data)
            .time_micros(at.as_microsecond())
            .source(CYCLER_SOURCE)
            .build()?;
        let span = tracing::info_span!("daily_cycler.cycle", %topic, %date);
        async {
            match self.engine.publish_new(vec![event]).await {
                Ok(positions) => {
                    tracing::info!(position = ?positions.first(), "cycled");
                    metrics::counter!("inorder_cycler_cycled_total", "topic" => topic.clone())
                        .increment(1);
                    Ok(true)
                }
                Err(inorder::Error::IdTaken { .. }) => {
                    tracing::debug!("already cycled, or being cycled, by another cycler");
                    self.landed(&cycled_id(date)).await?;
                    Ok(false)
                }
                Err(error) => Err(error.into()),
            }
        }
        .instrument(span)
        .await
    }

    /// The latest date whose event the topic holds (`None` for an absent or empty topic),
    /// reading the whole topic in batches of [`READ_BATCH_EVENTS`].
    async fn scan_last_cycled(&self) -> Result<Option<Date>> {
        let topic = &self.config.topic;
        let name = Name::new("topic", topic).map_err(|error| Error::Config(error.to_string()))?;
        let (first, last) = match self.engine.storage().positions(&name).await {
            Ok(positions) => positions,
            Err(inorder::Error::UnknownTopic { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let mut last_cycled = None;
        let mut from = first.max(1);
        while from <= last {
            let events = match self.engine.read(topic, from, READ_BATCH_EVENTS).await {
                Ok(events) => events,
                // Stored but not open in this engine: publishing will say so.
                Err(inorder::Error::UnknownTopic { .. }) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            let Some(end) = events.last().map(|event| event.position) else { break };
            last_cycled = last_cycled.max(events.iter().filter_map(cycled_date).max());
            from = end + 1;
        }
        tracing::debug!(%topic, last_cycled = ?last_cycled, "daily cycler: scanned the topic");
        Ok(last_cycled)
    }
}

/// The date `event` cycled, if it is a daily event. An id that does not name a date cannot
/// collide with any date's id, so such an event is ignored (with a warning).
fn cycled_date(event: &Event) -> Option<Date> {
    if event.action != CYCLED_ACTION {
        return None;
    }
    let date = event.id.strip_prefix(CYCLED_ID_PREFIX)?;
    match date.parse::<Date>() {
        Ok(date) => Some(date),
        Err(error) => {
            tracing::warn!(
                topic = %event.topic,
                position = event.position,
                id = %event.id,
                %error,
                "daily cycler: ignoring a system.cycled event whose id names no date"
            );
            None
        }
    }
}

fn time_zone_name(time_zone: &TimeZone) -> String {
    time_zone.iana_name().map_or_else(|| format!("{time_zone:?}"), str::to_owned)
}

/// The running loop of [`DailyCycler::spawn`]. Dropping it stops the loop too, but without
/// waiting: a run in progress finishes in the background.
#[derive(Debug)]
pub struct CyclerHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl CyclerHandle {
    /// Stops the loop: a run in progress is finished (never cut mid-publish), no new one starts.
    /// Returns once the loop has ended.
    pub async fn stop(self) {
        let Self { stop, task } = self;
        let _ = stop.send(()); // the loop may have ended already
        if let Err(error) = task.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}
