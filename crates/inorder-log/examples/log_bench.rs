//! Log benchmarks, each printed next to a baseline measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release -p inorder-log --example log_bench -- [--quick]
//! ```
//!
//! - `log.append.group64`: 256-byte records, 64 concurrent appenders (tokio tasks), fsync=group.
//!   Baselines: `raw_fdatasync`, a plain `write` + `fdatasync` loop writing the same frames in
//!   batches of exactly as many records as our group commit put behind one fsync (the hardware
//!   ceiling for that batching); `peer_fjall`, the fjall LSM store writing batches of the same
//!   size with `fdatasync` per batch.
//! - `log.append.group64x16`: the same with batches of 16 records per append (15 of every 16
//!   records carry the batch flag), against `raw_fdatasync` of as many records per fsync.
//! - `log.append.always1`: one appender, fsync=always, against `raw_fdatasync` of single records.
//! - `log.read.seq`: sequential read of 1M records, against a buffered read of the same bytes.
//!
//! Set `INORDER_BENCH_DIR` to choose the disk (default: the system temp directory).

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rates and batch sizes for a report

use std::{
    error::Error,
    fs::{File, OpenOptions},
    io::{BufReader, Read, Write},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use inorder_log::{FsyncPolicy, Log, LogOptions, ReadLimits};

const RECORD_PAYLOAD_BYTES: usize = 256;
const RECORD_FRAME_BYTES: usize = RECORD_PAYLOAD_BYTES + 16;
const APPENDERS: usize = 64;
/// Records per append of `log.append.group64x16`.
const BATCH_RECORDS: usize = 16;
const READ_RECORDS: u64 = 1_000_000;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // Contenders run in alternating slices so that drift in the disk's speed hits all alike.
    let (rounds, slice) =
        if quick { (8, Duration::from_millis(375)) } else { (20, Duration::from_millis(500)) };
    let root = std::env::var_os("INORDER_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(&root)?;
    println!("# log_bench: dir={} rounds={rounds} slice={slice:?}", dir.path().display());

    let mut ours = Group64::open(&dir.path().join("group64"), 1)?;
    let mut raw = RawFdatasync::open(&dir.path().join("raw-group"))?;
    let mut peer = PeerFjall::open(&dir.path().join("fjall"))?;
    let (mut ours_rate, mut raw_rate, mut peer_rate) =
        (Rate::default(), Rate::default(), Rate::default());
    for _ in 0..rounds {
        ours_rate.add(ours.run(slice)?);
        let batch = ours.records_per_sync().round().max(1.0) as usize;
        raw_rate.add(raw.run(batch, slice)?);
        peer_rate.add(peer.run(batch, slice)?);
    }
    println!("# group commit put {:.1} records behind each fdatasync", ours.records_per_sync());
    report(
        "log.append.group64",
        "events/s",
        ours_rate.per_second(),
        "raw_fdatasync",
        raw_rate.per_second(),
    );
    report(
        "log.append.group64",
        "events/s",
        ours_rate.per_second(),
        "peer_fjall",
        peer_rate.per_second(),
    );
    drop(ours);

    let mut ours = Group64::open(&dir.path().join("group64x16"), BATCH_RECORDS)?;
    let mut raw = RawFdatasync::open(&dir.path().join("raw-group-x16"))?;
    let (mut ours_rate, mut raw_rate) = (Rate::default(), Rate::default());
    for _ in 0..rounds {
        ours_rate.add(ours.run(slice)?);
        let batch = ours.records_per_sync().round().max(1.0) as usize;
        raw_rate.add(raw.run(batch, slice)?);
    }
    println!(
        "# x16: group commit put {:.1} records behind each fdatasync",
        ours.records_per_sync()
    );
    report(
        "log.append.group64x16",
        "events/s",
        ours_rate.per_second(),
        "raw_fdatasync",
        raw_rate.per_second(),
    );

    let log = Log::open(dir.path().join("always1"), LogOptions::with_fsync(FsyncPolicy::Always))?;
    let mut raw = RawFdatasync::open(&dir.path().join("raw-single"))?;
    let (mut ours_rate, mut raw_rate) = (Rate::default(), Rate::default());
    for _ in 0..rounds {
        ours_rate.add(always1(&log, slice)?);
        raw_rate.add(raw.run(1, slice)?);
    }
    report(
        "log.append.always1",
        "events/s",
        ours_rate.per_second(),
        "raw_fdatasync",
        raw_rate.per_second(),
    );

    let (ours, raw) = read_seq(&dir.path().join("read"))?;
    report("log.read.seq", "records/s", ours, "raw_buffered_read", raw);
    Ok(())
}

fn report(name: &str, unit: &str, ours: f64, baseline: &str, baseline_value: f64) {
    println!(
        "BENCH name={name} unit={unit} ours={ours:.1} baseline={baseline} \
         baseline_value={baseline_value:.1} ratio={:.3}",
        ours / baseline_value
    );
}

/// Events over time, summed across slices.
#[derive(Default)]
struct Rate {
    events: u64,
    elapsed: Duration,
}

impl Rate {
    fn add(&mut self, (events, elapsed): (u64, Duration)) {
        self.events += events;
        self.elapsed += elapsed;
    }

    fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn payload() -> Bytes {
    Bytes::from(vec![0x5Au8; RECORD_PAYLOAD_BYTES])
}

/// 64 tokio tasks appending batches of `batch_records` 256-byte records, fsync=group.
struct Group64 {
    log: Log,
    runtime: tokio::runtime::Runtime,
    batch_records: usize,
    records: u64,
    syncs: u64,
}

impl Group64 {
    fn open(dir: &Path, batch_records: usize) -> Result<Self> {
        let log = Log::open(dir, LogOptions::with_fsync(FsyncPolicy::Group))?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        Ok(Self { log, runtime, batch_records, records: 0, syncs: 0 })
    }

    fn records_per_sync(&self) -> f64 {
        self.records as f64 / self.syncs.max(1) as f64
    }

    fn run(&mut self, slice: Duration) -> Result<(u64, Duration)> {
        let (log, batch_records) = (&self.log, self.batch_records);
        let stop = Arc::new(AtomicBool::new(false));
        let appended = Arc::new(AtomicU64::new(0));
        let (count, elapsed, before, after) = self.runtime.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..APPENDERS {
                let (log, stop, appended) = (log.clone(), Arc::clone(&stop), Arc::clone(&appended));
                tasks.push(tokio::spawn(async move {
                    let batch = vec![payload(); batch_records];
                    while !stop.load(Ordering::Relaxed) {
                        log.append(batch.clone()).await.expect("append");
                        appended.fetch_add(batch_records as u64, Ordering::Relaxed);
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // all appenders running
            let (start, from, before) =
                (Instant::now(), appended.load(Ordering::Relaxed), log.stats());
            tokio::time::sleep(slice).await;
            let (elapsed, to, after) =
                (start.elapsed(), appended.load(Ordering::Relaxed), log.stats());
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                task.await.expect("appender task");
            }
            (to - from, elapsed, before, after)
        });
        self.records += after.records - before.records;
        self.syncs += after.data_syncs - before.data_syncs;
        Ok((count, elapsed))
    }
}

/// One appender, fsync=always.
fn always1(log: &Log, slice: Duration) -> Result<(u64, Duration)> {
    let record = payload();
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < slice {
        log.append_blocking([record.clone()])?;
        count += 1;
    }
    Ok((count, start.elapsed()))
}

/// A plain loop: write `batch` record frames at the end of a file, fdatasync, repeat.
struct RawFdatasync {
    file: File,
}

impl RawFdatasync {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self { file: OpenOptions::new().create(true).write(true).truncate(true).open(path)? })
    }

    fn run(&mut self, batch: usize, slice: Duration) -> Result<(u64, Duration)> {
        let buf = vec![0x5Au8; RECORD_FRAME_BYTES * batch];
        let start = Instant::now();
        let mut records = 0u64;
        while start.elapsed() < slice {
            self.file.write_all(&buf)?;
            self.file.sync_data()?;
            records += batch as u64;
        }
        Ok((records, start.elapsed()))
    }
}

/// fjall: one write batch of `batch` records with an fdatasync per batch.
struct PeerFjall {
    db: fjall::Database,
    events: fjall::Keyspace,
    next: u64,
}

impl PeerFjall {
    fn open(dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self { db, events, next: 0 })
    }

    fn run(&mut self, batch: usize, slice: Duration) -> Result<(u64, Duration)> {
        let value = vec![0x5Au8; RECORD_PAYLOAD_BYTES];
        let start = Instant::now();
        let first = self.next;
        while start.elapsed() < slice {
            let mut write = self.db.batch().durability(Some(fjall::PersistMode::SyncData));
            for _ in 0..batch {
                self.next += 1;
                write.insert(&self.events, self.next.to_be_bytes(), value.as_slice());
            }
            write.commit()?;
        }
        Ok((self.next - first, start.elapsed()))
    }
}

/// Writes 1M records, then reads them with a reader and, as the baseline, the segment files
/// with a buffered reader. Both read from the page cache. Returns (ours, raw) records/s.
fn read_seq(dir: &Path) -> Result<(f64, f64)> {
    let log = Log::open(dir, LogOptions::with_fsync(FsyncPolicy::Never))?;
    let record = payload();
    let per_batch = 1000;
    for _ in 0..READ_RECORDS / per_batch {
        log.append_blocking(std::iter::repeat_n(record.clone(), per_batch as usize))?;
    }
    log.sync_blocking()?;
    let read_ours = || -> Result<f64> {
        let start = Instant::now();
        let mut reader = log.reader(1);
        let (mut records, mut bytes) = (0u64, 0usize);
        loop {
            let batch = reader.read(ReadLimits::default())?;
            if batch.is_empty() {
                break;
            }
            records += batch.len() as u64;
            bytes += batch.iter().map(|r| r.payload.len()).sum::<usize>();
        }
        assert_eq!((records, bytes), (READ_RECORDS, READ_RECORDS as usize * RECORD_PAYLOAD_BYTES));
        Ok(records as f64 / start.elapsed().as_secs_f64())
    };
    let read_raw = || -> Result<f64> {
        let mut segments: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segments.sort();
        let start = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        for segment in &segments {
            let mut file = BufReader::with_capacity(256 * 1024, File::open(segment)?);
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += std::hint::black_box(n);
            }
        }
        assert!(total >= READ_RECORDS as usize * RECORD_FRAME_BYTES);
        Ok(READ_RECORDS as f64 / start.elapsed().as_secs_f64())
    };
    read_ours()?; // warm the page cache and the allocator
    let (mut ours, mut raw) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        raw = raw.max(read_raw()?);
        ours = ours.max(read_ours()?);
    }
    Ok((ours, raw))
}
