//! `inorder`: the server and its command line.
//!
//! `inorder serve` runs the engine behind the CloudEvents HTTP API; the other commands talk to a
//! running server (`--server`, default the local one), except `demo`, which runs in-process, and
//! `log verify` / `log repair`, which work on a stopped server's data directory.

mod bench;
mod client;
mod cloudevent;
mod commands;
mod config;
mod deliveries;
mod http;
mod limits;
mod log_commands;
mod manage;
mod manage_commands;
mod problem;
mod pull;
mod serve;
mod webhook;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    client::Client,
    commands::{PublishArgs, StatusAnswer},
    config::ServerConfig,
    limits::{DATA_DIR_DEFAULT, DEMO_USERS_DEFAULT, SERVER_URL_DEFAULT},
    manage_commands::{SubscriptionsCommand, TopicsCommand},
};

/// mimalloc: the server's hot paths allocate many small, short-lived buffers across threads
/// (events, JSON, channel messages), the case glibc malloc handles worst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same in its v2 and v3).
const MIMALLOC_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the OS, in milliseconds. Its
/// default (10 ms) gives back request and batch buffers between two bursts of publishes, and
/// takes them back with page faults that zero whole (transparent huge) pages: 15% of the
/// server's time in a profile of batch publishing, and ~10% of its throughput. A second keeps
/// what a steady load reuses and still returns what a burst left. `MIMALLOC_PURGE_DELAY` in the
/// environment wins.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Sets mimalloc's options before anything else runs (see [`ALLOCATOR_PURGE_DELAY_MS`]).
#[allow(unsafe_code)] // the one call into C: mimalloc's documented option setter
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer option; it takes any value of a valid
        // option, and purge_delay is one (see MIMALLOC_OPTION_PURGE_DELAY).
        unsafe {
            libmimalloc_sys::mi_option_set(MIMALLOC_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
    }
}

