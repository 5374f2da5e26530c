//! One partition's user states (plain data; the actor wraps it).

use crate::dataset::EventKind;
use crate::features::{StateParams, UserState};
use std::collections::HashMap;
use std::sync::Arc;

/// An event ready to apply: ids resolved, item categories looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedEvent {
    pub user_id: String,
    pub item_key: u64,
    pub categories: Vec<u16>,
    pub ts: i64,
    pub kind: EventKind,
    pub weight: f32,
}

#[derive(Default)]
pub struct UserStore {
    /// Copy-on-write: a request holds an `Arc` while events keep applying.
    users: HashMap<String, Arc<UserState>>,
    /// What the states and their ids hold, in bytes (`footprint`).
    bytes: usize,
}

/// Bytes one entry holds: the state, its id and the map's slot.
fn entry_bytes(id: &str, s: &UserState) -> usize {
    s.footprint() + id.len() + std::mem::size_of::<(String, Arc<UserState>)>()
}

impl UserStore {
    pub fn get(&self, user_id: &str) -> Option<Arc<UserState>> {
        self.users.get(user_id).cloned()
    }

    pub fn apply(&mut self, e: &AppliedEvent, params: &StateParams) {
        use std::collections::hash_map::Entry;
        // a new entry adds all of it; an old one what it grew by
        let (state, before) = match self.users.entry(e.user_id.clone()) {
            Entry::Occupied(o) => {
                let before = entry_bytes(&e.user_id, o.get());
                (o.into_mut(), before)
            }
            Entry::Vacant(v) => (v.insert(Arc::default()), 0),
        };
        Arc::make_mut(state).apply(e.item_key, &e.categories, e.ts, e.kind, e.weight, params);
        let after = entry_bytes(&e.user_id, state);
        self.bytes = (self.bytes + after).saturating_sub(before);
    }

    /// Adds states for users this partition does not know yet; users it
    /// already tracks keep their live state (it includes events the
    /// incoming snapshot may not).
    pub fn seed(&mut self, states: Vec<(String, UserState)>) -> usize {
        let mut added = 0;
        for (id, s) in states {
            if let std::collections::hash_map::Entry::Vacant(v) = self.users.entry(id) {
                self.bytes += entry_bytes(v.key(), &s);
                v.insert(Arc::new(s));
                added += 1;
            }
        }
        added
    }

    /// Drops the states of the users `keep` refuses (a user partition this
    /// node no longer holds); answers how many went.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let before = self.users.len();
        let mut freed = 0;
        self.users.retain(|id, s| {
            let k = keep(id);
            if !k {
                freed += entry_bytes(id, s);
            }
            k
        });
        self.bytes = self.bytes.saturating_sub(freed);
        before - self.users.len()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Bytes the states hold (an estimate from what they allocated).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_state_does_not_change_under_later_events() {
        let p = StateParams::default();
        let mut s = UserStore::default();
        let ev = |item| AppliedEvent {
            user_id: "u".into(),
            item_key: item,
            categories: vec![],
            ts: 1,
            kind: EventKind::Click,
            weight: 0.0,
        };
        s.apply(&ev(1), &p);
        let held = s.get("u").unwrap();
        s.apply(&ev(2), &p);
        assert_eq!(held.events, 1);
        assert_eq!(s.get("u").unwrap().events, 2);
        // seeding never overwrites a live user
        assert_eq!(
            s.seed(vec![
                ("u".into(), UserState::default()),
                ("v".into(), UserState::default())
            ]),
            1
        );
        assert_eq!(s.get("u").unwrap().events, 2);
        assert_eq!(s.len(), 2);
        // the estimate is what the entries hold now
        let want: usize = ["u", "v"]
            .iter()
            .map(|id| entry_bytes(id, &s.get(id).unwrap()))
            .sum();
        assert_eq!(s.bytes(), want);
        // dropping a user gives back exactly what it held
        let v_bytes = entry_bytes("v", &s.get("v").unwrap());
        assert_eq!(s.retain(|id| id != "v"), 1);
        assert!(s.get("v").is_none());
        assert_eq!(s.bytes(), want - v_bytes);
    }
}
