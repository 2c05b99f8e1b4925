//! Which copier, if any, goes without announcing (protocol v4: SOLO, SOLE).
//!
//! Each OWN and DISOWN is a write of the copier's and a wake-up of the intercept's. On an
//! assistant host every reply is stolen, and with one copier connected there is nobody else
//! to route it to: a copier that offered SOLO is made sole while it is alone, announces
//! nothing, and gets every reply nobody owns. When another copier connects, the sole one is
//! told to announce what it owns; until its SYNC shows that done, it stays the fallback.

use std::collections::HashSet;

use crate::router::CopierId;

/// What a copier is to be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tell {
    /// SOLE 1: it is the only copier; its announcements are not needed (nor recorded).
    Sole(CopierId),
    /// SOLE 0: announce every endpoint it owns, then SYNC.
    Announce(CopierId),
}

#[derive(Debug, Default)]
pub struct Solo {
    offered: HashSet<CopierId>,
    sole: Option<CopierId>,
    /// Where replies nobody owns go: the sole copier, or the one that was until it has
    /// announced again.
    fallback: Option<CopierId>,
}

impl Solo {
    /// `id` sent SOLO.
    pub fn offer(&mut self, id: CopierId) {
        self.offered.insert(id);
    }

    /// `id` disconnected.
    pub fn forget(&mut self, id: CopierId) {
        self.offered.remove(&id);
        if self.sole == Some(id) {
            self.sole = None;
        }
        if self.fallback == Some(id) {
            self.fallback = None;
        }
    }

    /// `id` sent a SYNC: everything it announced before is in effect. True if that ended its
    /// time as the fallback.
    pub fn synced(&mut self, id: CopierId) -> bool {
        let ends = self.fallback == Some(id) && self.sole != Some(id);
        if ends {
            self.fallback = None;
        }
        ends
    }

    /// Whether `id` is sole now (its announcements are ignored).
    pub fn is_sole(&self, id: CopierId) -> bool {
        self.sole == Some(id)
    }

    pub fn fallback(&self) -> Option<CopierId> {
        self.fallback
    }

    /// After copiers came or went (`linked`: those connected now; `holds`: an assistant host,
    /// where every reply is stolen): who is sole, and what to tell whom about it.
    pub fn settle(&mut self, linked: &[CopierId], holds: bool) -> Vec<Tell> {
        let wanted = match linked {
            [only] if holds && self.offered.contains(only) => Some(*only),
            _ => None,
        };
        if wanted == self.sole {
            return Vec::new();
        }
        let mut tell = Vec::new();
        if let Some(was) = self.sole.take() {
            // It stays the fallback until it has announced again (a connected one will).
            if linked.contains(&was) {
                tell.push(Tell::Announce(was));
            } else if self.fallback == Some(was) {
                self.fallback = None;
            }
        }
        if let Some(now) = wanted {
            tell.push(Tell::Sole(now));
            self.fallback = Some(now);
        }
        self.sole = wanted;
        tell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_copier_that_offered_is_sole_on_an_assistant_host_only() {
        let mut s = Solo::default();
        assert_eq!(s.settle(&[1], true), [], "it has not offered");
        s.offer(1);
        assert_eq!(s.settle(&[1], false), [], "on the test host a reply nobody owns is not stolen");
        assert_eq!(s.settle(&[1], true), [Tell::Sole(1)]);
        assert!(s.is_sole(1));
        assert_eq!(s.fallback(), Some(1));
        assert_eq!(s.settle(&[1], true), [], "told once");
    }

    #[test]
    fn a_second_copier_makes_the_first_announce_and_it_is_the_fallback_until_its_sync() {
        let mut s = Solo::default();
        s.offer(1);
        s.settle(&[1], true);
        s.offer(2);
        assert_eq!(s.settle(&[1, 2], true), [Tell::Announce(1)]);
        assert!(!s.is_sole(1), "its announcements count again");
        assert_eq!(s.fallback(), Some(1));
        assert!(!s.synced(2));
        assert_eq!(s.fallback(), Some(1), "another's SYNC says nothing of its announcements");
        assert!(s.synced(1));
        assert_eq!(s.fallback(), None);
    }

    #[test]
    fn the_copier_left_alone_is_sole_again_and_a_gone_one_is_nobodys_fallback() {
        let mut s = Solo::default();
        s.offer(1);
        s.offer(2);
        s.settle(&[1], true);
        s.settle(&[1, 2], true);
        // 1 goes before it has announced again: what nobody owns goes nowhere, then to 2.
        s.forget(1);
        assert_eq!(s.fallback(), None);
        assert_eq!(s.settle(&[2], true), [Tell::Sole(2)]);
        assert_eq!(s.fallback(), Some(2));
        assert!(!s.synced(2));
        assert_eq!(s.fallback(), Some(2), "a sole copier's SYNC keeps it the fallback");
        s.forget(2);
        assert_eq!((s.settle(&[], true), s.fallback()), (vec![], None));
    }

    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Connect(CopierId),
        Offer(CopierId),
        Sync(CopierId),
        Disconnect(CopierId),
    }

