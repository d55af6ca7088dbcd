//! `inorder log verify` and `inorder log repair`: offline checks and repairs of the topic logs of
//! a stopped server's data directory (file storage).
//!
//! Both go through [`OfflineLog`], which holds each log's `LOCK` like a running server does: run
//! beside a live server they refuse ("the log is open in another process") instead of reading a
//! log being written. Neither needs the server, the configuration or a runtime.
//!
//! - `verify` scans every segment of every topic (or of one) and reports, per topic: sound, a torn
//!   tail (what the next open cuts — not damage), or the first damage (file, byte offset,
//!   position, sound records after it) and what a repair would do. Exit code 0 when nothing is
//!   damaged, 2 when something is, 1 when a log could not be checked.
//! - `repair` shows what it would do for one topic (exit code 2 if there is damage); with `--yes`
//!   it does it: the log is cut at the start of the damaged batch and everything from there on —
//!   the rest of that segment and every later segment — moves into quarantine files next to the
//!   segments (`<segment>.at-<offset>.quarantine`), never deleted. The quarantined positions are
//!   *retired*, not reused: each is filled with an engine "lost" record (no event: reads skip it,
//!   subscriptions count it resolved without a handler call), so a position a subscription
//!   already handled is never handed to a new event, and the log continues after the highest
//!   quarantined position.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use inorder_log::{
    Error as LogError, Inspection, Name, OfflineLog, Problem, RepairPlan, SegmentInspection,
};

/// Why the positions a repair retires hold no event (in their lost records).
const RETIRED_REASON: &str = "quarantined by inorder log repair";

/// Where the engine keeps topic logs in its data directory (`<data_dir>/topics/<topic>`).
const TOPICS_DIR: &str = "topics";
/// Where the engine keeps its state journal, a log of its own (`<data_dir>/state/journal`).
const STATE_JOURNAL_DIR: &str = "state/journal";

