//! The intercept's I/O around its pure parts (`intercept-core`): the AF_XDP workers (`xsk`), the
//! test host's egress ring reader (`on_target`) and the copiers' server (`server`), covered by
//! the namespace tests.

pub mod on_target;
pub mod replies;
pub mod server;
pub mod stats;
pub mod xsk;
