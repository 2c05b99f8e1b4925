//! The copier's logic, kept free of I/O so it is tested without root.

pub mod engine;
pub mod mapping;
pub mod pcap;
pub mod runtime;
