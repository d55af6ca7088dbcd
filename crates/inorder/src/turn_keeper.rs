//! The turn keeper: one task per subscription that keeps [commit-order turns](crate::key_turns),
//! raising the marks of topics with nothing new to read while a turn waits for them.
//!
//! A round: take the topics whose marks hold back the lowest waiting turn, ask the storage for
//! the visible commit and (seen after it) their last positions in one call
//! ([`Storage::commit_marks`]), and raise the marks of those their streams have read past. Then
//! wait for a reason to look again: a new visible commit, a turn that started waiting, a stream
//! that read. Nothing waits → the keeper sleeps; it costs one storage call per round, however
//! many topics the subscription has.
//!
//! Metrics: `inorder_turns_waiting` (turns waiting for the marks, as the keeper last saw them;
//! 0 when none waits), `inorder_turn_keeper_rounds_total`, `inorder_turn_keeper_errors_total`.
//!
//! A storage error is retried after a capped backoff (logged and counted), never the end of the
//! task: a keeper that stopped would hold the subscription's waiting turns forever. The engine
//! aborts it at shutdown.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    key_turns::KeyTurns,
    limits::{TURN_KEEPER_RETRY_INITIAL, TURN_KEEPER_RETRY_MAX},
    storage::Storage,
};

/// Starts the keeper of `turns` (subscription `subscription`) on a task of its own.
pub(crate) fn spawn(
    subscription: String,
    turns: Arc<KeyTurns>,
    storage: Arc<dyn Storage>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(keep(subscription, turns, storage))
}

async fn keep(subscription: String, turns: Arc<KeyTurns>, storage: Arc<dyn Storage>) {
    let mut delay = TURN_KEEPER_RETRY_INITIAL;
    let mut commits: Option<watch::Receiver<u64>> = None;
    let waiting = metrics::gauge!("inorder_turns_waiting", "subscription" => subscription.clone());
    let rounds = metrics::counter!("inorder_turn_keeper_rounds_total", "subscription" => subscription.clone());
    loop {
        let lagging = turns.lagging();
        #[allow(clippy::cast_precision_loss)] // a gauge; bounded by the streams' read budgets
        waiting.set(turns.waiting() as f64);
        let Some((wanted, lagging)) = lagging else {
            turns.keeper_woken().await;
            continue;
        };
        rounds.increment(1);
        let round = async {
            if commits.is_none() {
                commits = Some(storage.watch_commit().await?);
            }
            if let Some(commits) = commits.as_mut() {
                commits.borrow_and_update();
            }
            storage.commit_marks(&lagging).await
        };
        match round.await {
            Ok((visible, lasts)) => {
                delay = TURN_KEEPER_RETRY_INITIAL;
                turns.caught_up(&lagging, visible, &lasts);
            }
            Err(error) => {
                tracing::warn!(subscription, %error, ?delay, "the turn keeper could not read the commit marks; retrying");
                metrics::counter!("inorder_turn_keeper_errors_total", "subscription" => subscription.clone())
                    .increment(1);
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(TURN_KEEPER_RETRY_MAX);
                continue;
            }
        }
        // The round released turns: the next waiting one (or other topics) may be ready with
        // the same visible commit — look again at once.
        if turns.lagging() != Some((wanted, lagging)) {
            continue;
        }
        // Still waiting: look again when a commit becomes visible or the turns change.
        let closed = match commits.as_mut() {
            Some(commits) => tokio::select! {
                changed = commits.changed() => changed.is_err(),
                () = turns.keeper_woken() => false,
            },
            None => {
                turns.keeper_woken().await;
                false
            }
        };
        if closed {
            // The storage's commit watch closed: subscribe again after a pause.
            commits = None;
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(TURN_KEEPER_RETRY_MAX);
        }
    }
}
