//! The hasher of every table looked up per packet or per session, in the copier and the intercept.

/// Faster than SipHash for these small keys, and seeded per process, which keeps crafted client
/// endpoints from choosing collisions.
pub type Hasher = foldhash::fast::RandomState;
