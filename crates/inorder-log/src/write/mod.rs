//! The write path: everything that changes the files of an open log. Once a log is open (opening
//! may cut a torn tail, [`crate::open`]), only code under here writes segment files, assigns
//! positions and publishes the committed position.
//!
//! - [`writer`]: groups appends, assigns their positions, writes them, rolls and purges segments,
//!   hibernates an idle log.
//! - [`group_commit`]: the sync stage's work: one fsync shared by a batch, publish, answer.
//! - [`pipeline`]: one log's command queue and its write, sync and answer stages, and how they
//!   hand work to each other.
//! - [`turn`], [`ready`]: scheduling a stage on the pool — at most once queued, on one thread at
//!   a time — and the ready queues with the idle timers.
//! - [`pool`]: the process-wide writer and syncer threads shared by every open log.

pub(crate) mod group_commit;
pub(crate) mod pipeline;
pub(crate) mod pool;
pub(crate) mod ready;
pub(crate) mod turn;
pub(crate) mod writer;
