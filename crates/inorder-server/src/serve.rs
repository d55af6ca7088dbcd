//! `inorder serve`: the engine behind the HTTP API, with a graceful stop.
//!
//! On SIGTERM (or Ctrl-C) the server stops accepting connections, lets requests in flight finish
//! (long-polls return at once), then stops the engine — every publish answered `201` was durable
//! before its answer — and exits 0.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::serve::ListenerExt;
use inorder::Engine;
use inorder_postgres::{PgStorage, PgStorageOptions};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{Semaphore, watch};

use crate::{
    config::{ServerConfig, StorageChoice},
    deliveries::{self, Deliveries},
    http::{AppState, router},
    manage::Manager,
};

/// A running server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Resolves when the server stopped (after `shutdown` resolved and everything drained).
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Installs the Prometheus recorder once per process.
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).clone()
}

/// Registers the engine's health gauge before the engine starts, so `/metrics` shows
/// `inorder_streams_failed 0` from the first scrape (the engine touches it only when a stream
/// fails, and an alert on a series that does not exist never fires). Adding zero cannot undo a
/// stream the engine already counted.
fn register_health_metrics() {
    metrics::describe_gauge!(
        "inorder_streams_failed",
        "Streams (subscription x topic) that failed and handle nothing until repaired"
    );
    metrics::describe_counter!(
        "inorder_stream_restarts_total",
        "Restarts of a stream after a transient failure"
    );
    metrics::gauge!("inorder_streams_failed").increment(0.0);
}

/// Starts the engine and the HTTP server; it runs until `shutdown` resolves.
///
/// # Errors
/// A configuration the engine refuses, or an address that cannot be bound.
pub async fn start(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Server> {
    let metrics = metrics_handle();
    register_health_metrics();
    let mut builder = Engine::builder(config.engine.clone());
    let deliveries = Arc::new(Deliveries::default());
    for (name, subscription) in &config.subscriptions {
        let keys_in_flight = config
            .engine
            .subscriptions
            .iter()
            .find(|engine| engine.name == *name)
            .map_or(1, |engine| engine.max_keys_in_flight);
        let built = deliveries::build(name, subscription, keys_in_flight).await?;
        builder = builder.shared_handler(name, Arc::clone(&built.handler));
        deliveries.insert(name, &built);
    }
    if let StorageChoice::Postgres { url, pool_size } = &config.storage {
        let storage = PgStorage::connect(url, PgStorageOptions { pool_size: *pool_size })
            .await
            .context("opening the postgres storage")?;
        builder = builder.storage(Arc::new(storage));
    }
    let engine = builder.start().await.context("starting the engine")?;
    let manager = Arc::new(Manager::new(engine.clone(), Arc::clone(&deliveries), &config));
    manager.restore().await;
    // Every node of a cluster runs what is stored, whichever node took the change.
    let syncer = config.engine.cluster.is_some().then(|| manager.spawn_sync());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Answers go out as soon as they are written: a streamed acknowledgement (or any small
    // write after another) must not wait for the client's delayed ACK (Nagle's algorithm).
    let listener = listener.tap_io(|connection| {
        if let Err(error) = connection.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
        }
    });
    let (stop, stopping) = watch::channel(false);
    let state = Arc::new(AppState {
        engine: engine.clone(),
        deliveries,
        manager,
        publish_permits: Arc::new(Semaphore::new(config.publish_in_flight)),
        tokens: config.tokens.clone(),
        metrics,
        stopping,
    });
    let app = router(state, config.body_limit_bytes);
    let task = tokio::spawn(async move {
        let graceful = async move {
            shutdown.await;
            tracing::info!("stopping: finishing requests in flight");
            stop.send_replace(true);
        };
        let served = axum::serve(listener, app).with_graceful_shutdown(graceful).await;
        if let Some(syncer) = syncer {
            syncer.abort();
        }
        served.context("serving HTTP")?;
        engine.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Server { addr, task })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `inorder serve`: runs until SIGTERM.
///
/// # Errors
/// As [`start`], and HTTP serving errors.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let data_dir = config.engine.data_dir.clone();
    let server = start(config, signal()).await?;
    // One machine-readable line on stdout (scripts and tests wait for it).
    println!("inorder listening on http://{} (data in {})", server.addr, data_dir.display());
    server.task.await.context("server task")?
}
