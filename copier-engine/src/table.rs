//! The engine's sessions, live and lingering, indexed by [`SessionId`].
//!
//! A session is reached from its captured flow, from its replay endpoint (the intercepts'
//! facts) and from the timer wheel. The first two need hash maps; the timer wheel and the
//! maps' values need only an index. Kept as two hash maps (live, lingering) plus a third for
//! each session's capture key, every fired timer cost two lookups (live, then lingering) and
//! every session's end three removals, nearly all cache misses: a fired record is a second
//! old. Here both are one slot, which also holds the capture key, and a closing session turns
//! into its [`TimeWait`] in place (docs/bench.md, "Design choices").
//!
//! Live sessions themselves are kept in a pool of their own, reused most recent first, so a
//! lingering record (a fifth of a session's size) does not hold a session-sized slot: at
//! maximum replay speed the records of the last second were most of the table, and each new
//! slot was first touched through a page fault.

use common::prefetch;

use super::{session::Session, time_wait::TimeWait, CaptureKey};

/// A session's slot and the generation that occupies it: an id outlives its session (in a
/// timer entry) and must not reach the slot's next occupant. It also names the live
/// session's place in the pool, so both can be prefetched before either is read.
#[derive(Clone, Copy, Debug)]
pub struct SessionId {
    index: u32,
    generation: u32,
    /// A hint, not part of the identity: once the session lingers, its place is another's.
    pool: u32,
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        (self.index, self.generation) == (other.index, other.generation)
    }
}

impl Eq for SessionId {}

/// What a slot holds: a live session or a lingering record, owned (`Entry`) or borrowed
/// (`Entry<&Session, &TimeWait>`, `Entry<&mut Session, &mut TimeWait>`).
#[derive(Debug)]
pub enum Entry<S = Session, T = TimeWait> {
    Live(S),
    /// Closed cleanly, lingering.
    Lingering(T),
}

#[derive(Debug)]
enum State {
    /// The session is in the pool, at this index.
    Live(u32),
    Lingering(TimeWait),
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    /// The captured flow (and copy) it replays, to forget it when the session goes.
    key: CaptureKey,
    state: Option<State>,
}

#[derive(Debug, Default)]
pub struct Table {
    slots: Vec<Slot>,
    /// Vacant slots, the most recently vacated last: reused first, while still in cache.
    free: Vec<u32>,
    /// Live sessions. Kept inline, not boxed one by one: each live access would take one more
    /// cache miss, which prefetching by id cannot start.
    pool: Vec<Option<Session>>,
    /// Vacant places in the pool, the most recently vacated last.
    pool_free: Vec<u32>,
    live: usize,
    lingering: usize,
}

impl Table {
    /// Sessions held, live or lingering.
    pub fn len(&self) -> usize {
        self.live + self.lingering
    }

