//! CRC32C of several records at once, for the read path.
//!
//! A reader checks the checksum of every record it returns. Records are short (hundreds of
//! bytes), where the `crc32c` crate computes one serial chain of `crc32` instructions, each
//! waiting for the previous (3 cycles of latency, 1 of throughput). Checking three records as
//! three independent, interleaved chains keeps the unit busy and triples the throughput.
//!
//! This is the crate's only `unsafe`: one call into a `#[target_feature(enable = "sse4.2")]`
//! function after `is_x86_feature_detected!` confirmed the feature. Elsewhere, and on other CPUs,
//! it falls back to the `crc32c` crate. Tests compare both paths with `crc32c::crc32c`.

/// The CRC32C (Castagnoli) of each of three byte slices.
pub(crate) fn crc32c_3(slices: [&[u8]; 3]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE 4.2, the only feature the function enables.
            #[allow(unsafe_code)]
            return unsafe { x86::crc32c_3(slices) };
        }
    }
    slices.map(crc32c::crc32c)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};

    #[target_feature(enable = "sse4.2")]
    pub(super) fn crc32c_3([a, b, c]: [&[u8]; 3]) -> [u32; 3] {
        let (mut ca, mut cb, mut cc) =
            (u64::from(u32::MAX), u64::from(u32::MAX), u64::from(u32::MAX));
        let words = a.len().min(b.len()).min(c.len()) / 8;
        let (a_words, a_rest) = a.split_at(words * 8);
        let (b_words, b_rest) = b.split_at(words * 8);
        let (c_words, c_rest) = c.split_at(words * 8);
        let zipped =
            a_words.chunks_exact(8).zip(b_words.chunks_exact(8)).zip(c_words.chunks_exact(8));
        for ((wa, wb), wc) in zipped {
            ca = _mm_crc32_u64(ca, word(wa));
            cb = _mm_crc32_u64(cb, word(wb));
            cc = _mm_crc32_u64(cc, word(wc));
        }
        [finish(ca, a_rest), finish(cb, b_rest), finish(cc, c_rest)]
    }

    #[target_feature(enable = "sse4.2")]
    fn finish(mut crc: u64, rest: &[u8]) -> u32 {
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            crc = _mm_crc32_u64(crc, word(w));
        }
        let mut crc = u32::try_from(crc).expect("crc32 results fit 32 bits");
        for &byte in words.remainder() {
            crc = _mm_crc32_u8(crc, byte);
        }
        !crc
    }

    fn word(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes.try_into().expect("chunks of eight bytes"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn three_at_once_equals_one_at_a_time(
            a in prop::collection::vec(any::<u8>(), 0..600),
            b in prop::collection::vec(any::<u8>(), 0..600),
            c in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let expected = [crc32c::crc32c(&a), crc32c::crc32c(&b), crc32c::crc32c(&c)];
            prop_assert_eq!(super::crc32c_3([&a, &b, &c]), expected);
        }
    }

    #[test]
    fn known_vector() {
        // RFC 3720 (iSCSI) test vector: 32 bytes of zeros.
        assert_eq!(super::crc32c_3([&[0u8; 32], b"", b"123456789"]), [0x8A91_36AA, 0, 0xE306_9283]);
    }
}
