//! Which copier owns which client endpoint, and so which copier gets each reply.
//!
//! Copiers announce the (rewritten) client endpoints whose sessions they replay; a reply goes
//! to the copier owning its destination, or nowhere. The server's routes hold this table
//! under their lock; replies are routed a batch at a time.

use std::collections::{hash_map::Entry, HashMap};

use common::{endpoint::Endpoint, facts::ReplyFacts, hash::Hasher};

/// A connected copier, numbered by the server.
pub type CopierId = u64;

/// How many endpoints one copier may own, and all copiers together: bounds on what peers can
/// make us store (an entry costs about a hundred bytes with the tables' overhead). A copier
/// owns one endpoint per live session (or one per `-c` address), far below either.
pub const MAX_OWNED_PER_COPIER: usize = 1 << 20;
pub const MAX_OWNED_TOTAL: usize = 4 << 20;

/// Why a claim was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("copier {0} tried to own more client endpoints than one copier may ({MAX_OWNED_PER_COPIER})")]
    TooMany(CopierId),
    #[error("the intercept holds as many client endpoints as it may ({0} for all copiers)")]
    Full(usize),
    /// A live connection owns it: nobody else can take its replies.
    #[error("client endpoint {0} is owned by another copier")]
    Taken(Endpoint),
}

/// Lookups made ahead of their use, a batch at a time: independent, so their cache misses
/// overlap instead of queueing behind each other's work. A session's entries are touched about
/// once a second (owned, replies, disowned): at thousands of sessions a second, out of cache.
const AHEAD: usize = 16;

/// A change of the table, for a mirror of it (the eBPF map of an intercept on the test host).
/// Whole addresses are endpoints with port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Owned(Endpoint),
    Released(Endpoint),
}

pub struct Ownership {
    /// Client addr:port -> owner.
    exact: HashMap<Endpoint, CopierId, Hasher>,
    /// Client address (all ports; announced with port 0) -> owner.
    whole_address: HashMap<[u8; 16], CopierId, Hasher>,
    owned: HashMap<CopierId, usize, Hasher>,
    /// Entries one copier, and all of them, may own.
    limits: (usize, usize),
    /// Changes not yet taken, while someone mirrors the table.
    changes: Option<Vec<Change>>,
}

impl Default for Ownership {
    fn default() -> Self {
        Self::with_limits(MAX_OWNED_PER_COPIER, MAX_OWNED_TOTAL)
    }
}

impl Ownership {
    pub fn with_limits(per_copier: usize, total: usize) -> Self {
        Self {
            exact: HashMap::default(),
            whole_address: HashMap::default(),
            owned: HashMap::default(),
            limits: (per_copier, total),
            changes: None,
        }
    }

    /// Keeps every change from now on, for [`Self::take_changes`].
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// Moves the changes since the last call into `into`, in the order they were made.
    pub fn take_changes(&mut self, into: &mut Vec<Change>) {
        if let Some(changes) = &mut self.changes {
            into.append(changes);
        }
    }