/// Durable, ordered event processing: a server with a CloudEvents HTTP API, and its CLI.
#[derive(Debug, Parser)]
#[command(name = "inorder", version, propagate_version = true)]
struct Cli {
    /// The server to talk to.
    #[arg(long, global = true, env = "INORDER_SERVER", default_value = SERVER_URL_DEFAULT)]
    server: String,
    /// Bearer token, when the server requires one.
    #[arg(long, global = true, env = "INORDER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (without --config: ./inorder-data on 127.0.0.1:7070, topics created on first publish).
    Serve {
        /// The configuration file (inorder.toml).
        #[arg(long, short, env = "INORDER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Publish an event; without DATA, publish one event per line of stdin (JSON each).
    Publish {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Ordering key (CloudEvents partitionkey).
        #[arg(long)]
        key: Option<String>,
        /// Action (CloudEvents type).
        #[arg(long)]
        action: Option<String>,
        /// Event id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// The event's data, as JSON.
        data: Option<String>,
    },
    /// Print a topic's events as JSON lines (without --topic: every topic, in commit order).
    Tail {
        /// Topic; without it, every topic in commit order (`--from` is then a commit position).
        #[arg(long)]
        topic: Option<String>,
        /// First position (or commit position, without --topic).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Whether TOPIC/POSITION is processed (exit code 0), not yet (2), or parked (3: it will not
    /// be processed unless an operator retries it).
    Status {
        /// TOPIC/POSITION.
        target: String,
        /// Wait up to this long (e.g. 5s) for it to be processed.
        #[arg(long)]
        wait: Option<String>,
        /// Ask about one subscription only.
        #[arg(long)]
        subscription: Option<String>,
    },
    /// List topics; or create or delete one.
    Topics {
        #[command(subcommand)]
        command: Option<TopicsCommand>,
    },
    /// List subscriptions with their progress; or create, update, delete, pause, resume or
    /// rewind one.
    Subscriptions {
        #[command(subcommand)]
        command: Option<SubscriptionsCommand>,
    },
    /// List, retry or discard parked events.
    Parked {
        /// list, retry or discard.
        #[arg(value_parser = ["list", "retry", "discard"])]
        action: String,
        /// The subscription.
        subscription: String,
        /// The parked event (topic:position), for retry and discard.
        id: Option<String>,
    },
    /// Run the purchase-flow demo in-process: actions published out of order, handled in order.
    Demo {
        /// How many users.
        #[arg(long, default_value_t = DEMO_USERS_DEFAULT)]
        users: usize,
    },
    /// Check or repair the topic logs of a stopped server's data directory (offline).
    #[command(subcommand)]
    Log(LogCommand),
    /// Benchmarks.
    Bench {
        /// What to benchmark.
        /// `http` (the server against a bare axum route) or `peers` (against Redis Streams).
        #[arg(value_parser = ["http", "peers"])]
        what: String,
        /// A short run.
        #[arg(long)]
        quick: bool,
        /// `peers`: only the figures whose names start with this (`peers.consume`), to profile
        /// one phase (what they need runs all the same, unreported).
        #[arg(long)]
        only: Option<String>,
    },
}

/// `inorder log …`: offline tools for the file logs. They take each log's lock, so they refuse to
/// run beside a server that has it open.
#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Scan every segment of every topic (or one) and report what was found: exit code 0 when
    /// nothing is damaged (a torn tail is not damage: the next open cuts it), 2 when something
    /// is, 1 when a log could not be checked (e.g. the server is running).
    Verify {
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// The server's data directory.
        #[arg(long, env = "INORDER_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
        data_dir: PathBuf,
    },
    /// Show how a topic's damaged log would be repaired (exit code 2 if it is damaged); with
    /// --yes, repair it: the log is cut at the start of the damaged batch, and everything from
    /// there on (the damage and every later record) moves into quarantine files next to the
    /// segments (<segment>.at-<offset>.quarantine), never deleted. The log then opens, its
    /// positions contiguous; the next event gets the first quarantined position.
    Repair {
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The server's data directory.
        #[arg(long, env = "INORDER_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
        data_dir: PathBuf,
        /// Carry the repair out (without it, nothing is changed).
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    // Every HTTP client of the process (webhooks, the CLI, benches) speaks TLS through rustls
    // with ring; reqwest builds no client before a provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Serve { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Log(command) = &cli.command {
        // Offline file work: no runtime.
        let done = match command {
            LogCommand::Verify { topic, data_dir } => {
                log_commands::verify(data_dir, topic.as_deref())
            }
            LogCommand::Repair { topic, data_dir, yes } => {
                log_commands::repair(data_dir, topic, *yes)
            }
        };
        return done.unwrap_or_else(|error| {
            eprintln!("inorder: {error:#}");
            std::process::ExitCode::FAILURE
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("inorder: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("inorder: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let client = Client::new(&cli.server, cli.token.clone());
    match cli.command {
        Command::Serve { config } => {
            let config = match config {
                Some(path) => ServerConfig::load(&path)?,
                None => ServerConfig::embedded_default()?,
            };
            serve::run(config).await?;
        }
        Command::Publish { topic, key, action, id, data } => {
            commands::publish(&client, PublishArgs { topic, key, action, id, data }).await?;
        }
        Command::Tail { topic, from, follow, limit } => {
            commands::tail(&client, topic.as_deref(), from, follow, limit).await?;
        }
        Command::Status { target, wait, subscription } => {
            let answer =
                commands::status(&client, &target, wait.as_deref(), subscription.as_deref())
                    .await?;
            match answer {
                StatusAnswer::Processed => {}
                StatusAnswer::NotYet => return Ok(std::process::ExitCode::from(2)),
                StatusAnswer::Parked => return Ok(std::process::ExitCode::from(3)),
            }
        }
        Command::Topics { command: None } => commands::topics(&client).await?,
        Command::Topics { command: Some(command) } => {
            manage_commands::topics(&client, command).await?;
        }
        Command::Subscriptions { command: None } => commands::subscriptions(&client).await?,
        Command::Subscriptions { command: Some(command) } => {
            manage_commands::subscriptions(&client, command).await?;
        }
        Command::Parked { action, subscription, id } => {
            commands::parked(&client, &subscription, &action, id.as_deref()).await?;
        }
        Command::Demo { users } => commands::demo(users).await?,
        Command::Bench { what, quick, only } => match what.as_str() {
            "peers" => bench::peers::peers(quick, only.as_deref()).await?,
            _ => bench::http::http(quick).await?,
        },
        Command::Log(_) => unreachable!("log commands run before the runtime starts"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}
