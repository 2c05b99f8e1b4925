//! Types and logic shared by the eBPF programs and userspace.
//!
//! Everything here is `no_std` and allocation-free so that the XDP programs can use it; the `user`
//! feature adds the `aya::Pod` impls userspace needs to read and write the maps, the `hash`
//! feature the hasher of userspace's per-packet tables.
#![cfg_attr(not(any(feature = "user", feature = "auth", test)), no_std)]

#[cfg(feature = "auth")]
pub mod auth;
pub mod capture;
pub mod checksum;
pub mod counters;
pub mod encap;
pub mod endpoint;
pub mod facts;
#[cfg(feature = "hash")]
pub mod hash;
pub mod maps;
pub mod parse;
pub mod prefetch;
pub mod proto;
pub mod seq;
pub mod tcp;
