//! The write path: everything that changes the files of an open log. Once a log is open (opening
//! may cut a torn tail, [`crate::open`]), only code under here writes segment files, assigns
//! positions and publishes the committed position.
//!
//! - [`writer`]: groups appends, assigns their positions, writes them, rolls and purges segments,
//!   hibernates an idle log.
//! - [`group_commit`]: the fsync stage under `fsync = group`, shared and pipelined.

pub(crate) mod group_commit;
pub(crate) mod writer;
