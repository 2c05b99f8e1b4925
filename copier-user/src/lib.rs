//! The copier's logic, kept free of I/O so it is tested without root.

pub mod engine;
pub mod mapping;
pub mod pcap;
pub mod runtime;

/// The hasher of tables looked up per packet: SipHash took a sixth of the engine's time in a
/// profile. foldhash is seeded per process, which keeps crafted client endpoints from choosing
/// collisions.
pub type Hasher = foldhash::fast::RandomState;
