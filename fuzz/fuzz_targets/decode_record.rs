//! The record decoder on arbitrary bytes: never panics, and whatever it accepts re-encodes to
//! the same bytes.
#![no_main]

use inorder_log::record::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = decode_record(bytes) {
        let mut again = Vec::new();
        encode_record(&mut again, record.position, record.payload);
        assert_eq!(&again[..], &bytes[..record.record_bytes]);
    }
});
