//! Arbitrary bytes on the intercept ↔ copier connection: decoding must stop at an error or ask
//! for more, never panic or read out of bounds.
#![no_main]

use common::proto;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((message, used))) = proto::decode(rest) {
        if let proto::Message::Facts(records) = message {
            records.for_each(drop);
        }
        rest = &rest[used..];
    }
});