    fn op() -> impl Strategy<Value = Op> {
        (0..4u8, 1..4u64).prop_map(|(kind, id)| match kind {
            0 => Op::Connect(id),
            1 => Op::Offer(id),
            2 => Op::Sync(id),
            _ => Op::Disconnect(id),
        })
    }

    proptest! {
        /// Whatever copiers do, as the intercept applies it: one is sole exactly while it is
        /// alone and has offered; it hears SOLE 1 once for each time it becomes sole, and SOLE
        /// 0 when it stops being sole while still connected; what nobody owns goes only to a
        /// connected copier that was sole and has not announced again since.
        #[test]
        fn the_sole_copier_is_the_lone_one_that_offered_and_hears_each_change(
            ops in proptest::collection::vec(op(), 0..60),
            holds in any::<bool>(),
        ) {
            let mut s = Solo::default();
            let mut linked: Vec<CopierId> = Vec::new();
            let mut offered: HashSet<CopierId> = HashSet::new();
            // The connected copiers that were sole and have not sent SYNC since.
            let mut owed_announcement: HashSet<CopierId> = HashSet::new();
            let mut sole: Option<CopierId> = None;
            for op in ops {
                match op {
                    Op::Connect(id) if !linked.contains(&id) => linked.push(id),
                    Op::Offer(id) if linked.contains(&id) => {
                        s.offer(id);
                        offered.insert(id);
                    }
                    Op::Sync(id) if linked.contains(&id) => {
                        let was_fallback = s.fallback() == Some(id);
                        prop_assert_eq!(s.synced(id), was_fallback && sole != Some(id));
                        if sole != Some(id) {
                            owed_announcement.remove(&id);
                        }
                    }
                    Op::Disconnect(id) if linked.contains(&id) => {
                        linked.retain(|&l| l != id);
                        offered.remove(&id);
                        owed_announcement.remove(&id);
                        s.forget(id);
                        if sole == Some(id) {
                            sole = None;
                        }
                    }
                    _ => continue,
                }
                let tells = s.settle(&linked, holds);
                let wanted = match linked.as_slice() {
                    [only] if holds && offered.contains(only) => Some(*only),
                    _ => None,
                };
                let mut expected = Vec::new();
                if wanted != sole {
                    if let Some(was) = sole.filter(|was| linked.contains(was)) {
                        expected.push(Tell::Announce(was));
                    }
                    if let Some(now) = wanted {
                        expected.push(Tell::Sole(now));
                    }
                }
                prop_assert_eq!(&tells, &expected);
                if let [Tell::Announce(was)] = tells.as_slice() {
                    prop_assert_eq!(s.fallback(), Some(*was), "what nobody owns stays its until its SYNC");
                }
                if let Some(now) = wanted {
                    owed_announcement.insert(now);
                }
                sole = wanted;
                prop_assert_eq!(linked.iter().find(|&&id| s.is_sole(id)).copied(), sole);
                if let Some(f) = s.fallback() {
                    prop_assert!(linked.contains(&f) && owed_announcement.contains(&f), "fallback {f}");
                }
                if let Some(only) = sole {
                    prop_assert_eq!(s.fallback(), Some(only));
                }
            }
        }
    }

    #[test]
    fn a_sole_copier_that_disconnects_is_nobodys_fallback() {
        let mut s = Solo::default();
        s.offer(1);
        s.settle(&[1], true);
        s.forget(1);
        assert_eq!(s.settle(&[], true), []);
        assert_eq!(s.fallback(), None);
        assert!(!s.is_sole(1));
    }
}
