//! Arbitrary bytes as a capture file: the reader must end in a value or an error naming where
//! the file broke, never panic or allocate without bound, and the engine must take whatever
//! packets it yields.
#![no_main]

use copier_engine::{mapping::parse_mappings, Config, Engine};
use copier_user::pcap::{Batch, PcapSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut source) = PcapSource::from_bytes("fuzz", data.to_vec()) else { return };
    let mut engine = Engine::new(Config::new(parse_mappings("80-10.0.0.2:8080").expect("valid")));
    let mut batch = Batch::default();
    for _ in 0..64 {
        match source.next_batch(&mut batch) {
            Ok(more) => {
                // As the worker takes them: a batch at a time, sessions looked up ahead.
                engine.on_captured_batch(0, 0, batch.iter());
                engine.outbox().clear();
                if !more {
                    break;
                }
            }
            Err(_) => break,
        }
    }
});
