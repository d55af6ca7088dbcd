//! Throw-away PostgreSQL clusters for tests and benchmarks, started from the system's binaries;
//! and the child processes crash tests `kill -9` ([`child`]).
//!
//! Postgres code is tested against a real server, never a mock. A [`Cluster`] is `initdb` +
//! `pg_ctl start` in a temporary directory, on a free loopback port, with trust authentication
//! for the `postgres` role; when running as root, the server runs as the `postgres` user (the
//! server refuses root). Binaries are looked up on `PATH` (`pg_ctl`, following symlinks) and
//! under `/usr/lib/postgresql/*/bin`; if there are none the error says how to install them.
//!
//! Every cluster is *owned* by a process. A detached watchdog (`setsid sh`) stops and removes it
//! when that process exits — also after `kill -9`, a panic, or a test harness that never runs
//! destructors. Dropping a [`Cluster`] stops and removes it at once.
//!
//! [`fresh_database`] is what tests use: a new, empty database on the cluster this run shares.
//! The README's test command starts one cluster for the whole run (the `inorder-testpg` binary,
//! owned by the test script) and exports its URL as [`SHARED_URL_ENV`]; without it (a plain
//! `cargo test`) each test process starts its own cluster on first use.

pub mod child;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// The variable holding the URL of a cluster every test process of a run shares.
/// (Not `INORDER_*`: the server reads every `INORDER_*` variable as a configuration override.)
pub const SHARED_URL_ENV: &str = "TESTPG_URL";

/// How many free ports [`Cluster::start`] tries before giving up (another process may take the
/// port between the probe and the server's bind).
const START_ATTEMPTS: u32 = 5;

