//! The bytes on disk, and nothing else: record frames, segment file headers and names, sparse index
//! files, and the checksums that guard them. No state lives here; FORMAT.md next to the crate
//! documents every offset, and these modules are its only implementation.

pub(crate) mod checksum;
pub(crate) mod index;
pub mod record;
pub(crate) mod segment;
