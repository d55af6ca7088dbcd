//! `kill -9` end to end: a child process appends from many threads and reports every position
//! whose append returned; the parent kills it at a random moment, reopens the log and checks
//! that every reported record is there, byte-equal, with contiguous positions. Several rounds
//! on the same directory, for `group` and for `always`.
//!
//! The child is this test binary run again with an environment variable that selects the
//! child role (so no extra binary has to be built).

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::read_all;
use inorder_log::{FsyncPolicy, Log, LogOptions};

const CHILD_ENV: &str = "INORDER_LOG_CRASH_CHILD";
const ROUNDS: usize = 4;

fn options(fsync: FsyncPolicy) -> LogOptions {
    // Small segments so kills also land around segment rolls.
    LogOptions {
        fsync,
        segment_bytes: 64 * 1024,
        record_payload_bytes_max: 4096,
        ..LogOptions::default()
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_append() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    for fsync in [FsyncPolicy::Group, FsyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let mut acknowledged: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for round in 0..ROUNDS {
            let reported = run_child_and_kill(dir.path(), fsync, round);
            for (position, payload) in reported {
                assert!(
                    acknowledged.insert(position, payload).is_none(),
                    "position {position} was acknowledged twice"
                );
            }
            check_reopened(dir.path(), fsync, &acknowledged);
            eprintln!("{fsync} round {round}: {} acknowledged so far", acknowledged.len());
        }
        assert!(
            acknowledged.len() >= ROUNDS,
            "{fsync}: the children acknowledged only {} appends",
            acknowledged.len()
        );
    }
}

/// Runs one child until killed; returns what it reported as acknowledged.
fn run_child_and_kill(dir: &Path, fsync: FsyncPolicy, round: usize) -> Vec<(u64, Vec<u8>)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["kill_9_never_loses_an_acknowledged_append", "--exact", "--nocapture"])
        .env(CHILD_ENV, format!("{fsync}:{round}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || parse_reports(BufReader::new(stdout)));
    // Kill at a random moment once the child is up (it reports READY after opening the log).
    std::thread::sleep(Duration::from_millis(150 + fastrand::u64(0..350)));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap()
}

/// `ACK <position> <hex payload>` lines; a line cut by the kill (no newline) is ignored.
fn parse_reports(mut stdout: impl BufRead) -> Vec<(u64, Vec<u8>)> {
    let mut reports = Vec::new();
    let mut line = Vec::new();
    while stdout.read_until(b'\n', &mut line).unwrap() > 0 {
        if line.ends_with(b"\n") && line.starts_with(b"ACK ") {
            let text = std::str::from_utf8(&line).unwrap().trim_end();
            let mut fields = text.split(' ').skip(1);
            let position = fields.next().unwrap().parse().unwrap();
            reports.push((position, hex_decode(fields.next().unwrap())));
        }
        line.clear();
    }
    reports
}

fn check_reopened(dir: &Path, fsync: FsyncPolicy, acknowledged: &BTreeMap<u64, Vec<u8>>) {
    let log = Log::open(dir, options(fsync)).unwrap();
    let records = read_all(&log, 1);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.position, u64::try_from(i + 1).unwrap(), "positions are contiguous");
    }
    for (position, payload) in acknowledged {
        let index = usize::try_from(*position - 1).unwrap();
        let record = records.get(index).unwrap_or_else(|| {
            panic!("{fsync}: acknowledged position {position} is missing after kill -9")
        });
        assert_eq!(&record.payload[..], &payload[..], "{fsync}: payload at {position}");
    }
    log.verify().unwrap();
}

/// The child: appends forever from several threads, reporting each acknowledged record.
fn child(spec: &str) -> ! {
    let mut parts = spec.splitn(3, ':');
    let fsync: FsyncPolicy = parts.next().unwrap().parse().unwrap();
    let round = parts.next().unwrap();
    let dir = parts.next().unwrap();
    let log = Log::open(dir, options(fsync)).unwrap();
    let threads = if fsync == FsyncPolicy::Always { 2 } else { 8 };
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let log = log.clone();
            scope.spawn(move || {
                for i in 0u64.. {
                    let batch_len = if i % 5 == 0 { 3 } else { 1 };
                    let batch: Vec<Vec<u8>> = (0..batch_len)
                        .map(|j| {
                            let mut p =
                                format!("round{round}-thread{thread}-{i}-{j}-").into_bytes();
                            p.resize(p.len() + fastrand::usize(0..400), b'0' + (i % 10) as u8);
                            p
                        })
                        .collect();
                    let range = log.append_blocking(batch.clone()).unwrap();
                    let mut out = std::io::stdout().lock();
                    for (position, payload) in range.zip(&batch) {
                        writeln!(out, "ACK {position} {}", hex_encode(payload)).unwrap();
                    }
                }
            });
        }
    });
    unreachable!("the child appends until it is killed")
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}
