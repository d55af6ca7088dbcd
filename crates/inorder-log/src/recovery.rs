//! Recovery: what the log decides about the bytes a crash (or a bad disk) left behind — a pure
//! decision table, and the report of what opening a log did.
//!
//! A scan of a segment ([`crate::scan`]) stops at every record and at the end of the segment's
//! bytes, reduces what it sees there to eight observed facts, and one table maps the facts to one
//! decision. The table is the whole policy (`–`: any value; a fact whose precondition failed is
//! `no`):
//!
//! | last segment | at end | header complete | length fits | checksum ok | position expected | sound record follows | batch open | decision |
//! |---|---|---|---|---|---|---|---|---|
//! | – | no | yes | yes | yes | yes | – | – | **keep** the record |
//! | – | no | yes | yes | yes | no  | – | – | **fail**: position out of sequence |
//! | – | no | no  | –   | –   | –   | yes | – | **fail**: truncated (corruption, sound records after it) |
//! | – | no | yes | no  | –   | –   | yes | – | **fail**: bad length (corruption, sound records after it) |
//! | – | no | yes | yes | no  | –   | yes | – | **fail**: checksum mismatch (corruption, sound records after it) |
//! | yes | no | no  | –   | –   | –   | no | – | **cut** torn tail (from the open batch's start) |
//! | yes | no | yes | no  | –   | –   | no | – | **cut** torn tail (from the open batch's start) |
//! | yes | no | yes | yes | no  | –   | no | – | **cut** torn tail (from the open batch's start) |
//! | no  | no | no  | –   | –   | –   | no | – | **fail**: truncated (damage in a sealed segment) |
//! | no  | no | yes | no  | –   | –   | no | – | **fail**: bad length (damage in a sealed segment) |
//! | no  | no | yes | yes | no  | –   | no | – | **fail**: checksum mismatch (damage in a sealed segment) |
//! | – | yes | – | – | – | – | – | no  | **end**: the segment ends after a complete batch |
//! | yes | yes | – | – | – | – | – | yes | **cut** the incomplete batch (torn tail) |
//! | no  | yes | – | – | – | – | – | yes | **fail**: incomplete batch in a sealed segment |
//!
//! Why: only the last segment is ever written to, so only its end can hold a write the crash
//! interrupted (sealed segments were fsynced before the writer moved on, and a batch never spans
//! two segments). A torn write leaves bad bytes with nothing sound after them: a *torn tail*,
//! cut from the start of the batch it interrupted, because a batch is all or nothing. Bad bytes
//! with a sound record after them are not a torn tail — a write that reached later bytes reached
//! these — so they are corruption, refused, and never cut without an operator's word (`inorder
//! log repair`). A record with a valid checksum but the wrong position cannot come from a torn
//! write either. A cut truncates the file, fsyncs the truncation, and is reported
//! ([`RecoveryReport::truncation`]); a failure names file and offset and opens nothing.
//!
//! What the table cannot do: tell bit rot in the last batch of the last segment — nothing after it —
//! from a torn write. That batch is cut and reported, not refused.

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
    /// Byte offset where the cut starts (the start of the interrupted batch); the file now ends
    /// here.
    pub offset: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// The first position cut: the first record of the interrupted batch, or the position the
    /// first bad record would have had. The next append gets it.
    pub position: u64,
    /// Sound records cut because their batch was incomplete (never acknowledged: an append is
    /// answered only after its whole batch is durable).
    pub records_removed: u64,
    /// What was wrong at the end of the cut segment.
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
    /// The file ends after records whose batch continues: the batch's last record never made it.
    IncompleteBatch,
    /// Damage with sound records after it, in the last segment of a log under
    /// [`FsyncPolicy::Never`](crate::FsyncPolicy::Never): none of that segment was ever promised
    /// to survive a power loss, which may persist its pages out of order, so the damage is cut
    /// from the start of its batch, with everything after it, instead of refusing the log.
    UnsyncedDamage(CorruptReason),
}

/// The facts observed where a scan stops: at a record, or at the end of the segment's bytes. A
/// fact whose precondition failed is `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The segment is the log's last one (the only one ever written to).
    pub last_segment: bool,
    /// The segment's bytes end here: no record to look at.
    pub at_end: bool,
    pub header_complete: bool,
    /// The length word is valid for the segment's format and the record ends within the file.
    pub length_fits: bool,
    pub checksum_ok: bool,
    pub position_expected: bool,
    /// Looked for only after bad bytes: a sound record (checksum ok, position at or after the
    /// expected one) starts somewhere after them in this segment.
    pub sound_record_follows: bool,
    /// The last kept record said its batch continues.
    pub batch_open: bool,
}

/// The one outcome for a set of facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A sound record: keep it and go on.
    Keep,
    /// The segment ends after a complete batch.
    End,
    /// A torn tail: cut from the start of the open batch (or here, if none is open).
    Cut(TornReason),
    /// Damage that is not a torn tail: refuse, naming file and offset.
    Fail(CorruptReason),
}

/// A row of the table: `None` matches either value.
type Pattern = [Option<bool>; 8];

const Y: Option<bool> = Some(true);
const N: Option<bool> = Some(false);
const ANY: Option<bool> = None;

