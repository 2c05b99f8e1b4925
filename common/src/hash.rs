//! The hasher of every table looked up per packet or per session, in the copier and the intercept.

/// SipHash took a sixth of the engine's time in a profile. foldhash is seeded per process, which
/// keeps crafted client endpoints from choosing collisions.
pub type Hasher = foldhash::fast::RandomState;
