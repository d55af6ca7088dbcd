//! Tailing readers: read to the end, then wait — without polling — for the next commit.
//!
//! A [`TailReader`] waits on a `tokio::sync::watch` of the committed position, which the
//! writer bumps after every durable group. The watch needs no runtime: the future can be awaited
//! from tokio, any other executor, or blocked on. While waiting the reader holds no buffer and no
//! file handle (an idle tail costs a few bytes).

use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    reader::{ReadLimits, Reader, Record},
};

/// A reader whose reads wait for new records instead of returning empty.
#[derive(Debug)]
pub struct TailReader {
    reader: Reader,
    committed: watch::Receiver<u64>,
}

impl TailReader {
    pub(crate) fn new(reader: Reader, committed: watch::Receiver<u64>) -> Self {
        Self { reader, committed }
    }

    /// The position the next read starts at.
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.reader.next_position()
    }

    /// Moves the reader to `position`.
    pub fn seek(&mut self, position: u64) {
        self.reader.seek(position);
    }

    /// The next records (at least one), waiting until there are some.
    ///
    /// # Errors
    /// [`Error::Closed`] when the log closes while waiting; read errors as [`Reader::read`].
    pub async fn next(&mut self, limits: ReadLimits) -> Result<Vec<Record>> {
        loop {
            let records = self.reader.read(limits)?;
            if !records.is_empty() {
                return Ok(records);
            }
            self.reader.release();
            let want = self.reader.next_position();
            let shared = self.reader.shared();
            let state = self
                .committed
                .wait_for(|committed| *committed >= want || shared.is_closed())
                .await
                .map_err(|_| Error::Closed)?;
            if *state < want {
                return Err(Error::Closed);
            }
        }
    }
}
