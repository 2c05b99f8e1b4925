//! Map names: the one place both sides take them from.
//!
//! The eBPF programs name their statics after these (`#[map(name = ...)]`) and userspace looks
//! them up by the same constants.

/// Per-CPU array of `u64` counters, indexed by a program's counter enum.
pub const COUNTERS: &str = "COUNTERS";
/// Hash map `Endpoint -> u8`: the copier's online endpoints (wildcard address allowed).
pub const ONLINE_ENDPOINTS: &str = "ONLINE_ENDPOINTS";
/// Hash map `Endpoint -> u8`: the intercept's test-server endpoints (wildcard address allowed).
pub const TARGET_ENDPOINTS: &str = "TARGET_ENDPOINTS";
/// Hash map `Endpoint -> u8`: on the test host, the client endpoints copiers own (port 0: the
/// whole address), whose replies the intercept steals.
pub const OWNED_CLIENTS: &str = "OWNED_CLIENTS";
/// Its capacity, and so what all copiers together may own from an intercept on the test host:
/// one endpoint per live session, or one per `-c` address.
pub const MAX_OWNED_CLIENTS: u32 = 1 << 20;
/// Ring buffer of [`crate::capture::CaptureRecordOf`]s (three sizes): the copier's copy-mode
/// capture and mirror mode's jumbo frames, and the replies the intercept steals (on the test
/// host all, on an assistant host the jumbo ones).
pub const CAPTURE: &str = "CAPTURE";
/// Its size: 8 192 2-KiB records, about 1 800 jumbo ones or 63 000 small ones (each with the
/// ring's 8-byte header): tens of milliseconds of small-frame line rate, more than the reader's
/// coalescing pause (`--coalesce-us`) lets pile up.
pub const CAPTURE_RING_BYTES: u32 = 16 << 20;
/// `XskMap` of the intercept and of the copier in mirror mode: RX queue index -> AF_XDP socket.
pub const XSKS: &str = "XSKS";
/// RX queues an XSK map serves.
pub const MAX_QUEUES: u32 = 64;
/// Capacity of the endpoint maps: far more `-x`/`--target` entries than anyone types.
pub const MAX_ENDPOINTS: u32 = 256;

/// The copier's mirror-mode program: 1 = drop frames it does not redirect, 0 = pass them. A
/// global set at load time, so the verifier prunes the branch not taken.
pub const MIRROR_DROP_OTHER: &str = "MIRROR_DROP_OTHER";
/// The copier's mirror-mode program: the UDP ports of VXLAN and GENEVE mirrors (`u16`, 0:
/// none), and 1 = look inside GRE (plain, ERSPAN) packets (`u8`). Globals set at load time.
pub const DECAP_VXLAN_PORT: &str = "DECAP_VXLAN_PORT";
pub const DECAP_GENEVE_PORT: &str = "DECAP_GENEVE_PORT";
pub const DECAP_GRE: &str = "DECAP_GRE";
/// The copier's mirror-mode program: 1 = redirect the online server's own segments too (its
/// answers, for the comparison with the target's), 0 = the clients' side only.
pub const MIRROR_ANSWERS: &str = "MIRROR_ANSWERS";
