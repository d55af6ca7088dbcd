//! The child process of a crash test: the test binary runs *itself* again as a child (selecting
//! one test by name, with an environment variable telling it to be the child), the parent
//! collects the lines the child prints, then kills it with SIGKILL (`kill -9`) — no destructor,
//! no flush, no shutdown hook runs.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

/// Runs test `test` of the current test binary as a child with `env = value`, lets it run for
/// `after`, kills it with SIGKILL, and returns every complete line it printed to stdout.
///
/// # Errors
/// If the child cannot be started, killed or reaped.
pub fn run_and_kill(
    test: &str,
    env: &str,
    value: &str,
    after: Duration,
) -> std::io::Result<Vec<String>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture"])
        .env(env, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // A line cut by the kill has no newline: it is not reported.
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.ends_with('\n') {
                lines.push(line.trim_end().to_owned());
            }
            line.clear();
        }
        lines
    });
    std::thread::sleep(after);
    child.kill()?;
    child.wait()?;
    reader.join().map_err(|_| std::io::Error::other("the stdout reader panicked"))
}
