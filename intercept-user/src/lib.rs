//! The intercept's I/O around its pure parts (`intercept-core`): the AF_XDP workers (`xsk`) and
//! the copiers' server (`server`), covered by the namespace tests.

pub mod server;
pub mod stats;
pub mod xsk;
