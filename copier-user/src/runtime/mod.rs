//! The copier's I/O edges: transmit paths, the worker that owns the session engine, and the
//! connections to the intercepts.

pub mod dispatch;
pub mod intercepts;
pub mod tx;
pub mod worker;
pub mod xdp_tx;
