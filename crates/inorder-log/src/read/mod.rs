//! The read path: records straight from the segment files, never past the committed position.
//!
//! - [`reader`]: seek by the sparse index, read chunks, check every record again.
//! - [`verify`]: the full scan of every segment.

pub(crate) mod reader;
pub(crate) mod verify;
