//! The number of OS threads does not grow with the number of open logs: ten thousand logs in one
//! process share the pool's fixed threads, under `fsync = group` and `never`, and every one of
//! them still appends and reads back. (With a thread per log and stage, the first check would
//! see 10,000 to 30,000 threads.)

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::{check_contents, payload};
use inorder_log::{
    FsyncPolicy, Log, LogOptions,
    limits::SYNCER_THREADS,
    vfs::{Vfs, sim::SimVfs},
};

/// Logs open at once.
const LOGS: usize = 10_000;

/// Threads the process may have beyond one per CPU, however many logs are open: the test
/// harness (a main thread and a thread per test running at once) and the log pool's syncer
/// threads (its writer threads are one per CPU, at least two).
const THREADS_BEYOND_CORES_MAX: usize = 16;

const _: () = assert!(SYNCER_THREADS + 2 <= THREADS_BEYOND_CORES_MAX, "room for the harness");

/// The process's OS threads, as the kernel counts them.
fn os_threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("Threads:")).unwrap();
    line["Threads:".len()..].trim().parse().unwrap()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn options(fsync: FsyncPolicy) -> LogOptions {
    // Long idle time: the logs must not hibernate in the middle of the checks (they may; they
    // must not have to).
    LogOptions { idle_after: Duration::from_secs(3600), ..common::small_options(fsync) }
}

/// Opens `count` logs under `root`, appends one record to each (all at once), checks the thread
/// count, appends again to all, checks again, and reads every log back.
async fn check_threads_stay_flat(vfs: Arc<dyn Vfs>, root: &Path, count: usize, fsync: FsyncPolicy) {
    let limit = THREADS_BEYOND_CORES_MAX + cores();
    let before = os_threads();
    let logs: Vec<Log> = (0..count)
        .map(|i| {
            Log::open_with_vfs(Arc::clone(&vfs), root.join(format!("topic-{i}")), options(fsync))
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let mut counts = vec![before];
    for round in ["first", "second"] {
        let mut appends = tokio::task::JoinSet::new();
        for (i, log) in logs.iter().enumerate() {
            let log = log.clone();
            appends.spawn(async move { log.append([payload(round, i, 40)]).await });
        }
        while let Some(appended) = appends.join_next().await {
            let positions = appended.unwrap().unwrap();
            assert_eq!(positions.clone().count(), 1, "{positions:?}");
        }
        let threads = os_threads();
        counts.push(threads);
        assert!(
            threads <= limit,
            "{count} open logs ({fsync}) after the {round} appends: {threads} OS threads; \
             at most {THREADS_BEYOND_CORES_MAX} + {} cores allowed",
            cores()
        );
    }
    for (i, log) in logs.iter().enumerate() {
        check_contents(log, 1, &[payload("first", i, 40), payload("second", i, 40)]);
    }
    eprintln!(
        "{count} logs, fsync={fsync}, {} cores: OS threads before opening, after the first and \
         the second appends: {counts:?} (limit {limit})",
        cores()
    );
}

// `current_thread`: the runtime that drives the appends adds no thread of its own.
#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_logs_under_group_commit_share_a_fixed_set_of_threads() {
    let vfs: Arc<dyn Vfs> = Arc::new(SimVfs::new());
    check_threads_stay_flat(vfs, Path::new("/data"), LOGS, FsyncPolicy::Group).await;
}

#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_logs_without_fsync_share_a_fixed_set_of_threads() {
    let vfs: Arc<dyn Vfs> = Arc::new(SimVfs::new());
    check_threads_stay_flat(vfs, Path::new("/data"), LOGS, FsyncPolicy::Never).await;
}

/// The same on real files, with real `fdatasync`s on the shared syncer threads. Fewer logs: each
/// open log holds two file descriptors (its `LOCK` and its active segment), and this process
/// may have 20,000 at most. A tmpfs keeps the fsyncs cheap where there is one.
#[tokio::test(flavor = "current_thread")]
async fn a_thousand_logs_on_real_files_share_a_fixed_set_of_threads() {
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(inorder_log::vfs::StdVfs);
    check_threads_stay_flat(vfs, root.path(), 1_000, FsyncPolicy::Group).await;
}