/// `inorder log verify`: inspects the logs; the exit code says what was found.
pub fn verify(data_dir: &Path, topic: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut logs = match topic {
        Some(topic) => vec![(topic.to_owned(), topic_dir(data_dir, topic)?)],
        None => topic_dirs(data_dir)?,
    };
    let journal = data_dir.join(STATE_JOURNAL_DIR);
    if topic.is_none() && journal.is_dir() {
        logs.push(("(state journal)".to_owned(), journal.clone()));
    }
    let (mut damaged, mut unchecked) = (false, false);
    for (label, dir) in &logs {
        match inspect(dir) {
            Ok((offline, inspection)) => {
                print_inspection(label, &inspection);
                if inspection.is_damaged() {
                    damaged = true;
                    if let Some(plan) = offline.plan_repair(&inspection)? {
                        print_plan(&plan, false);
                        if *dir == journal {
                            println!(
                                "  (the state journal is not repaired by `inorder log repair`)"
                            );
                        } else {
                            println!("  to repair: inorder log repair --topic {label} --yes");
                        }
                    }
                }
            }
            Err(error) => {
                unchecked = true;
                println!("{label}: NOT CHECKED: {error:#}");
            }
        }
    }
    if logs.is_empty() {
        println!("no topic logs in {}", data_dir.join(TOPICS_DIR).display());
    }
    Ok(if damaged {
        ExitCode::from(2)
    } else if unchecked {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `inorder log repair`: shows the repair of one topic's first damage; with `yes`, carries it out.
pub fn repair(data_dir: &Path, topic: &str, yes: bool) -> anyhow::Result<ExitCode> {
    let dir = topic_dir(data_dir, topic)?;
    let (offline, inspection) = inspect(&dir)?;
    print_inspection(topic, &inspection);
    let Some(plan) = offline.plan_repair(&inspection)? else {
        println!("{topic}: nothing to repair");
        return Ok(ExitCode::SUCCESS);
    };
    if !yes {
        print_plan(&plan, false);
        println!("  nothing was changed; run again with --yes to repair");
        return Ok(ExitCode::from(2));
    }
    let plan = plan
        .retire_with(inorder::codec::lost(RETIRED_REASON))
        .with_context(|| format!("planning the repair of topic {topic}"))?;
    print_plan(&plan, true);
    offline.repair(&plan).with_context(|| format!("repairing topic {topic}"))?;
    let after = offline.inspect()?;
    if after.is_damaged() {
        bail!("topic {topic} is still damaged after the repair: run `inorder log verify`");
    }
    let kept = plan.next_position - 1;
    match plan.retired() {
        Some(retired) => println!(
            "{topic}: repaired: positions {}..={kept} stay in the log, positions {}..={} are \
             retired (lost); the next event gets {}",
            after.first_position(),
            retired.start(),
            retired.end(),
            after.last_position() + 1
        ),
        None => println!(
            "{topic}: repaired: positions {}..={kept} stay in the log; the next event gets {}",
            after.first_position(),
            after.last_position() + 1
        ),
    }
    println!("  the quarantine files stay in {} until you delete them", plan.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Takes the log's lock and inspects it.
fn inspect(dir: &Path) -> anyhow::Result<(OfflineLog, Inspection)> {
    let offline = OfflineLog::open(dir).map_err(|error| match error {
        LogError::Locked { dir } => anyhow::anyhow!(
            "the log in {} is open in another process: stop the server first (inorder log \
             works on a stopped server's data directory)",
            dir.display()
        ),
        other => anyhow::Error::new(other),
    })?;
    let inspection = offline.inspect()?;
    Ok((offline, inspection))
}

/// The directory of one topic's log; the name is validated (it becomes a path component).
fn topic_dir(data_dir: &Path, topic: &str) -> anyhow::Result<PathBuf> {
    let name = Name::new("topic", topic)?;
    let dir = data_dir.join(TOPICS_DIR).join(name.as_str());
    if !dir.is_dir() {
        bail!("no log of topic {topic} in {}", data_dir.join(TOPICS_DIR).display());
    }
    Ok(dir)
}

/// Every topic log of the data directory, by name.
fn topic_dirs(data_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let topics = data_dir.join(TOPICS_DIR);
    let entries = std::fs::read_dir(&topics).with_context(|| {
        format!(
            "no topics directory {} (is this a data directory of file storage?)",
            topics.display()
        )
    })?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", topics.display()))?;
        if entry.path().is_dir() {
            dirs.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn print_inspection(label: &str, inspection: &Inspection) {
    let segments = inspection.segments.len();
    let extent = if inspection.last_position() >= inspection.first_position() {
        format!("positions {}..={}", inspection.first_position(), inspection.last_position())
    } else {
        format!("no events (the next gets {})", inspection.first_position())
    };
    match (&inspection.damage, &inspection.torn_tail) {
        (Some(damage), _) => println!(
            "{label}: DAMAGED: {} at byte {} of {} (position {})",
            damage.reason,
            damage.offset,
            damage.segment.display(),
            damage.position
        ),
        (None, Some(torn)) => println!(
            "{label}: sound, {extent} in {segments} segment(s); a torn tail of {} bytes at byte {} \
             of {} ({:?}) is cut by the next open",
            torn.bytes_removed,
            torn.offset,
            torn.segment.display(),
            torn.reason
        ),
        (None, None) => println!("{label}: sound, {extent} in {segments} segment(s)"),
    }
    for segment in inspection.segments.iter().filter(|s| s.finding.is_some()) {
        print_segment(segment);
    }
    if !inspection.quarantine_files.is_empty() {
        println!("  {} quarantine file(s) from earlier repairs", inspection.quarantine_files.len());
    }
}

fn print_segment(segment: &SegmentInspection) {
    let Some(finding) = segment.finding else { return };
    let what = match finding.problem {
        Problem::TornTail(reason) => format!("torn tail ({reason:?})"),
        Problem::Corrupt(reason) => reason.to_string(),
    };
    println!(
        "  {}: {} sound record(s) from position {}, then {what} at byte {} (position {}); {} \
         sound record(s) after it",
        segment.path.display(),
        segment.records,
        segment.base,
        finding.offset,
        finding.position,
        finding.sound_records_after
    );
}

/// The plan, as what a repair would do (`doing` false) or is doing.
fn print_plan(plan: &RepairPlan, doing: bool) {
    let (cut, moves) =
        if doing { ("cutting", "moving") } else { ("a repair would cut", "and move") };
    println!(
        "  {cut} the log at byte {} of {} (it continues at position {})",
        plan.offset,
        plan.segment.display(),
        plan.next_position
    );
    let positions = plan
        .last_position_quarantined
        .map_or(String::new(), |last| format!(" (positions {}..={last})", plan.next_position));
    println!(
        "  {moves} {} sound record(s){positions} and the damage into quarantine:",
        plan.records_quarantined
    );
    if let Some(retired) = plan.retired() {
        println!(
            "  positions {}..={} are retired: each holds a lost record (reads skip it, \
             subscriptions count it resolved without a handler call), never a new event. To \
             publish quarantined events again, give them new ids (their old ids stay taken)",
            retired.start(),
            retired.end()
        );
    }
    for moved in &plan.moves {
        let from = if moved.whole_file {
            format!("{} ({} bytes)", moved.from.display(), moved.bytes)
        } else {
            format!(
                "bytes {}.. of {} ({} bytes)",
                moved.from_offset,
                moved.from.display(),
                moved.bytes
            )
        };
        println!("    {from} -> {}", moved.to.display());
    }
}
