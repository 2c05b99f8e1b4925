//! The namespace test bed (`docs/architecture.md` §6), shared by the integration tests, the demo
//! (`xdpcopy-demo`) and the bench (`xdpcopy-bench`).
//!
//! ```text
//!  client ── online (online servers, copier) ── target (test servers) ── assist (intercept)
//!               └──────────────── control link ─────────────────────────────┘
//! ```
//! Every run gets its own namespaces (unique names), so runs and tests proceed in parallel;
//! addresses are fixed because namespaces keep them apart. Everything is torn down in `Drop`,
//! which also runs when a test panics.

pub mod bare_xdp;
pub mod bins;
pub mod capture;
pub mod flood;
pub mod gre;
pub mod netns;
pub mod pcapgen;
pub mod process;
pub mod proto_client;
pub mod raw;
pub mod servers;
pub mod stats;
pub mod topology;
pub mod traffic;

pub use crate::{
    netns::Netns,
    process::Process,
    topology::{Host, Testbed},
};

/// Fails loudly without root: these tests never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the namespace/XDP tests need root (network namespaces, veth, XDP); run them as root, as CI does"
    );
}
