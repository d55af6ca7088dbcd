//! Which partition a key is in.

/// The partition of `key` among `partitions`: FNV-1a (64-bit) of the key's bytes, modulo the
/// count — fixed by this definition, so every node and every version agrees.
#[must_use]
pub fn partition_of(key: &str, partitions: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let hash = key.bytes().fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    let partitions = u64::from(partitions.max(1));
    u16::try_from(hash % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        // Fixed values: a change of the hash would move keys between nodes of mixed versions.
        assert_eq!(partition_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u16);
        assert_eq!(partition_of("order-1", 16), partition_of("order-1", 16));
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn keys_spread_over_every_partition() {
        let mut seen = [0u32; 16];
        for i in 0..16_000 {
            seen[usize::from(partition_of(&format!("key-{i}"), 16))] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
    }
}
