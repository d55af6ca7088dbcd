//! The images a crash leaves of a [`State`]: a `kill -9` keeps everything written; a power loss
//! keeps only what was made durable, plus a random, possibly garbled, part of the rest.

use std::collections::{BTreeMap, HashMap};

use super::state::{Inode, State};
use crate::limits::{u64_from, usize_from};

/// What a `kill -9` leaves: the page cache survives, so everything written is kept (and taken
/// as durable from then on).
pub(super) fn process_crash(state: &State) -> State {
    let inodes = state
        .entries
        .values()
        .map(|id| {
            let data = state.inodes[id].data.clone();
            (*id, Inode { durable: data.clone(), data })
        })
        .collect();
    State {
        dirs: state.dirs.clone(),
        durable_dirs: state.dirs.clone(),
        durable_entries: state.entries.clone(),
        entries: state.entries.clone(),
        inodes,
        next_inode: state.next_inode,
        capacity_bytes: state.capacity_bytes,
        ..State::default()
    }
}

/// What a power loss leaves, with randomness from `seed`: the durable directories (whose parents
/// survive too), the durable names inside them, and per file the durable bytes plus a random,
/// possibly garbled, prefix of the unsynced rest.
pub(super) fn power_loss(state: &State, seed: u64) -> State {
    let mut rng = SplitMix64(seed);
    let dirs = state.surviving_dirs();
    let entries: BTreeMap<_, _> = state
        .durable_entries
        .iter()
        .filter(|(path, _)| path.parent().is_some_and(|dir| dirs.contains(dir)))
        .map(|(path, id)| (path.clone(), *id))
        .collect();
    let mut inodes = HashMap::new();
    for id in entries.values() {
        let image = torn_image(&state.inodes[id], &mut rng);
        inodes.insert(*id, Inode { durable: image.clone(), data: image });
    }
    State {
        durable_dirs: dirs.clone(),
        dirs,
        durable_entries: entries.clone(),
        entries,
        inodes,
        next_inode: state.next_inode,
        capacity_bytes: state.capacity_bytes,
        ..State::default()
    }
}

/// The bytes of `inode` after a power loss.
fn torn_image(inode: &Inode, rng: &mut SplitMix64) -> Vec<u8> {
    let (data, durable) = (&inode.data, &inode.durable);
    if !data.starts_with(durable) {
        // Truncated or rewritten since the last sync: either image may be what the disk holds.
        return if rng.below(2) == 0 { durable.clone() } else { data.clone() };
    }
    let unsynced = &data[durable.len()..];
    let kept = usize_from(rng.below(u64_from(unsynced.len()) + 1));
    let mut image = durable.clone();
    image.extend_from_slice(&unsynced[..kept]);
    if kept > 0 && rng.below(3) == 0 {
        // Garble one byte of the surviving unsynced part: a torn sector.
        let at = durable.len() + usize_from(rng.below(u64_from(kept)));
        image[at] ^= 1 << rng.below(8);
    }
    image
}

/// A tiny deterministic generator, so crash images are reproducible from a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}
