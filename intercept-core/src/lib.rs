//! The intercept's pure parts, apart from its I/O: tcpcopy's filter form, who owns which client
//! endpoint and where each reply goes, which copier may go without announcing, the SYN-ACKs that beat their claim, the client addresses a copier declared, where each
//! answer starts (to send its first bytes), and what a copier's connection has not taken yet. No
//! build script and no runtime, so `cargo test -p intercept-core` runs without root.

pub mod answer_cut;
pub mod early;
pub mod filter;
pub mod outbound;
pub mod router;
pub mod solo;
pub mod space;
pub mod stealing;
