//! The intercept's logic. The pure parts (`filter`, `router`, `outbound`, the server's
//! routing) are unit-tested without root; the I/O edges (`xsk`, `server`) are covered by the
//! namespace tests.

pub mod filter;
pub mod outbound;
pub mod router;
pub mod server;
pub mod stats;
pub mod xsk;
