//! Replaying a subscription from the first event: how a projector rebuilds its read model.
//!
//! Order matters for crash safety. The progress of every stream of the subscription is reset
//! *durably first*, then the handler clears what it built ([`Handler::on_replay`]), then the
//! streams start (from position 1). A crash after the reset but before the handler cleared
//! anything replays onto the old read model — handlers are at-least-once anyway; a crash after
//! the clear restarts from the reset progress, never from an old checkpoint over an empty read
//! model. Parked events of the subscription stay parked (an operator decides about them).
//!
//! [`Handler::on_replay`]: crate::Handler::on_replay

use std::{collections::BTreeMap, sync::Arc};

use inorder_log::Name;

use crate::{
    error::{Error, Result},
    runtime::SubscriptionRuntime,
    state::{StreamId, StreamState},
    storage::{StateOp, Storage},
};

/// Resets the progress of each subscription in `names`, then calls its handler's `on_replay`.
pub(crate) async fn reset(
    storage: &dyn Storage,
    subscriptions: &BTreeMap<Name, Arc<SubscriptionRuntime>>,
    names: &[String],
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let topics = storage.topics().await?;
    for name in names {
        let subscription =
            subscriptions.iter().find(|(n, _)| n.as_str() == name).map(|(_, s)| s).ok_or_else(
                || Error::config(format!("cannot replay unknown subscription {name}")),
            )?;
        let ops: Vec<StateOp> = topics
            .iter()
            .filter(|topic| subscription.consumes(topic))
            .map(|topic| StateOp::Stream {
                stream: StreamId::new(subscription.name.clone(), topic.clone()),
                state: StreamState::default(),
            })
            .collect();
        tracing::info!(subscription = %name, streams = ops.len(), "replaying from the first event");
        if !ops.is_empty() {
            storage.commit(ops, true).await?;
        }
        subscription.handler.on_replay().await.map_err(|e| Error::Replay {
            subscription: name.clone(),
            reason: e.message().to_owned(),
        })?;
    }
    Ok(())
}