    pub fn insert(&mut self, key: CaptureKey, session: Session) -> SessionId {
        self.live += 1;
        let pool = match self.pool_free.pop() {
            Some(pool) => {
                self.pool[pool as usize] = Some(session);
                pool
            }
            None => {
                self.pool.push(Some(session));
                u32::try_from(self.pool.len() - 1).expect("fewer than 2^32 sessions")
            }
        };
        let state = Some(State::Live(pool));
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                (slot.key, slot.state) = (key, state);
                SessionId { index, generation: slot.generation, pool }
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 sessions");
                self.slots.push(Slot { generation: 0, key, state });
                SessionId { index, generation: 0, pool }
            }
        }
    }

    fn slot(&self, id: SessionId) -> Option<&Slot> {
        self.slots.get(id.index as usize).filter(|s| s.generation == id.generation && s.state.is_some())
    }

    fn slot_mut(&mut self, id: SessionId) -> Option<&mut Slot> {
        slot_in(&mut self.slots, id)
    }

    pub fn get(&self, id: SessionId) -> Option<Entry<&Session, &TimeWait>> {
        match self.slot(id)?.state.as_ref()? {
            State::Live(pool) => self.pool[*pool as usize].as_ref().map(Entry::Live),
            State::Lingering(record) => Some(Entry::Lingering(record)),
        }
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<Entry<&mut Session, &mut TimeWait>> {
        // The slot and the pool borrowed apart.
        match slot_in(&mut self.slots, id)?.state.as_mut()? {
            State::Live(pool) => self.pool[*pool as usize].as_mut().map(Entry::Live),
            State::Lingering(record) => Some(Entry::Lingering(record)),
        }
    }

    pub fn session_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        match self.get_mut(id)? {
            Entry::Live(s) => Some(s),
            Entry::Lingering(_) => None,
        }
    }

    /// The captured flow of a session held, live or lingering.
    pub fn key(&self, id: SessionId) -> Option<CaptureKey> {
        self.slot(id).map(|s| s.key)
    }

    /// Takes a live session out of the pool, its place reused next.
    fn vacate(&mut self, pool: u32) -> Session {
        self.pool_free.push(pool);
        self.pool[pool as usize].take().expect("a live slot's session is in the pool")
    }

    /// Replaces a live session by its time-wait record; returns the session.
    pub fn linger(&mut self, id: SessionId, record: TimeWait) -> Option<Session> {
        let slot = slot_in(&mut self.slots, id)?;
        let State::Live(pool) = *slot.state.as_ref()? else { return None };
        slot.state = Some(State::Lingering(record));
        self.live -= 1;
        self.lingering += 1;
        Some(self.vacate(pool))
    }

    /// Vacates a slot: its id reaches nothing from now on.
    pub fn remove(&mut self, id: SessionId) -> Option<(CaptureKey, Entry)> {
        let slot = self.slot_mut(id)?;
        let state = slot.state.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        let key = slot.key;
        self.free.push(id.index);
        let entry = match state {
            State::Live(pool) => {
                self.live -= 1;
                Entry::Live(self.vacate(pool))
            }
            State::Lingering(record) => {
                self.lingering -= 1;
                Entry::Lingering(record)
            }
        };
        Some((key, entry))
    }

    /// Starts loading a slot into the cache, and the session it holds if still live, to
    /// overlap the misses of a batch of ids. All of it: a session record spans some ten cache
    /// lines, and a reply's work touches most of them (with the first line alone prefetched,
    /// the misses moved to whichever field came next).
    pub fn prefetch(&self, id: SessionId) {
        if let Some(slot) = self.slots.get(id.index as usize) {
            prefetch::lines(slot, size_of::<Slot>());
        }
        // A lingering record's pool place may hold another session by now: a wasted hint.
        if let Some(session) = self.pool.get(id.pool as usize) {
            prefetch::lines(session, size_of::<Option<Session>>());
        }
    }

    /// Starts loading a slot alone: for ids that are mostly lingering records (timers come due
    /// a linger after their sessions closed), whose pool places would be loaded for nothing.
    pub fn prefetch_slot(&self, id: SessionId) {
        if let Some(slot) = self.slots.get(id.index as usize) {
            prefetch::lines(slot, size_of::<Slot>());
        }
    }

    /// Starts loading what a live session keeps outside its record and a reply reads (its
    /// request boundaries, past the first few): call after [`Table::prefetch`] of a batch,
    /// when the records are on their way.
    pub fn prefetch_outside(&self, id: SessionId) {
        if let Some(Entry::Live(s)) = self.get(id) {
            s.prefetch_outside();
        }
    }

    /// The live sessions.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.occupied().filter_map(|(id, e)| match e {
            Entry::Live(s) => Some((id, s)),
            Entry::Lingering(_) => None,
        })
    }

    /// Every id held, live or lingering.
    pub fn ids(&self) -> Vec<SessionId> {
        self.occupied().map(|(id, _)| id).collect()
    }

    fn occupied(&self) -> impl Iterator<Item = (SessionId, Entry<&Session, &TimeWait>)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            let (pool, entry) = match slot.state.as_ref()? {
                State::Live(pool) => (*pool, Entry::Live(self.pool[*pool as usize].as_ref()?)),
                // No place in the pool: a lingering record is reached through its slot alone.
                State::Lingering(record) => (u32::MAX, Entry::Lingering(record)),
            };
            Some((SessionId { index: index as u32, generation: slot.generation, pool }, entry))
        })
    }
}

