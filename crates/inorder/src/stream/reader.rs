//! The reader task of a stream: reads and decodes the topic from a position on, waiting for new
//! records on the storage's watch of the last position (no polling), and hands batches to the
//! stream through a bounded channel — when the stream stops taking them, reading stops too.

use std::sync::Arc;

use inorder_log::Name;
use tokio::sync::mpsc;

use crate::{
    codec,
    error::{Error, Result},
    event::Event,
    limits::STREAM_READ_RECORDS_MAX,
    storage::Storage,
};

/// A task handle that aborts the task when dropped: a stream incarnation that ends (or
/// unwinds) takes its reader with it.
pub(super) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `topic` from `from` on into `batches` until the receiver is gone or reading fails (the
/// error is sent as the last batch).
pub(super) async fn read_events(
    storage: Arc<dyn Storage>,
    topic: Name,
    from: u64,
    batches: mpsc::Sender<Result<Vec<Event>>>,
) {
    let opened = async {
        Ok::<_, Error>((storage.watch(&topic).await?, storage.reader(&topic, from).await?))
    };
    let (mut last, mut reader) = match opened.await {
        Ok(opened) => opened,
        Err(error) => {
            let _ = batches.send(Err(error)).await;
            return;
        }
    };
    loop {
        let records = match reader.read(STREAM_READ_RECORDS_MAX).await {
            Ok(records) => records,
            Err(error) => {
                let _ = batches.send(Err(error)).await;
                return;
            }
        };
        if records.is_empty() {
            let next = reader.next_position();
            if last.wait_for(|last| *last >= next).await.is_err() {
                return;
            }
            continue;
        }
        let decoded: Result<Vec<Event>> =
            records.iter().map(|record| codec::decode_record(&topic, record)).collect();
        let failed = decoded.is_err();
        if batches.send(decoded).await.is_err() || failed {
            return;
        }
    }
}
