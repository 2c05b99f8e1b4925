//! The copier's I/O edges: the worker that owns the session engine, the dispatch of captured
//! frames to the workers, and the connections to the intercepts.

pub mod dispatch;
pub mod intercepts;
pub mod worker;

/// Waits until `done()` holds, woken by `changed` (never by polling), or until `limit` passed;
/// returns whether it holds. Registered before each check, so a change between the check and
/// the wait is not missed.
pub async fn wait_until(changed: &tokio::sync::Notify, limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return done();
        }
    }
}
