//! The watermark: the highest position `P` such that every position up to `P` is done, and the
//! positions done above it, kept as ranges.
//!
//! Work finishes out of order (keys run in parallel, ids are indexed in batches), but what the
//! engine may promise — "processed up to", "indexed up to" — is a contiguous prefix. Positions
//! done above the prefix are kept as **ranges**, not one entry each: everything finished above a
//! stuck position (one key waiting for an action that never comes) is one range, so memory is
//! bounded by the number of *holes* — positions read and not yet done — and those are bounded
//! by the stream's limits, not by how many events went past.
//!
//! Each range carries a [`Mark`] joined over its positions (for a stream: the latest event time
//! handled in it), folded into the prefix's mark when the prefix absorbs the range.

use std::{collections::BTreeMap, ops::RangeInclusive};

/// A value joined over positions (a join-semilattice: associative, commutative, idempotent,
/// with `Default` as its identity).
pub(crate) trait Mark: Copy + Default + PartialEq + std::fmt::Debug {
    /// The join of two marks.
    #[must_use]
    fn join(self, other: Self) -> Self;
}

impl Mark for () {
    fn join(self, (): Self) -> Self {}
}

/// The latest event time (microseconds) among positions; `i64::MIN` when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct MaxTime(pub i64);

impl Default for MaxTime {
    fn default() -> Self {
        Self(i64::MIN)
    }
}

impl Mark for MaxTime {
    fn join(self, other: Self) -> Self {
        Self(self.0.max(other.0))
    }
}

/// Done positions: a contiguous prefix and ranges above it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Watermark<M: Mark = ()> {
    /// Every position at or below it is done.
    through: u64,
    /// The join of the marks of the prefix.
    through_mark: M,
    /// Done ranges above `through + 1`, by start: `start → (end, mark)`. Never adjacent to each
    /// other nor to the prefix (they would have been merged).
    above: BTreeMap<u64, (u64, M)>,
}

impl<M: Mark> Watermark<M> {
    /// A watermark at `through` with `mark`, nothing done above it.
    pub(crate) fn new(through: u64, mark: M) -> Self {
        Self { through, through_mark: mark, above: BTreeMap::new() }
    }

    /// A watermark resuming from stored ranges (ascending, above `through`). Ranges that touch
    /// or overlap are merged, ranges at or below the prefix absorbed.
    pub(crate) fn with_ranges(
        through: u64,
        mark: M,
        ranges: impl IntoIterator<Item = (RangeInclusive<u64>, M)>,
    ) -> Self {
        let mut watermark = Self::new(through, mark);
        for (range, mark) in ranges {
            watermark.insert_range(*range.start(), *range.end(), mark);
        }
        watermark
    }

    /// Every position at or below it is done.
    pub(crate) fn through(&self) -> u64 {
        self.through
    }

    /// The join of the marks of every position at or below [`Self::through`].
    pub(crate) fn mark(&self) -> M {
        self.through_mark
    }

    /// Whether `position` is done.
    pub(crate) fn contains(&self, position: u64) -> bool {
        position <= self.through
            || self
                .above
                .range(..=position)
                .next_back()
                .is_some_and(|(_, (end, _))| position <= *end)
    }

    /// Ranges done above the prefix (the holes between them are not done).
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (RangeInclusive<u64>, M)> + '_ {
        self.above.iter().map(|(start, (end, mark))| (*start..=*end, *mark))
    }

    /// Marks `position` done with `mark`; returns whether the prefix advanced.
    pub(crate) fn insert(&mut self, position: u64, mark: M) -> bool {
        self.insert_range(position, position, mark)
    }

    /// Marks `start..=end` done, each with `mark`; returns whether the prefix advanced.
    pub(crate) fn insert_range(&mut self, start: u64, end: u64, mark: M) -> bool {
        debug_assert!(start <= end, "an empty range {start}..={end}");
        if end <= self.through {
            return false;
        }
        let (mut start, mut end, mut mark) = (start.max(self.through + 1), end, mark);
        // Absorb every range that overlaps or touches [start, end].
        while let Some((&other_start, &(other_end, other_mark))) =
            self.above.range(..=end.saturating_add(1)).next_back()
        {
            if other_end.saturating_add(1) < start {
                break;
            }
            self.above.remove(&other_start);
            start = start.min(other_start);
            end = end.max(other_end);
            mark = mark.join(other_mark);
        }
        if start == self.through + 1 {
            self.through = end;
            self.through_mark = self.through_mark.join(mark);
            debug_assert!(
                self.above.first_key_value().is_none_or(|(s, _)| *s > self.through + 1),
                "a range next to the prefix was left unmerged"
            );
            return true;
        }
        self.above.insert(start, (end, mark));
        false
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn done_positions_above_a_hole_are_one_range() {
        let mut watermark = Watermark::<()>::new(0, ());
        for position in 2..=1_000_000 {
            assert!(!watermark.insert(position, ()), "position 1 is missing");
        }
        assert_eq!((watermark.through(), watermark.ranges().count()), (0, 1));
        assert!(watermark.insert(1, ()));
        assert_eq!((watermark.through(), watermark.ranges().count()), (1_000_000, 0));
    }

    #[test]
    fn marks_join_into_the_prefix_only_when_it_absorbs_them() {
        let mut watermark = Watermark::new(0, MaxTime::default());
        watermark.insert(2, MaxTime(50));
        assert_eq!(watermark.mark(), MaxTime::default(), "position 1 is not done");
        watermark.insert(1, MaxTime(10));
        assert_eq!((watermark.through(), watermark.mark()), (2, MaxTime(50)));
    }

    proptest! {
        /// Whatever the order positions finish in, the prefix is exactly the longest run from 1,
        /// `contains` agrees with a plain set, and the ranges are the set's runs above it.
        #[test]
        fn agrees_with_a_set_of_positions(order in Just((1..=60u64).collect::<Vec<_>>()).prop_shuffle(), take in 0..=60usize) {
            let mut watermark = Watermark::<()>::new(0, ());
            let mut set = std::collections::BTreeSet::new();
            for &position in &order[..take] {
                watermark.insert(position, ());
                set.insert(position);
            }
            let prefix = (1..).take_while(|p| set.contains(p)).last().unwrap_or(0);
            prop_assert_eq!(watermark.through(), prefix);
            for position in 1..=61 {
                prop_assert_eq!(watermark.contains(position), set.contains(&position));
            }
            let runs: Vec<_> = watermark.ranges().map(|(r, ())| r).collect();
            for window in runs.windows(2) {
                prop_assert!(window[0].end() + 1 < *window[1].start(), "runs are merged");
            }
            let covered: usize = runs.iter().map(|r| usize::try_from(r.end() - r.start() + 1).unwrap_or(0)).sum();
            prop_assert_eq!(covered, set.iter().filter(|p| **p > prefix).count());
        }
    }
}
