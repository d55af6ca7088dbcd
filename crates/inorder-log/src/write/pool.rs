//! The process-wide pool: a fixed set of threads that runs the stages of every open log's write
//! path, so the number of OS threads does not grow with the number of open logs.
//!
//! Started on the first [`Log::open`](crate::Log::open) of the process and kept for its life:
//!
//! - writer threads — one per CPU within [`WRITER_THREADS_MIN`]`..=`[`WRITER_THREADS_MAX`] —
//!   run the write stages of `group` and `never` logs (group, assign positions, `pwrite`, roll,
//!   purge, hibernate) and fire idle timers; they wait for the disk only when a segment rolls;
//! - [`SYNCER_THREADS`] syncer threads run sync stages (`fdatasync`, publish), answer stages
//!   (wake the appenders) and the write stages of `always` logs (which fsync every append).
//!
//! Each stage of a log with work is in one ready queue at most once and runs on one thread at a
//! time ([`super::turn`]); a thread serves one stage's turn, then the next stage with work. So idle
//! logs cost no thread, and a hot log gets a writer thread, a syncer thread and an answering
//! thread at once, as when each log had its own threads. A panic in a stage (a bug) latches that
//! log only; the thread goes on serving the others.

use std::{
    io,
    num::NonZeroUsize,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use parking_lot::Mutex;

use crate::{
    limits::{POOL_THREAD_STACK_BYTES, SYNCER_THREADS, WRITER_THREADS_MAX, WRITER_THREADS_MIN},
    write::{
        pipeline::{Pipeline, Queues},
        ready::{Job, ReadyQueue},
    },
};

/// The queues of the running pool; `None` until the first open.
static POOL: Mutex<Option<Arc<Queues>>> = Mutex::new(None);

/// The queues of the process-wide pool, starting its threads on first use.
///
/// # Errors
/// The operating system refused a thread (the next open tries again).
pub(crate) fn queues() -> io::Result<Arc<Queues>> {
    let mut pool = POOL.lock();
    if let Some(queues) = pool.as_ref() {
        return Ok(Arc::clone(queues));
    }
    let queues = Arc::new(Queues::new());
    if let Err(error) = start(&queues) {
        // Threads already started return from their loops.
        queues.writers.stop();
        queues.syncers.stop();
        return Err(error);
    }
    *pool = Some(Arc::clone(&queues));
    Ok(queues)
}

/// Writer threads of the pool: one per CPU, within the limits.
pub(crate) fn writer_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(WRITER_THREADS_MIN, NonZeroUsize::get)
        .clamp(WRITER_THREADS_MIN, WRITER_THREADS_MAX)
}

fn start(queues: &Arc<Queues>) -> io::Result<()> {
    for index in 0..writer_threads() {
        let queues = Arc::clone(queues);
        spawn(format!("inorder-log-write-{index}"), move || serve(&queues.writers))?;
    }
    for index in 0..SYNCER_THREADS {
        let queues = Arc::clone(queues);
        spawn(format!("inorder-log-sync-{index}"), move || serve(&queues.syncers))?;
    }
    tracing::debug!(writers = writer_threads(), syncers = SYNCER_THREADS, "log pool started");
    Ok(())
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new().name(name).stack_size(POOL_THREAD_STACK_BYTES).spawn(body)?;
    Ok(())
}

/// A pool thread: serves the stages and timers of one ready queue until the pool stops.
fn serve(queue: &ReadyQueue<Pipeline>) {
    let mut job = queue.next();
    loop {
        job = match job {
            Job::Stop => return,
            Job::Due(target) => {
                if let Some(pipeline) = target.upgrade() {
                    pipeline.idle_timer_due();
                }
                queue.next()
            }
            Job::Run(pipeline, stage) => {
                pipeline.start(stage);
                let more =
                    catch_unwind(AssertUnwindSafe(|| pipeline.run(stage))).unwrap_or_else(|_| {
                        pipeline.stage_panicked(stage);
                        true // serve what is queued: the latch refuses it
                    });
                let again = pipeline.finish(stage, more);
                match (pipeline.follow_up(stage), again) {
                    (Some(next), again) => {
                        if again {
                            queue.push(Arc::clone(&pipeline), stage);
                        }
                        Job::Run(pipeline, next)
                    }
                    (None, true) => {
                        let (pipeline, stage) = queue.yield_to_next(pipeline, stage);
                        Job::Run(pipeline, stage)
                    }
                    (None, false) => queue.next(),
                }
            }
        }
    }
}