/// The decision table (see the module documentation), in its column order: last segment, at end,
/// header complete, length fits, checksum ok, position expected, sound record follows, batch open.
const RULES: [(Pattern, Decision); 14] = [
    ([ANY, N, Y, Y, Y, Y, ANY, ANY], Decision::Keep),
    ([ANY, N, Y, Y, Y, N, ANY, ANY], Decision::Fail(CorruptReason::PositionOutOfSequence)),
    ([ANY, N, N, ANY, ANY, ANY, Y, ANY], Decision::Fail(CorruptReason::Truncated)),
    ([ANY, N, Y, N, ANY, ANY, Y, ANY], Decision::Fail(CorruptReason::BadLength)),
    ([ANY, N, Y, Y, N, ANY, Y, ANY], Decision::Fail(CorruptReason::ChecksumMismatch)),
    ([Y, N, N, ANY, ANY, ANY, N, ANY], Decision::Cut(TornReason::IncompleteHeader)),
    ([Y, N, Y, N, ANY, ANY, N, ANY], Decision::Cut(TornReason::LengthOutOfBounds)),
    ([Y, N, Y, Y, N, ANY, N, ANY], Decision::Cut(TornReason::ChecksumMismatch)),
    ([N, N, N, ANY, ANY, ANY, N, ANY], Decision::Fail(CorruptReason::Truncated)),
    ([N, N, Y, N, ANY, ANY, N, ANY], Decision::Fail(CorruptReason::BadLength)),
    ([N, N, Y, Y, N, ANY, N, ANY], Decision::Fail(CorruptReason::ChecksumMismatch)),
    ([ANY, Y, ANY, ANY, ANY, ANY, ANY, N], Decision::End),
    ([Y, Y, ANY, ANY, ANY, ANY, ANY, Y], Decision::Cut(TornReason::IncompleteBatch)),
    ([N, Y, ANY, ANY, ANY, ANY, ANY, Y], Decision::Fail(CorruptReason::IncompleteBatch)),
];

impl Facts {
    fn values(self) -> [bool; 8] {
        [
            self.last_segment,
            self.at_end,
            self.header_complete,
            self.length_fits,
            self.checksum_ok,
            self.position_expected,
            self.sound_record_follows,
            self.batch_open,
        ]
    }

    fn matches(self, pattern: &Pattern) -> bool {
        self.values().iter().zip(pattern).all(|(value, want)| want.is_none_or(|w| w == *value))
    }

    /// Whether the record looked at is sound (all a scan needs before deciding whether to look
    /// for a sound record after it).
    pub(crate) fn record_sound(self) -> bool {
        self.header_complete && self.length_fits && self.checksum_ok
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
        (0..256u16).map(|bits| Facts {
            last_segment: bits & 1 != 0,
            at_end: bits & 2 != 0,
            header_complete: bits & 4 != 0,
            length_fits: bits & 8 != 0,
            checksum_ok: bits & 16 != 0,
            position_expected: bits & 32 != 0,
            sound_record_follows: bits & 64 != 0,
            batch_open: bits & 128 != 0,
        })
    }

    /// A record in the middle of the last segment, sound unless changed.
    fn sound() -> Facts {
        Facts {
            last_segment: true,
            at_end: false,
            header_complete: true,
            length_fits: true,
            checksum_ok: true,
            position_expected: true,
            sound_record_follows: false,
            batch_open: false,
        }
    }

    #[test]
    fn every_combination_of_facts_matches_exactly_one_rule() {
        for facts in all_facts() {
            let matching = RULES.iter().filter(|(pattern, _)| facts.matches(pattern)).count();
            assert_eq!(matching, 1, "{facts:?} matches {matching} rules");
        }
    }

    #[test]
    fn only_the_tail_of_the_last_segment_is_ever_cut() {
        for facts in all_facts() {
            match decide(facts) {
                Decision::Cut(_) => {
                    let nothing_sound_after = facts.at_end || !facts.sound_record_follows;
                    assert!(facts.last_segment && nothing_sound_after, "{facts:?}");
                }
                Decision::Keep => assert!(facts.record_sound() && facts.position_expected),
                Decision::End => assert!(facts.at_end && !facts.batch_open),
                Decision::Fail(_) => {}
            }
        }
    }

    #[test]
    fn a_sound_record_is_kept_in_any_segment_inside_or_outside_a_batch() {
        for (last_segment, batch_open) in
            [(false, false), (false, true), (true, false), (true, true)]
        {
            assert_eq!(decide(Facts { last_segment, batch_open, ..sound() }), Decision::Keep);
        }
    }

    #[test]
    fn bad_bytes_with_a_sound_record_after_them_are_corruption_even_in_the_last_segment() {
        let bad = Facts { checksum_ok: false, sound_record_follows: true, ..sound() };
        assert_eq!(decide(bad), Decision::Fail(CorruptReason::ChecksumMismatch));
        let torn = Facts { sound_record_follows: false, ..bad };
        assert_eq!(decide(torn), Decision::Cut(TornReason::ChecksumMismatch));
        let sealed = Facts { last_segment: false, ..torn };
        assert_eq!(decide(sealed), Decision::Fail(CorruptReason::ChecksumMismatch));
    }

    #[test]
    fn an_incomplete_batch_is_cut_at_the_end_of_the_last_segment_and_refused_in_a_sealed_one() {
        let end = Facts {
            at_end: true,
            header_complete: false,
            length_fits: false,
            checksum_ok: false,
            position_expected: false,
            ..sound()
        };
        assert_eq!(decide(end), Decision::End);
        let open = Facts { batch_open: true, ..end };
        assert_eq!(decide(open), Decision::Cut(TornReason::IncompleteBatch));
        let sealed = Facts { last_segment: false, ..open };
        assert_eq!(decide(sealed), Decision::Fail(CorruptReason::IncompleteBatch));
    }
}