/// The occupied slot `id` names, if its generation still holds it.
fn slot_in(slots: &mut [Slot], id: SessionId) -> Option<&mut Slot> {
    slots.get_mut(id.index as usize).filter(|s| s.generation == id.generation && s.state.is_some())
}

#[cfg(test)]
mod tests {
    use common::{endpoint::Endpoint, seq::SeqNum};

    use super::*;
    use crate::{session::SynParams, time_wait::Closed};

    fn key(port: u16) -> CaptureKey {
        (Endpoint::v4([10, 0, 0, 2], port), Endpoint::v4([10, 0, 0, 1], 80), 0)
    }

    fn session(port: u16) -> Session {
        let syn = SynParams {
            isn: SeqNum(port as u32),
            mss: 1460,
            window_scale: None,
            sack_permitted: false,
            timestamps: false,
        };
        Session::new(Endpoint::v4([10, 0, 0, 2], port), Endpoint::v4([10, 0, 0, 3], 80), syn, None, false, 0)
    }

    fn record(s: &Session) -> TimeWait {
        let closed = Closed {
            replay_client: s.replay_client,
            target: s.target,
            client_isn: s.client_isn(),
            seq: s.client_isn() + 1,
            ack: SeqNum(0),
            ts_recent: None,
            quiet: 1,
        };
        TimeWait::new(closed, 0, None)
    }

    #[test]
    fn an_id_reaches_its_session_until_removed_and_never_the_slots_next_occupant() {
        let mut t = Table::default();
        let a = t.insert(key(1), session(1));
        assert_eq!(t.session_mut(a).map(|s| s.replay_client.port), Some(1));
        assert_eq!(t.key(a), Some(key(1)));
        let (k, entry) = t.remove(a).expect("held");
        assert!(k == key(1) && matches!(entry, Entry::Live(_)));
        assert!(t.get(a).is_none() && t.remove(a).is_none(), "a removed id reaches nothing");
        let b = t.insert(key(2), session(2));
        assert_ne!(a, b, "the slot is reused under another generation");
        assert!(t.get(a).is_none(), "the old id does not reach the new session");
        assert_eq!(t.session_mut(b).map(|s| s.replay_client.port), Some(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_lingering_record_gives_its_sessions_place_to_the_next_session() {
        let mut t = Table::default();
        let a = t.insert(key(1), session(1));
        let tw = record(t.session_mut(a).unwrap());
        t.linger(a, tw);
        let b = t.insert(key(2), session(2));
        assert_eq!((t.slots.len(), t.pool.len()), (2, 1), "a slot each, one place in the pool");
        assert!(matches!(t.get(a), Some(Entry::Lingering(r)) if r.replay_client.port == 1));
        assert_eq!(t.session_mut(b).map(|s| s.replay_client.port), Some(2));
        assert!(t.ids().contains(&a), "a record's id is the id its session had");
        assert!(matches!(t.remove(b), Some((_, Entry::Live(s))) if s.replay_client.port == 2));
        assert!(matches!(t.get(a), Some(Entry::Lingering(_))), "the record stays when its place is vacated");
    }

    #[test]
    fn a_lingering_session_keeps_its_id_and_key_but_is_no_longer_live() {
        let mut t = Table::default();
        let (a, b) = (t.insert(key(1), session(1)), t.insert(key(2), session(2)));
        let tw = record(t.session_mut(a).unwrap());
        assert_eq!(t.linger(a, tw).map(|s| s.replay_client.port), Some(1), "the live session is handed back");
        assert!(matches!(t.get(a), Some(Entry::Lingering(_))) && t.session_mut(a).is_none());
        assert_eq!(t.key(a), Some(key(1)));
        let tw = record(t.session_mut(b).unwrap());
        assert!(t.linger(a, tw).is_none(), "only a live session lingers");
        assert!(matches!(t.get(a), Some(Entry::Lingering(t)) if t.replay_client.port == 1), "the first record stays");
        assert_eq!(t.sessions().map(|(id, _)| id).collect::<Vec<_>>(), vec![b]);
        let mut ids = t.ids();
        ids.sort_by_key(|id| id.index);
        assert_eq!((ids, t.len()), (vec![a, b], 2));
        assert!(matches!(t.remove(a), Some((_, Entry::Lingering(_)))));
        assert_eq!(t.len(), 1);
    }
}
