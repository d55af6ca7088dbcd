//! Recovery: what the log decides about the bytes a crash (or a bad disk) left behind — a pure
//! decision table, and the report of what opening a log did.
//!
//! Every record met while scanning a segment ([`crate::scan`]) is reduced to five observed facts,
//! and one table maps the facts to one decision. The table is the whole policy:
//!
//! | last segment | header complete | length fits | checksum ok | position expected | decision |
//! |---|---|---|---|---|---|
//! | any | yes | yes | yes | yes | **keep** |
//! | any | yes | yes | yes | no  | **fail**: position out of sequence |
//! | yes | no  | –   | –   | –   | **cut** torn tail |
//! | yes | yes | no  | –   | –   | **cut** torn tail |
//! | yes | yes | yes | no  | –   | **cut** torn tail |
//! | no  | no  | –   | –   | –   | **fail**: truncated |
//! | no  | yes | no  | –   | –   | **fail**: bad length |
//! | no  | yes | yes | no  | –   | **fail**: checksum mismatch |
//!
//! Why: only the last segment is ever written to, so only its end can hold a write the crash
//! interrupted (sealed segments were fsynced before the writer moved on). A record with a valid
//! checksum but the wrong position cannot come from a torn write, so it fails everywhere.
//! A cut truncates the file at the first bad record, fsyncs the truncation, and is reported
//! ([`RecoveryReport::truncation`]); a failure names file and offset and opens nothing.

use std::path::PathBuf;

use crate::error::CorruptReason;

/// What opening a log found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found (or created).
    pub segments: usize,
    /// The first position still in the log.
    pub first_position: u64,
    /// The position the next append will get.
    pub next_position: u64,
    /// The torn tail cut from the last segment, if any.
    pub truncation: Option<Truncation>,
    /// Leftover temporary files (from a crash mid-rename) that were removed.
    pub temp_files_removed: usize,
}

/// A torn tail cut from the last segment on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file that was truncated.
    pub segment: PathBuf,
    /// Byte offset of the first bad record; the file now ends here.
    pub offset: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// The position the bad record would have had.
    pub position: u64,
    /// What was wrong with the bad record.
    pub reason: TornReason,
}

/// Why the tail of the last segment was judged torn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornReason {
    /// The file ends inside a record header.
    IncompleteHeader,
    /// The length field runs past the end of the file or the format's limit.
    LengthOutOfBounds,
    /// The record's checksum does not match.
    ChecksumMismatch,
}

/// The facts observed about one record. A fact whose precondition failed is `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub last_segment: bool,
    pub header_complete: bool,
    pub length_fits: bool,
    pub checksum_ok: bool,
    pub position_expected: bool,
}

/// The one outcome for a set of facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Keep,
    Cut(TornReason),
    Fail(CorruptReason),
}

/// A row of the table: `None` matches either value.
type Pattern = [Option<bool>; 5];

const Y: Option<bool> = Some(true);
const N: Option<bool> = Some(false);
const ANY: Option<bool> = None;

/// The decision table (see the module documentation).
const RULES: [(Pattern, Decision); 8] = [
    ([ANY, Y, Y, Y, Y], Decision::Keep),
    ([ANY, Y, Y, Y, N], Decision::Fail(CorruptReason::PositionOutOfSequence)),
    ([Y, N, ANY, ANY, ANY], Decision::Cut(TornReason::IncompleteHeader)),
    ([Y, Y, N, ANY, ANY], Decision::Cut(TornReason::LengthOutOfBounds)),
    ([Y, Y, Y, N, ANY], Decision::Cut(TornReason::ChecksumMismatch)),
    ([N, N, ANY, ANY, ANY], Decision::Fail(CorruptReason::Truncated)),
    ([N, Y, N, ANY, ANY], Decision::Fail(CorruptReason::BadLength)),
    ([N, Y, Y, N, ANY], Decision::Fail(CorruptReason::ChecksumMismatch)),
];

impl Facts {
    fn values(self) -> [bool; 5] {
        [
            self.last_segment,
            self.header_complete,
            self.length_fits,
            self.checksum_ok,
            self.position_expected,
        ]
    }

    fn matches(self, pattern: &Pattern) -> bool {
        self.values().iter().zip(pattern).all(|(value, want)| want.is_none_or(|w| w == *value))
    }
}

/// The decision for `facts`: the first (and, as a test proves, only) matching row.
pub(crate) fn decide(facts: Facts) -> Decision {
    RULES
        .iter()
        .find(|(pattern, _)| facts.matches(pattern))
        .map(|(_, decision)| *decision)
        .expect("the recovery table covers every combination of facts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_facts() -> impl Iterator<Item = Facts> {
        (0..32u8).map(|bits| Facts {
            last_segment: bits & 1 != 0,
            header_complete: bits & 2 != 0,
            length_fits: bits & 4 != 0,
            checksum_ok: bits & 8 != 0,
            position_expected: bits & 16 != 0,
        })
    }

    #[test]
    fn every_combination_of_facts_matches_exactly_one_rule() {
        for facts in all_facts() {
            let matching = RULES.iter().filter(|(pattern, _)| facts.matches(pattern)).count();
            assert_eq!(matching, 1, "{facts:?} matches {matching} rules");
        }
    }

    #[test]
    fn only_the_last_segment_is_ever_cut() {
        for facts in all_facts() {
            match decide(facts) {
                Decision::Cut(_) => assert!(facts.last_segment, "{facts:?}"),
                Decision::Keep => assert!(facts.checksum_ok && facts.position_expected),
                Decision::Fail(_) => {}
            }
        }
    }

    #[test]
    fn a_sound_record_is_kept_in_any_segment() {
        for last_segment in [false, true] {
            let facts = Facts {
                last_segment,
                header_complete: true,
                length_fits: true,
                checksum_ok: true,
                position_expected: true,
            };
            assert_eq!(decide(facts), Decision::Keep);
        }
    }
}
