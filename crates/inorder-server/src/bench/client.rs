//! Where `bench http`'s client runs: capped at one thread, so on a 2-core machine it never takes
//! more than one core from the in-process servers it measures. (`bench peers` leaves its client
//! on the runtime's workers: its servers are other processes, and a one-thread HTTP client there
//! measured the client — inorder's single publish fell from ~35k to ~27k/s — not the server.)

/// Runs `work` on a current-thread runtime of a new OS thread: the client, capped at one thread.
pub(crate) async fn on_client_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("bench-client".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let outcome = runtime.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(work));
        let _ = done.send(outcome);
    })?;
    result.await?
}
