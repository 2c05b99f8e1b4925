//! The copier's I/O edges: the worker that owns the session engine, the dispatch of captured
//! frames to the workers, and the connections to the intercepts.

pub mod dispatch;
pub mod intercepts;
pub mod worker;