    fn record(&mut self, change: Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(change);
        }
    }

    /// Whether `key` itself is owned: an exact endpoint, or with port 0 a whole address.
    pub fn holds(&self, key: &Endpoint) -> bool {
        if key.port == 0 {
            self.whole_address.contains_key(&key.addr)
        } else {
            self.exact.contains_key(key)
        }
    }

    /// Records that `copier` owns `client` (port 0: every port of its address). An endpoint
    /// another copier owns is refused (its replies stay with it), and so is a port of an
    /// address another copier owns whole. A copier that reconnects gets its endpoints back
    /// because its old connection's are released first (see the server).
    pub fn own(&mut self, copier: CopierId, client: Endpoint) -> Result<(), ClaimError> {
        let current = if client.port == 0 { self.whole_address.get(&client.addr) } else { self.exact.get(&client) };
        match current {
            Some(&owner) if owner == copier => return Ok(()),
            Some(_) => return Err(ClaimError::Taken(client)),
            None => {}
        }
        if client.port != 0 && self.whole_address.get(&client.addr).is_some_and(|&o| o != copier) {
            return Err(ClaimError::Taken(client));
        }
        let count = self.owned.entry(copier).or_default();
        if *count >= self.limits.0 {
            return Err(ClaimError::TooMany(copier));
        }
        if self.exact.len() + self.whole_address.len() >= self.limits.1 {
            return Err(ClaimError::Full(self.limits.1));
        }
        *count += 1;
        if client.port == 0 {
            self.whole_address.insert(client.addr, copier);
        } else {
            self.exact.insert(client, copier);
        }
        self.record(Change::Owned(client));
        Ok(())
    }

    /// [`Self::own`] for each of an announcement's `clients`, in order; stops at the first that
    /// is too many.
    pub fn own_all(&mut self, copier: CopierId, clients: &[Endpoint]) -> Result<(), ClaimError> {
        for chunk in clients.chunks(AHEAD) {
            self.touch(chunk);
            chunk.iter().try_for_each(|&c| self.own(copier, c))?;
        }
        Ok(())
    }

    /// [`Self::disown`] for each of an announcement's `clients`.
    pub fn disown_all(&mut self, copier: CopierId, clients: &[Endpoint]) {
        for chunk in clients.chunks(AHEAD) {
            self.touch(chunk);
            chunk.iter().for_each(|&c| self.disown(copier, c));
        }
    }

    /// Looks `clients` up, for their cache lines only.
    fn touch(&self, clients: &[Endpoint]) {
        let found = clients.iter().filter(|c| self.owner(c).is_some()).count();
        std::hint::black_box(found);
    }

    /// Forgets `client` if `copier` owns it.
    pub fn disown(&mut self, copier: CopierId, client: Endpoint) {
        let removed = if client.port == 0 {
            remove_if_owned(&mut self.whole_address, client.addr, copier)
        } else {
            remove_if_owned(&mut self.exact, client, copier)
        };
        if removed {
            if let Some(c) = self.owned.get_mut(&copier) {
                *c = c.saturating_sub(1);
            }
            self.record(Change::Released(client));
        }
    }

    /// Drops everything `copier` owned (it disconnected), and the memory that held it once
    /// the tables are mostly empty. Returns how many entries.
    pub fn remove_copier(&mut self, copier: CopierId) -> usize {
        let before = self.exact.len() + self.whole_address.len();
        let mut changes = self.changes.take();
        let mut keep = |client, owner| {
            let keep = owner != copier;
            if let (false, Some(changes)) = (keep, &mut changes) {
                changes.push(Change::Released(client));
            }
            keep
        };
        self.exact.retain(|&client, &mut owner| keep(client, owner));
        self.whole_address.retain(|&addr, &mut owner| keep(Endpoint::v6(addr, 0), owner));
        self.changes = changes;
        self.owned.remove(&copier);
        if self.exact.capacity() > 4 * self.exact.len() + 1024 {
            self.exact.shrink_to_fit();
        }
        if self.whole_address.capacity() > 4 * self.whole_address.len() + 1024 {
            self.whole_address.shrink_to_fit();
        }
        before - self.exact.len() - self.whole_address.len()
    }

    /// Entries the tables have room for: what they hold in memory.
    pub fn capacity(&self) -> usize {
        self.exact.capacity() + self.whole_address.capacity()
    }

    /// The copier that owns the reply's client, if any.
    pub fn owner(&self, client: &Endpoint) -> Option<CopierId> {
        self.exact.get(client).or_else(|| self.whole_address.get(&client.addr)).copied()
    }

    /// Sorts a batch of replies by owner into `out` (whose vectors are reused), and shows
    /// `unowned` each reply nobody owns.
    pub fn route(
        &self,
        replies: &[ReplyFacts],
        out: &mut HashMap<CopierId, Vec<ReplyFacts>, Hasher>,
        mut unowned: impl FnMut(&ReplyFacts),
    ) {
        // Owners first, a handful at a time (see AHEAD), then the grouping.
        for chunk in replies.chunks(AHEAD) {
            let mut owners = [None; AHEAD];
            for (owner, r) in owners.iter_mut().zip(chunk) {
                *owner = self.owner(&r.client);
            }
            for (owner, r) in owners.iter().zip(chunk) {
                match owner {
                    Some(id) => out.entry(*id).or_default().push(*r),
                    None => unowned(r),
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.whole_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_if_owned<K: std::hash::Hash + Eq>(map: &mut HashMap<K, CopierId, Hasher>, key: K, copier: CopierId) -> bool {
    match map.entry(key) {
        Entry::Occupied(owned) if *owned.get() == copier => {
            owned.remove();
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8, port: u16) -> Endpoint {
        Endpoint::v4([10, 100, 1, last], port)
    }

    fn reply_to(c: Endpoint) -> ReplyFacts {
        ReplyFacts { client: c, ..Default::default() }
    }

    #[test]
    fn each_reply_goes_to_exactly_its_owner() {
        let mut o = Ownership::default();
        o.own(1, client(2, 40001)).unwrap();
        o.own(2, client(2, 40002)).unwrap();
        let replies = [
            reply_to(client(2, 40001)),
            reply_to(client(2, 40002)),
            reply_to(client(2, 40001)),
            reply_to(client(9, 1)),
        ];
        let (mut out, mut nobodys) = (HashMap::default(), Vec::new());
        o.route(&replies, &mut out, |r| nobodys.push(*r));
        assert_eq!(nobodys, [replies[3]], "the reply to 10.100.1.9 is nobody's");
        assert_eq!(out[&1].len(), 2);
        assert_eq!(out[&2], vec![replies[1]]);
    }

    #[test]
    fn a_large_batch_keeps_each_owners_replies_in_arrival_order() {
        let mut o = Ownership::default();
        o.own(1, client(2, 0)).unwrap();
        o.own(2, client(3, 0)).unwrap();
        let replies: Vec<ReplyFacts> = (0..100u16).map(|i| reply_to(client([2, 3, 9][i as usize % 3], i))).collect();
        let (mut out, mut nobodys) = (HashMap::default(), 0);
        o.route(&replies, &mut out, |_| nobodys += 1);
        assert_eq!(nobodys, 33);
        for (id, last) in [(1, 2), (2, 3)] {
            let expected: Vec<u16> =
                replies.iter().filter(|r| r.client.addr[15] == last).map(|r| r.client.port).collect();
            assert_eq!(out[&id].iter().map(|r| r.client.port).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn an_announcement_applies_in_order_across_its_lookahead_chunks() {
        let mut o = Ownership::default();
        let clients: Vec<Endpoint> = (1..=40u16).map(|p| client(2, p)).collect();
        o.own_all(1, &clients).unwrap();
        o.own_all(1, &clients).unwrap();
        assert_eq!(o.len(), 40, "owning again changes nothing");
        o.disown_all(1, &clients[3..]);
        o.own_all(2, &clients[3..]).unwrap();
        assert!(clients[..3].iter().all(|c| o.owner(c) == Some(1)));
        assert!(clients[3..].iter().all(|c| o.owner(c) == Some(2)));
        o.disown_all(2, &[clients[3], clients[3], clients[4], clients[0]]);
        assert_eq!((o.len(), o.owner(&clients[0])), (38, Some(1)), "copier 2 cannot release copier 1's");
    }

    #[test]
    fn a_live_owners_endpoints_cannot_be_claimed_by_another_copier() {
        let mut o = Ownership::default();
        o.own(1, client(2, 40001)).unwrap();
        o.own(1, client(3, 0)).unwrap();
        assert_eq!(o.own(2, client(2, 40001)), Err(ClaimError::Taken(client(2, 40001))));
        assert_eq!(o.own(2, client(3, 0)), Err(ClaimError::Taken(client(3, 0))), "nor a whole address");
        assert_eq!(o.own(2, client(3, 5000)), Err(ClaimError::Taken(client(3, 5000))), "nor a port of one");
        let clients: Vec<Endpoint> = (1..=40u16).map(|p| client(4, p)).chain([client(2, 40001)]).collect();
        assert!(o.own_all(2, &clients).is_err(), "an announcement stops at the first taken endpoint");
        assert_eq!((o.owner(&client(2, 40001)), o.owner(&client(3, 9))), (Some(1), Some(1)));
    }

    #[test]
    fn port_zero_owns_a_whole_address_and_exact_entries_win() {
        let mut o = Ownership::default();
        o.own(1, client(2, 0)).unwrap();
        o.own(2, client(4, 5000)).unwrap();
        o.own(2, client(4, 0)).unwrap();
        assert_eq!(o.owner(&client(2, 1234)), Some(1));
        assert_eq!(o.owner(&client(4, 5000)), Some(2));
        assert_eq!(o.owner(&client(3, 1234)), None);
    }

    #[test]
    fn disown_only_releases_ones_own_entries() {
        let mut o = Ownership::default();
        o.own(1, client(2, 1)).unwrap();
        o.disown(2, client(2, 1));
        assert_eq!(o.owner(&client(2, 1)), Some(1), "copier 2 cannot release copier 1's flow");
        o.disown(1, client(2, 1));
        assert_eq!(o.owner(&client(2, 1)), None);
        assert!(o.is_empty());
    }

    #[test]
    fn a_disconnect_releases_its_endpoints_for_the_next_copier_and_its_memory() {
        let mut o = Ownership::default();
        let many: Vec<Endpoint> = (1..=20_000u16).map(|p| client(2, p)).collect();
        o.own_all(1, &many).unwrap();
        o.own(2, client(5, 1)).unwrap();
        let full = o.capacity();
        assert_eq!(o.remove_copier(1), 20_000);
        assert!(o.capacity() * 4 < full, "the tables shrink: {} of {full}", o.capacity());
        o.own(3, many[0]).unwrap(); // copier 1 reconnected as copier 3
        assert_eq!(o.owner(&many[0]), Some(3));
        assert_eq!(o.remove_copier(3) + o.remove_copier(2), 2);
        assert!(o.is_empty());
    }

    #[test]
    fn a_recorded_table_lists_its_changes_in_order() {
        let mut o = Ownership::default();
        o.own(1, client(2, 1)).unwrap();
        o.record_changes();
        o.own_all(1, &[client(2, 1), client(2, 2), client(3, 0)]).unwrap();
        let _ = o.own(2, client(2, 2));
        o.disown(2, client(2, 2));
        o.disown(1, client(2, 2));
        let mut changes = Vec::new();
        o.take_changes(&mut changes);
        use Change::*;
        assert_eq!(changes, [Owned(client(2, 2)), Owned(client(3, 0)), Released(client(2, 2))], "only real changes");
        assert!(o.holds(&client(3, 0)) && !o.holds(&client(3, 7)) && o.holds(&client(2, 1)));
        o.remove_copier(1);
        o.take_changes(&mut changes);
        changes.drain(..3);
        changes.sort_by_key(|c| match c {
            Owned(e) | Released(e) => (e.addr, e.port),
        });
        assert_eq!(changes, [Released(client(2, 1)), Released(client(3, 0))]);
        o.take_changes(&mut changes);
        assert_eq!(changes.len(), 2, "taken once");
    }

    #[test]
    fn copiers_cannot_own_without_bound() {
        let mut o = Ownership::with_limits(2, 3);
        o.own(7, client(2, 1)).unwrap();
        o.own(7, client(2, 2)).unwrap();
        assert_eq!(o.own(7, client(2, 3)), Err(ClaimError::TooMany(7)));
        o.own(8, client(2, 3)).unwrap();
        assert_eq!(o.own(8, client(2, 4)), Err(ClaimError::Full(3)), "three for everyone");
        o.disown(7, client(2, 1));
        o.own(8, client(2, 4)).unwrap();
    }
}