/// Why a cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `initdb`/`pg_ctl` on this machine.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under \
         /usr/lib/postgresql/*/bin; install them: apt-get install -y postgresql"
    )]
    BinariesMissing,
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its output or the reason it could not run.
        detail: String,
    },
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// [`SHARED_URL_ENV`] does not look like `postgres://…/database`.
    #[error("{SHARED_URL_ENV}={0:?} does not end with /<database>")]
    BadSharedUrl(String),
}

/// What this crate returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Server settings of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Keep PostgreSQL's durability settings (`fsync`, `synchronous_commit`, full page writes).
    /// Off by default: tests check what inorder does, not what the disk does. Benchmarks turn
    /// it on so that baselines and inorder pay the same commits.
    pub durable: bool,
}

/// One running PostgreSQL server in a temporary directory.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    options: Options,
    detached: bool,
}

impl Cluster {
    /// Starts a cluster owned by this process (default options).
    ///
    /// # Errors
    /// Missing binaries, `initdb` or `pg_ctl start` failures.
    pub fn start() -> Result<Self> {
        Self::start_with(Options::default(), std::process::id())
    }

    /// Starts a cluster that lives as long as process `owner` (default options).
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_owned_by(owner: u32) -> Result<Self> {
        Self::start_with(Options::default(), owner)
    }

    /// Starts a cluster with `options` that lives as long as process `owner`.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_with(options: Options, owner: u32) -> Result<Self> {
        let bin = bin_dir()?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let root = std::env::temp_dir().join(format!("inorder-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        if running_as_root() {
            // The server runs as `postgres`; it needs to create its data directory, socket and
            // log here.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777))
                .map_err(io(format!("opening {} to postgres", root.display())))?;
        }
        let mut cluster =
            Self { data: root.join("data"), root, bin, port: 0, options, detached: false };
        cluster.spawn_watchdog(owner)?;
        run(cluster.as_server_user(&cluster.bin.join("initdb")).args([
            "-D".as_ref(),
            cluster.data.as_os_str(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "--auth=trust".as_ref(),
            "--no-sync".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
        ]))?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            cluster.port = free_port()?;
            match cluster.resume() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(Error::BinariesMissing))
    }

    /// `postgres://postgres@127.0.0.1:PORT/database`.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory of `psql`, `pgbench` and the server binaries in use.
    #[must_use]
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Stops the server (fast shutdown: clients are disconnected); [`Cluster::resume`] starts it
    /// again on the same port with the same data.
    ///
    /// # Errors
    /// If `pg_ctl stop` fails.
    pub fn stop(&self) -> Result<()> {
        run(self.pg_ctl().args(["stop", "-m", "fast", "-w"]))
    }

    /// Starts the (stopped) server again.
    ///
    /// # Errors
    /// If `pg_ctl start` fails (for example when the port was taken meanwhile).
    pub fn resume(&self) -> Result<()> {
        let mut settings = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=300 -c shared_buffers=128MB",
            self.port,
            self.root.display()
        );
        if !self.options.durable {
            settings.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.root.join("server.log");
        run(self.pg_ctl().args(["start", "-w", "-t", "60", "-o", &settings, "-l"]).arg(&log))
            .map_err(|e| match std::fs::read_to_string(&log) {
                Ok(text) => Error::Command {
                    command: "pg_ctl start".into(),
                    detail: format!("{e}; server log:\n{}", tail(&text, 2000)),
                },
                Err(_) => e,
            })
    }

    /// Creates the database `name` and returns its URL.
    ///
    /// # Errors
    /// If `psql` fails (for example when `name` exists).
    pub fn create_database(&self, name: &str) -> Result<String> {
        create_database(&self.bin, &self.url("postgres"), name)?;
        Ok(self.url(name))
    }

    /// Leaves the cluster running; the watchdog removes it when its owner exits.
    pub fn detach(mut self) {
        self.detached = true;
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.as_server_user(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(&self.data);
        command
    }

    /// `program`, run as `postgres` when this process is root.
    fn as_server_user(&self, program: &Path) -> Command {
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// A detached shell that waits for `owner` to exit, then stops the server and removes the
    /// directory.
    fn spawn_watchdog(&self, owner: u32) -> Result<()> {
        const SCRIPT: &str = r#"pgctl=$1; data=$2; root=$3; shift 3
"$@" "$pgctl" -D "$data" stop -m immediate >/dev/null 2>&1
rm -rf "$root""#;
        let mut args = vec![
            self.bin.join("pg_ctl").into_os_string(),
            self.data.clone().into_os_string(),
            self.root.clone().into_os_string(),
        ];
        if running_as_root() {
            args.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
        }
        spawn_after_exit_of(owner, "the cluster's watchdog", SCRIPT, &args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self
                .pg_ctl()
                .args(["stop", "-m", "immediate"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The server this process's tests share: [`SHARED_URL_ENV`] if set, else a cluster this process
/// starts on first use (removed when it exits).
struct Shared {
    /// URL of the `postgres` database; other databases replace its last path segment.
    base_url: String,
    bin: PathBuf,
    own_cluster: Option<Cluster>,
}

fn shared() -> Result<&'static Shared, String> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let shared = match std::env::var(SHARED_URL_ENV) {
                Ok(url) if !url.is_empty() => {
                    if url.rsplit_once('/').is_none_or(|(_, db)| db.is_empty()) {
                        return Err(Error::BadSharedUrl(url).to_string());
                    }
                    let bin = bin_dir().map_err(|e| e.to_string())?;
                    Shared { base_url: url, bin, own_cluster: None }
                }
                _ => {
                    let cluster = Cluster::start().map_err(|e| e.to_string())?;
                    Shared {
                        base_url: cluster.url("postgres"),
                        bin: cluster.bin.clone(),
                        own_cluster: Some(cluster),
                    }
                }
            };
            Ok(shared)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Creates a new, empty database on the shared server and returns its URL. Names are unique per
/// process and call, so tests never see each other's tables.
///
/// # Errors
/// A message if no server can be started or reached.
pub fn fresh_database() -> Result<String, String> {
    fresh_database_owned_by(std::process::id())
}

/// [`fresh_database`] for process `owner`: on a cluster shared by a whole run, the database is
/// dropped when `owner` exits, so that a run of hundreds of test processes holds only the
/// databases of the tests still running (each new database is a copy of `template1`, ~8 MB,
/// and the scale tests write hundreds of MB: kept to the end of the run, they filled the disk
/// of a CI machine and stopped the server mid-run).
fn fresh_database_owned_by(owner: u32) -> Result<String, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shared = shared()?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("t_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    create_database(&shared.bin, &shared.base_url, &name).map_err(|e| e.to_string())?;
    if shared.own_cluster.is_none() {
        // A cluster of this process's own goes with it, databases and all.
        spawn_database_watchdog(&shared.bin, &shared.base_url, &name, owner)
            .map_err(|e| e.to_string())?;
    }
    let (base, _) = shared.base_url.rsplit_once('/').ok_or("shared URL without a database")?;
    Ok(format!("{base}/{name}"))
}

/// A detached shell that waits for `owner` to exit, then drops database `name` (`WITH (FORCE)`:
/// a server child the test left running is disconnected).
fn spawn_database_watchdog(bin: &Path, admin_url: &str, name: &str, owner: u32) -> Result<()> {
    const SCRIPT: &str = r#"psql=$1; url=$2; sql=$3
"$psql" -X -q -d "$url" -c "$sql" >/dev/null 2>&1"#;
    let args = [
        bin.join("psql").into_os_string(),
        admin_url.into(),
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").into(),
    ];
    spawn_after_exit_of(owner, "a database's watchdog", SCRIPT, &args)
}

/// Starts a detached shell (`setsid sh`, in a session of its own, so the owner's process group
/// being killed leaves it running) that waits for process `owner` to exit, then runs `script`
/// with `args` as `$1 …`.
fn spawn_after_exit_of(
    owner: u32,
    what: &str,
    script: &str,
    args: &[std::ffi::OsString],
) -> Result<()> {
    let script = format!(
        "owner=$1; shift 1\nwhile kill -0 \"$owner\" 2>/dev/null; do sleep 1; done\n{script}"
    );
    Command::new("setsid")
        .args(["sh", "-c", &script, "inorder-testpg-watchdog"])
        .arg(owner.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!("starting {what} (setsid sh)")))?;
    Ok(())
}

fn create_database(bin: &Path, admin_url: &str, name: &str) -> Result<()> {
    run(Command::new(bin.join("psql")).args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        admin_url,
        "-c",
        &format!("CREATE DATABASE \"{name}\""),
    ]))
}

/// The directory holding `initdb` and `pg_ctl`.
fn bin_dir() -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let pg_ctl = dir.join("pg_ctl");
            if let Ok(real) = std::fs::canonicalize(&pg_ctl)
                && let Some(real_dir) = real.parent()
                && has_server(real_dir)
                && real_dir.join("psql").is_file()
            {
                return Ok(real_dir.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path().join("bin");
            has_server(&dir).then_some((version, dir))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or(Error::BinariesMissing)
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
    })
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free loopback port"))?;
    Ok(listener.local_addr().map_err(io("finding a free loopback port"))?.port())
}

fn run(command: &mut Command) -> Result<()> {
    let name = format!("{:?}", command.get_program());
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command { command: name.clone(), detail: e.to_string() })?;
    if output.status.success() {
        return Ok(());
    }
    let mut detail = format!("{}: ", output.status);
    detail.push_str(&String::from_utf8_lossy(&output.stderr));
    detail.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(Error::Command { command: format!("{command:?}"), detail: tail(&detail, 2000).into() })
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn psql(url: &str, sql: &str) -> String {
        let bin = bin_dir().unwrap();
        let out = Command::new(bin.join("psql"))
            .args(["-X", "-A", "-t", "-d", url, "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn a_cluster_serves_queries_survives_a_stop_and_is_removed_when_dropped() {
        let cluster = Cluster::start().unwrap();
        let url = cluster.create_database("probe").unwrap();
        psql(&url, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)");
        cluster.stop().unwrap();
        cluster.resume().unwrap();
        assert_eq!(psql(&url, "SELECT v FROM t"), "7");
        let root = cluster.root.clone();
        drop(cluster);
        assert!(!root.exists(), "{} is left behind", root.display());
    }

    #[test]
    fn a_database_is_dropped_when_the_process_it_was_made_for_exits() {
        let cluster = Cluster::start().unwrap();
        let admin = cluster.url("postgres");
        let url = cluster.create_database("owned").unwrap();
        let mut owner = Command::new("sleep").arg("60").spawn().unwrap();
        spawn_database_watchdog(&cluster.bin, &admin, "owned", owner.id()).unwrap();
        psql(&url, "CREATE TABLE t (v int)");
        let count = "SELECT count(*) FROM pg_database WHERE datname = 'owned'";
        assert_eq!(psql(&admin, count), "1", "dropped while its owner runs");
        owner.kill().unwrap();
        owner.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while psql(&admin, count) != "0" {
            assert!(
                std::time::Instant::now() < deadline,
                "still there 20 s after its owner exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    #[test]
    fn fresh_databases_are_distinct_and_empty() {
        let a = fresh_database().unwrap();
        let b = fresh_database().unwrap();
        assert_ne!(a, b);
        psql(&a, "CREATE TABLE only_in_a (v int)");
        assert_eq!(psql(&b, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"), "0");
    }
}
