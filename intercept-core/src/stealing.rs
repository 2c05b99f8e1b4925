//! Which client endpoints the intercept on the test host steals replies to: a mirror of the
//! ownership table in the eBPF program's map, kept a while past each release.
//!
//! On the test host a reply that is not stolen leaves towards its real client. A copier
//! releases an endpoint when it is done with the session, or all of them when it disconnects,
//! while the test server may still send (a retransmission, a late FIN). So a released endpoint
//! stays in the map for [`LINGER`] before it is deleted, unless it is owned again by then.

use std::{collections::VecDeque, time::Duration};

use common::endpoint::Endpoint;

use crate::router::{Change, Ownership};

/// How long a released endpoint's replies are still stolen: longer than the test server
/// retransmits into a session its copier dropped for most of its timers (a minute of
/// retransmissions covers RTO back-off to tens of seconds).
pub const LINGER: Duration = Duration::from_secs(60);

/// The eBPF map of endpoints whose replies are stolen (port 0: every port of the address).
pub trait StolenSet: Send {
    fn insert(&mut self, client: Endpoint) -> std::io::Result<()>;
    fn remove(&mut self, client: Endpoint);
}

/// Applies the ownership table's changes to a [`StolenSet`], deleting released endpoints
/// [`LINGER`] later.
pub struct Stealing {
    set: Box<dyn StolenSet>,
    /// Released endpoints, oldest first, with when they were released (time since start).
    released: VecDeque<(Duration, Endpoint)>,
    /// At most this many wait: the map's size. Past it the oldest goes at once.
    capacity: usize,
    changes: Vec<Change>,
}

impl Stealing {
    pub fn new(set: Box<dyn StolenSet>, capacity: usize) -> Self {
        Self { set, released: VecDeque::new(), capacity, changes: Vec::new() }
    }

    /// Takes the table's changes since the last call into the map: owned endpoints are inserted
    /// now, released ones queued. Fails if the map refused an insert (the caller refuses the
    /// claim, and its release deletes the rest).
    pub fn sync(&mut self, ownership: &mut Ownership, now: Duration) -> std::io::Result<()> {
        ownership.take_changes(&mut self.changes);
        let mut result = Ok(());
        for change in self.changes.drain(..) {
            match change {
                Change::Owned(client) => {
                    if result.is_ok() {
                        result = self.set.insert(client);
                    }
                }
                Change::Released(client) => {
                    if self.released.len() >= self.capacity {
                        let (_, oldest) = self.released.pop_front().expect("capacity is not 0");
                        if !ownership.holds(&oldest) {
                            self.set.remove(oldest);
                        }
                    }
                    self.released.push_back((now, client));
                }
            }
        }
        result
    }

    /// Deletes the endpoints released [`LINGER`] before `now` that nobody owns again.
    pub fn expire(&mut self, ownership: &Ownership, now: Duration) {
        while let Some(&(at, client)) = self.released.front() {
            if now.saturating_sub(at) < LINGER {
                break;
            }
            self.released.pop_front();
            if !ownership.holds(&client) {
                self.set.remove(client);
            }
        }
    }

    /// Released endpoints whose replies are still stolen.
    pub fn lingering(&self) -> usize {
        self.released.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        sync::{Arc, Mutex},
    };

    use super::*;

    #[derive(Clone, Default)]
    struct Set(Arc<Mutex<HashSet<Endpoint>>>, Option<usize>);

    impl StolenSet for Set {
        fn insert(&mut self, client: Endpoint) -> std::io::Result<()> {
            let mut set = self.0.lock().unwrap();
            if self.1.is_some_and(|max| set.len() >= max) {
                return Err(std::io::Error::other("full"));
            }
            set.insert(client);
            Ok(())
        }
        fn remove(&mut self, client: Endpoint) {
            self.0.lock().unwrap().remove(&client);
        }
    }

    fn client(port: u16) -> Endpoint {
        Endpoint::v4([10, 100, 1, 2], port)
    }

    fn fixture(capacity: usize) -> (Ownership, Stealing, Set) {
        let set = Set::default();
        let mut ownership = Ownership::default();
        ownership.record_changes();
        (ownership, Stealing::new(Box::new(set.clone()), capacity), set)
    }

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn owned_endpoints_are_stolen_at_once_and_released_ones_a_minute_more() {
        let (mut o, mut s, set) = fixture(100);
        o.own_all(1, &[client(1), client(2), Endpoint::v4([10, 100, 1, 3], 0)]).unwrap();
        s.sync(&mut o, at(0)).unwrap();
        assert_eq!(set.0.lock().unwrap().len(), 3);
        o.disown(1, client(1));
        s.sync(&mut o, at(5)).unwrap();
        s.expire(&o, at(64));
        assert!(set.0.lock().unwrap().contains(&client(1)), "still within its linger");
        s.expire(&o, at(65));
        assert!(!set.0.lock().unwrap().contains(&client(1)));
        assert_eq!(o.remove_copier(1), 2);
        s.sync(&mut o, at(70)).unwrap();
        assert_eq!((set.0.lock().unwrap().len(), s.lingering()), (2, 2), "a disconnect lingers too");
        s.expire(&o, at(130));
        assert!(set.0.lock().unwrap().is_empty());
    }

    #[test]
    fn an_endpoint_owned_again_before_its_linger_ends_stays() {
        let (mut o, mut s, set) = fixture(100);
        o.own(1, client(1)).unwrap();
        s.sync(&mut o, at(0)).unwrap();
        o.remove_copier(1);
        s.sync(&mut o, at(1)).unwrap();
        o.own(2, client(1)).unwrap(); // the copier reconnected
        s.sync(&mut o, at(2)).unwrap();
        s.expire(&o, at(100));
        assert!(set.0.lock().unwrap().contains(&client(1)));
        assert_eq!(s.lingering(), 0);
    }

    #[test]
    fn the_queue_of_released_endpoints_is_bounded() {
        let (mut o, mut s, set) = fixture(2);
        for port in 1..=5 {
            o.own(1, client(port)).unwrap();
            o.disown(1, client(port));
            s.sync(&mut o, at(0)).unwrap();
        }
        assert_eq!(s.lingering(), 2);
        assert_eq!(set.0.lock().unwrap().len(), 2, "the oldest went at once");
    }

    #[test]
    fn a_full_map_fails_the_sync() {
        let (mut o, _, _) = fixture(10);
        let set = Set(Arc::default(), Some(1));
        let mut s = Stealing::new(Box::new(set.clone()), 10);
        o.own_all(1, &[client(1), client(2)]).unwrap();
        assert!(s.sync(&mut o, at(0)).is_err());
        assert_eq!(set.0.lock().unwrap().len(), 1);
    }
}
