//! Arbitrary bytes as captured packets and as reply frames: every parser must return an error
//! or a value, never panic, and the engine must take whatever the parsers let through.
#![no_main]

use common::{
    encap::{inner_of, Decap, Inner},
    facts::ReplyFacts,
};
use copier_engine::{
    capture::{self, Link},
    mapping::parse_mappings,
    Config, Engine,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = capture::parse(Link::Ethernet, data);
    let _ = capture::parse(Link::Ip, data);
    let _ = ReplyFacts::from_frame(data);
    // A mirror's tunnel packet: the inner frame it finds lies within the packet.
    let all = Decap { vxlan_port: Decap::VXLAN_PORT, geneve_port: Decap::GENEVE_PORT, gre: true };
    if let Ok(Some(Inner::Ethernet(offset) | Inner::Ip { offset, .. })) = inner_of(data, &all) {
        let _ = capture::parse(Link::Ethernet, data.get(offset..).unwrap_or_default());
    }
    let mut engine = Engine::new(Config::new(parse_mappings("80-10.0.0.2:8080,[fd00::1]:443-[fd00::2]:8443").expect("valid")));
    engine.on_captured(0, Link::Ip, data);
    engine.on_captured(1, Link::Ethernet, data);
    engine.on_timer(u64::MAX / 2);
});
