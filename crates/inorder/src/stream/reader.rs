//! The reader task of a stream: reads and decodes the topic from a position on, waiting for new
//! records on the storage's watch of the last position (no polling), and hands batches to the
//! stream through a bounded channel — when the stream stops taking them, reading stops too.

use std::{ops::RangeInclusive, sync::Arc};

use inorder_log::Name;
use tokio::sync::mpsc;

use crate::{
    codec,
    error::{Error, Result},
    event::Event,
    limits::STREAM_READ_RECORDS_MAX,
    storage::Storage,
};

/// One position as read.
#[allow(clippy::large_enum_variant)] // transient; an event is the common case
pub(super) enum Read {
    /// The event stored there.
    Event(Box<Event>),
    /// A position whose event the log lost (filled so it is never handed out again).
    Lost(u64),
    /// Positions the topic's retention deleted before the stream read them: skipped, never
    /// handed to the handler (see `Progress::skip_purged`).
    Purged(RangeInclusive<u64>),
}

impl Read {
    /// The first position it covers.
    pub(super) fn position(&self) -> u64 {
        match self {
            Self::Event(event) => event.position,
            Self::Lost(position) => *position,
            Self::Purged(range) => *range.start(),
        }
    }
}

/// Reads handed to the stream in one go.
pub(super) struct Batch {
    pub reads: Vec<Read>,
    /// The highest commit read so far: every event of the topic with a commit up to it is in
    /// this batch or an earlier one (commits grow with positions within a topic).
    pub through: u64,
}

/// The reader task's handle: aborts the task when dropped, so a stream incarnation that ends
/// (or unwinds) takes its reader with it.
pub(super) struct ReaderTask(tokio::task::JoinHandle<()>);

impl ReaderTask {
    /// Starts [`read_events`] on a task of its own.
    pub(super) fn spawn(
        storage: Arc<dyn Storage>,
        topic: Name,
        from: u64,
        batches: mpsc::Sender<Result<Batch>>,
    ) -> Self {
        Self(tokio::spawn(read_events(storage, topic, from, batches)))
    }

    /// The reader stopped sending without an error: it panicked (the panic goes on, into this
    /// task, so the supervisor counts it as one) or it ended, which it must not.
    pub(super) async fn ended(&mut self) -> Error {
        match (&mut self.0).await {
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            _ => Error::Internal { what: "the stream's reader ended without an error".into() },
        }
    }
}

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `topic` from `from` on into `batches` until the receiver is gone or reading fails (the
/// error is sent as the last batch).
async fn read_events(
    storage: Arc<dyn Storage>,
    topic: Name,
    from: u64,
    batches: mpsc::Sender<Result<Batch>>,
) {
    let opened = async {
        Ok::<_, Error>((storage.watch(&topic).await?, storage.reader(&topic, from).await?))
    };
    let mut through = 0;
    let (mut last, mut reader) = match opened.await {
        Ok(opened) => opened,
        Err(error) => {
            let _ = batches.send(Err(error)).await;
            return;
        }
    };
    loop {
        // Nothing new to read: wait for the next append instead of asking the log (a read
        // is a hop to a blocking thread and back).
        let next = reader.next_position();
        if *last.borrow_and_update() < next {
            if last.wait_for(|last| *last >= next).await.is_err() {
                return;
            }
            continue;
        }
        let records = match reader.read(STREAM_READ_RECORDS_MAX).await {
            Ok(records) => records,
            // Retention deleted what this stream had yet to read: skip to the first event left.
            Err(Error::Purged { first_available, .. })
                if first_available > reader.next_position() =>
            {
                let skipped = reader.next_position()..=first_available - 1;
                match storage.reader(&topic, first_available).await {
                    Ok(fresh) => reader = fresh,
                    Err(error) => {
                        let _ = batches.send(Err(error)).await;
                        return;
                    }
                }
                let batch = Batch { reads: vec![Read::Purged(skipped)], through };
                if batches.send(Ok(batch)).await.is_err() {
                    return;
                }
                continue;
            }
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
        let decoded: Result<Vec<Read>> = records
            .iter()
            .map(|record| {
                if codec::is_lost(&record.payload) {
                    Ok(Read::Lost(record.position))
                } else {
                    codec::decode_record(&topic, record).map(|event| Read::Event(Box::new(event)))
                }
            })
            .collect();
        if let Ok(reads) = &decoded {
            for read in reads {
                if let Read::Event(event) = read {
                    through = through.max(event.commit);
                }
            }
        }
        let failed = decoded.is_err();
        let batch = decoded.map(|reads| Batch { reads, through });
        if batches.send(batch).await.is_err() || failed {
            return;
        }
    }
}
