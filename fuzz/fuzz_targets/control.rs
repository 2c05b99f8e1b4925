//! Sequences of frames from several copiers on the intercept's control channel, applied as the
//! intercept's server applies them: ownership must match a model in which nobody's live
//! endpoint ever changes hands, limits hold, and a copier that breaks a rule is disconnected.
#![no_main]

use std::collections::{HashMap, HashSet};

use common::{
    endpoint::Endpoint,
    proto::{self, Message},
};
use intercept_core::router::{CopierId, Ownership};
use libfuzzer_sys::fuzz_target;

const PER_COPIER: usize = 48;
const TOTAL: usize = 96;

/// Who owns what, as the rules say.
#[derive(Default)]
struct Model {
    exact: HashMap<Endpoint, CopierId>,
    whole: HashMap<[u8; 16], CopierId>,
}

impl Model {
    fn owned_by(&self, copier: CopierId) -> usize {
        self.exact.values().chain(self.whole.values()).filter(|&&c| c == copier).count()
    }

    /// Applies one claim; false if the rules refuse it.
    fn own(&mut self, copier: CopierId, e: Endpoint) -> bool {
        let current = if e.port == 0 { self.whole.get(&e.addr) } else { self.exact.get(&e) };
        match current {
            Some(&c) if c == copier => return true,
            Some(_) => return false,
            None => {}
        }
        if e.port != 0 && self.whole.get(&e.addr).is_some_and(|&c| c != copier) {
            return false;
        }
        if self.owned_by(copier) >= PER_COPIER || self.exact.len() + self.whole.len() >= TOTAL {
            return false;
        }
        if e.port == 0 {
            self.whole.insert(e.addr, copier);
        } else {
            self.exact.insert(e, copier);
        }
        true
    }

    fn disown(&mut self, copier: CopierId, e: Endpoint) {
        if e.port == 0 {
            if self.whole.get(&e.addr) == Some(&copier) {
                self.whole.remove(&e.addr);
            }
        } else if self.exact.get(&e) == Some(&copier) {
            self.exact.remove(&e);
        }
    }

    fn remove(&mut self, copier: CopierId) {
        self.exact.retain(|_, c| *c != copier);
        self.whole.retain(|_, c| *c != copier);
    }

    fn owner(&self, e: &Endpoint) -> Option<CopierId> {
        self.exact.get(e).or_else(|| self.whole.get(&e.addr)).copied()
    }
}

/// Endpoints from a small space, so that copiers collide.
fn endpoint(b: &[u8]) -> Endpoint {
    Endpoint::v4([10, 0, 0, b[0] % 4], u16::from(b[1] % 6))
}

fuzz_target!(|data: &[u8]| {
    let mut ownership = Ownership::with_limits(PER_COPIER, TOTAL);
    let mut model = Model::default();
    let mut touched = HashSet::new();
    // Each step: a copier (0..4), then either a compact announcement or a raw frame.
    let mut rest = data;
    while let [who, how, tail @ ..] = rest {
        let copier = CopierId::from(*who % 4);
        let (own, entries, used): (Option<bool>, Vec<Endpoint>, usize) = match how % 4 {
            0 | 1 => {
                let n = (tail.first().copied().unwrap_or(0) % 8) as usize;
                let bytes = tail.get(1..1 + 2 * n).unwrap_or(&[]);
                (Some(how % 4 == 0), bytes.chunks_exact(2).map(endpoint).collect(), 1 + bytes.len())
            }
            2 => (None, Vec::new(), 0), // the copier disconnects
            _ => match proto::decode(tail) {
                Ok(Some((Message::Own(e), used))) => (Some(true), e.collect(), used),
                Ok(Some((Message::Disown(e), used))) => (Some(false), e.collect(), used),
                Ok(Some((_, used))) => (Some(true), Vec::new(), used),
                // Garbage: the server closes that connection.
                _ => (None, Vec::new(), tail.len()),
            },
        };
        match own {
            Some(true) => {
                let accepted = entries.iter().all(|&e| model.own(copier, e));
                let claimed = ownership.own_all(copier, &entries);
                assert_eq!(claimed.is_ok(), accepted, "{entries:?}");
                if claimed.is_err() {
                    // The server refuses the claim and closes the connection.
                    ownership.remove_copier(copier);
                    model.remove(copier);
                }
            }
            Some(false) => {
                entries.iter().for_each(|&e| model.disown(copier, e));
                ownership.disown_all(copier, &entries);
            }
            None => {
                ownership.remove_copier(copier);
                model.remove(copier);
            }
        }
        assert_eq!(ownership.len(), model.exact.len() + model.whole.len());
        assert!(ownership.len() <= TOTAL);
        // What this step touched, here; everything ever touched, at the end (once per input,
        // not per step, so that long sequences stay cheap to run).
        for e in &entries {
            assert_eq!(ownership.owner(e), model.owner(e), "{e:?}");
        }
        touched.extend(entries);
        rest = tail.get(used..).unwrap_or(&[]);
    }
    for e in &touched {
        assert_eq!(ownership.owner(e), model.owner(e), "{e:?}");
    }
});
