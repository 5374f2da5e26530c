//! The evaluation protocol's data split (docs: EVAL_PROTOCOL.md): variant
//! filter, de-duplication, dropping users with fewer than 5 interactions,
//! and the temporal per-user holdout of the last 20% (rounded up, at least
//! one), applied once for "test" and again inside the training part for
//! "val".

use crate::dataset::{Dataset, EventKind, Interaction};
use crate::sparse::Csr;
use serde::{Deserialize, Serialize};

/// Users with fewer interactions (after the variant filter) are dropped.
pub const MIN_USER_INTERACTIONS: usize = 5;

/// Which interactions count as positives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Variant {
    /// Every interaction.
    All,
    /// Only ratings >= the threshold; other event kinds always count.
    MinRating(f32),
}

impl Variant {
    pub fn name(&self) -> String {
        match self {
            Variant::All => "all".into(),
            Variant::MinRating(r) => format!("pos{r}"),
        }
    }

    fn keeps(&self, x: &Interaction) -> bool {
        match self {
            Variant::All => true,
            Variant::MinRating(min) => x.kind != EventKind::Rate || x.value >= *min,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Val,
    Test,
}

/// Counts that describe a split, so another implementation of the protocol
/// can check it built the same one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    pub n_users: usize,
    pub n_items: usize,
    pub n_train: usize,
    pub n_heldout: usize,
    pub n_heldout_in_catalog: usize,
    pub n_catalog: usize,
    pub n_eval_users: usize,
    pub n_duplicates_dropped: usize,
    pub n_users_dropped: usize,
}

/// One phase of the protocol with local dense indices: users and items are
/// numbered in ascending dataset index (= canonical raw id order).
#[derive(Debug, Clone)]
pub struct Split {
    pub phase: Phase,
    pub n_users: usize,
    pub n_items: usize,
    /// local user -> dataset user index
    pub user_ds: Vec<u32>,
    /// local item -> dataset item index
    pub item_ds: Vec<u32>,
    /// Training interactions (local indices), sorted by (ts, user, item).
    pub train: Vec<Interaction>,
    /// Binary user x item training matrix.
    pub train_matrix: Csr,
    /// Item has at least one training interaction.
    pub catalog: Vec<bool>,
    /// Users with at least one target, ascending.
    pub eval_users: Vec<u32>,
    /// Per eval user: held-out items that are in the catalogue, ascending.
    pub targets: Vec<Vec<u32>>,
    /// Per eval user: their held-out interactions in time order (all of them,
    /// also items outside the catalogue), for request-time context.
    pub heldout: Vec<Vec<Interaction>>,
    pub stats: SplitStats,
}

impl Split {
    pub fn n_catalog(&self) -> usize {
        self.catalog.iter().filter(|&&c| c).count()
    }

    /// The same split with items renumbered over the catalogue only: items
    /// without a training interaction can never be ranked, so models need
    /// not know them (and a bundle exported from this split serves exactly
    /// the items the protocol ranks). Order, hence tie-breaks, is kept.
    pub fn restrict_to_catalog(&self) -> Split {
        let mut to_cat = vec![u32::MAX; self.n_items];
        let mut item_ds = Vec::new();
        for (i, &in_catalog) in self.catalog.iter().enumerate().take(self.n_items) {
            if in_catalog {
                to_cat[i] = item_ds.len() as u32;
                item_ds.push(self.item_ds[i]);
            }
        }
        let remap = |xs: &[Interaction]| -> Vec<Interaction> {
            xs.iter()
                .filter(|x| to_cat[x.item as usize] != u32::MAX)
                .map(|x| Interaction {
                    item: to_cat[x.item as usize],
                    ..*x
                })
                .collect()
        };
        let train = remap(&self.train);
        let n_items = item_ds.len();
        let triples: Vec<(u32, u32, f32)> = train.iter().map(|x| (x.user, x.item, 1.0)).collect();
        Split {
            phase: self.phase,
            n_users: self.n_users,
            n_items,
            user_ds: self.user_ds.clone(),
            item_ds,
            train_matrix: Csr::from_triples(self.n_users, n_items, &triples),
            train,
            catalog: vec![true; n_items],
            eval_users: self.eval_users.clone(),
            targets: self
                .targets
                .iter()
                .map(|t| t.iter().map(|&i| to_cat[i as usize]).collect())
                .collect(),
            heldout: self.heldout.iter().map(|h| remap(h)).collect(),
            stats: self.stats.clone(),
        }
    }
}

/// Both phases of the protocol.
#[derive(Debug, Clone)]
pub struct ProtocolSplits {
    pub variant: Variant,
    pub val: Split,
    pub test: Split,
}

/// ceil(n / 5), at least 1.
pub fn holdout_count(n: usize) -> usize {
    n.div_ceil(5).max(1)
}

/// Why the protocol cannot be applied to a dataset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// No user keeps enough interactions under the variant's filter.
    #[error(
        "no user has {MIN_USER_INTERACTIONS} or more interactions under variant {variant}; \
         the protocol needs at least one"
    )]
    NoEligibleUser { variant: String },
}

/// Builds the val and test phases from a canonicalized dataset.
pub fn protocol_splits(ds: &Dataset, variant: Variant) -> Result<ProtocolSplits, SplitError> {
    // variant filter, then keep the earliest occurrence of each (user, item)
    let kept: Vec<Interaction> = ds
        .interactions
        .iter()
        .copied()
        .filter(|x| variant.keeps(x))
        .collect();
    let n_before = kept.len();
    let deduped = dedup_earliest(kept);
    let n_dups = n_before - deduped.len();

    let mut per_user: Vec<Vec<Interaction>> = vec![Vec::new(); ds.users.len()];
    for x in deduped {
        per_user[x.user as usize].push(x);
    }
    let users_with_any = per_user.iter().filter(|v| !v.is_empty()).count();
    let kept_users: Vec<u32> = (0..per_user.len() as u32)
        .filter(|&u| per_user[u as usize].len() >= MIN_USER_INTERACTIONS)
        .collect();
    if kept_users.is_empty() {
        return Err(SplitError::NoEligibleUser {
            variant: variant.name(),
        });
    }
    let mut item_used = vec![false; ds.items.len()];
    for &u in &kept_users {
        for x in &per_user[u as usize] {
            item_used[x.item as usize] = true;
        }
    }
    let item_ds: Vec<u32> = (0..item_used.len() as u32)
        .filter(|&i| item_used[i as usize])
        .collect();
    let mut item_local = vec![u32::MAX; ds.items.len()];
    for (l, &i) in item_ds.iter().enumerate() {
        item_local[i as usize] = l as u32;
    }

    // local indices, each user's list sorted by (ts, item)
    let mut lists: Vec<Vec<Interaction>> = kept_users
        .iter()
        .enumerate()
        .map(|(lu, &u)| {
            let mut v: Vec<Interaction> = per_user[u as usize]
                .iter()
                .map(|x| Interaction {
                    user: lu as u32,
                    item: item_local[x.item as usize],
                    ..*x
                })
                .collect();
            v.sort_by_key(|x| (x.ts, x.item));
            v
        })
        .collect();

    let n_users = kept_users.len();
    let n_items = item_ds.len();
    let dropped = users_with_any - n_users;

    let (test_train, test_held) = temporal_holdout(&lists);
    let test = make_split(
        Phase::Test,
        n_users,
        n_items,
        &kept_users,
        &item_ds,
        test_train.clone(),
        test_held,
        n_dups,
        dropped,
    );
    // validation: the same rule inside each user's training part
    lists = test_train;
    let (val_train, val_held) = temporal_holdout(&lists);
    let val = make_split(
        Phase::Val,
        n_users,
        n_items,
        &kept_users,
        &item_ds,
        val_train,
        val_held,
        n_dups,
        dropped,
    );
    Ok(ProtocolSplits { variant, val, test })
}

/// Keeps the first occurrence of each (user, item) pair in input order,
/// which for a canonical dataset is (ts, user, item) order.
fn dedup_earliest(xs: Vec<Interaction>) -> Vec<Interaction> {
    let mut seen = std::collections::HashSet::with_capacity(xs.len());
    xs.into_iter()
        .filter(|x| seen.insert((x.user, x.item)))
        .collect()
}

/// The protocol's temporal holdout per user: (first part, last ceil(20%)
/// part). Each input list must be in time order.
pub fn temporal_holdout(
    lists: &[Vec<Interaction>],
) -> (Vec<Vec<Interaction>>, Vec<Vec<Interaction>>) {
    lists
        .iter()
        .map(|v| {
            let h = holdout_count(v.len()).min(v.len());
            (v[..v.len() - h].to_vec(), v[v.len() - h..].to_vec())
        })
        .unzip()
}

#[allow(clippy::too_many_arguments)]
fn make_split(
    phase: Phase,
    n_users: usize,
    n_items: usize,
    user_ds: &[u32],
    item_ds: &[u32],
    train_lists: Vec<Vec<Interaction>>,
    held_lists: Vec<Vec<Interaction>>,
    n_dups: usize,
    dropped: usize,
) -> Split {
    let mut train: Vec<Interaction> = train_lists.into_iter().flatten().collect();
    train.sort_by_key(|x| (x.ts, x.user, x.item));
    let triples: Vec<(u32, u32, f32)> = train.iter().map(|x| (x.user, x.item, 1.0)).collect();
    let train_matrix = Csr::from_triples(n_users, n_items, &triples);
    let mut catalog = vec![false; n_items];
    for x in &train {
        catalog[x.item as usize] = true;
    }
    let mut eval_users = Vec::new();
    let mut targets = Vec::new();
    let mut heldout = Vec::new();
    let mut n_held = 0;
    let mut n_held_in = 0;
    for (u, held) in held_lists.into_iter().enumerate() {
        n_held += held.len();
        let mut t: Vec<u32> = held
            .iter()
            .map(|x| x.item)
            .filter(|&i| catalog[i as usize])
            .collect();
        t.sort_unstable();
        n_held_in += t.len();
        if !t.is_empty() {
            eval_users.push(u as u32);
            targets.push(t);
            heldout.push(held);
        }
    }
    let stats = SplitStats {
        n_users,
        n_items,
        n_train: train.len(),
        n_heldout: n_held,
        n_heldout_in_catalog: n_held_in,
        n_catalog: catalog.iter().filter(|&&c| c).count(),
        n_eval_users: eval_users.len(),
        n_duplicates_dropped: n_dups,
        n_users_dropped: dropped,
    };
    Split {
        phase,
        n_users,
        n_items,
        user_ds: user_ds.to_vec(),
        item_ds: item_ds.to_vec(),
        train,
        train_matrix,
        catalog,
        eval_users,
        targets,
        heldout,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdMap;

    fn ds(rows: &[(&str, &str, i64, f32)]) -> Dataset {
        let mut d = Dataset::default();
        for &(u, i, ts, r) in rows {
            let user = d.users.intern(u);
            let item = d.items.intern(i);
            d.interactions.push(Interaction {
                user,
                item,
                ts,
                kind: EventKind::Rate,
                value: r,
            });
        }
        d.canonicalize()
    }

    #[test]
    fn holdout_counts_round_up() {
        assert_eq!([1, 4, 5, 6, 10, 11].map(holdout_count), [1, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn tiny_log_split_by_hand() {
        // a: 6 interactions -> test = last 2 (5, 6); train 10,2,3,4 -> val = 4
        // d: 5 interactions -> test = last 1 (4); train 5,6,2,3 -> val = 3
        // b: 4 interactions -> dropped; c: 5 rows but one duplicate -> dropped
        let mut rows = vec![];
        for (k, i) in ["10", "2", "3", "4", "5", "6"].iter().enumerate() {
            rows.push(("a", *i, 100 + k as i64, 5.0));
        }
        for (k, i) in ["5", "6", "2", "3", "4"].iter().enumerate() {
            rows.push(("d", *i, k as i64, 5.0));
        }
        for i in ["2", "3", "4", "7"] {
            rows.push(("b", i, 50, 3.0));
        }
        for (k, i) in ["2", "3", "4", "8", "2"].iter().enumerate() {
            rows.push(("c", *i, k as i64, 4.0));
        }
        let d = ds(&rows);
        let s = protocol_splits(&d, Variant::All).unwrap();
        assert_eq!(s.test.n_users, 2);
        assert_eq!(s.test.stats.n_duplicates_dropped, 1);
        assert_eq!(s.test.stats.n_users_dropped, 2);
        // items 7 and 8 only belong to dropped users; the rest in numeric order
        let name = |i: u32| d.items.external(s.test.item_ds[i as usize]).to_string();
        assert_eq!(
            (0..6).map(name).collect::<Vec<_>>(),
            vec!["2", "3", "4", "5", "6", "10"]
        );
        assert_eq!(s.test.eval_users, vec![0, 1]);
        assert_eq!(s.test.targets, vec![vec![3, 4], vec![2]]);
        assert_eq!(s.test.stats.n_train, 8);
        // val: a's target 4 is not in the val catalogue (only a and d's first
        // parts: 10,2,3 and 5,6,2), so only d is evaluated, on item 3
        assert_eq!(s.val.eval_users, vec![1]);
        assert_eq!(s.val.targets, vec![vec![1]]);
        assert_eq!(s.val.stats.n_train, 6);
        assert_eq!(s.val.stats.n_heldout, 2);
    }

    #[test]
    fn restricting_to_the_catalogue_keeps_order_and_targets() {
        let mut rows = vec![];
        for (k, i) in ["10", "2", "3", "4", "5", "6"].iter().enumerate() {
            rows.push(("a", *i, 100 + k as i64, 5.0));
        }
        for (k, i) in ["5", "6", "2", "3", "4"].iter().enumerate() {
            rows.push(("d", *i, k as i64, 5.0));
        }
        let d = ds(&rows);
        let s = protocol_splits(&d, Variant::All).unwrap();
        // val catalogue lacks item "4" (only in held-out parts)
        let r = s.val.restrict_to_catalog();
        assert_eq!(r.n_items, s.val.n_catalog());
        let names: Vec<&str> = r.item_ds.iter().map(|&i| d.items.external(i)).collect();
        assert_eq!(names, vec!["2", "3", "5", "6", "10"]);
        assert_eq!(r.targets, vec![vec![1]]);
        assert_eq!(r.train.len(), s.val.train.len());
        assert!(r.heldout[0].iter().all(|x| (x.item as usize) < r.n_items));
    }

    #[test]
    fn heldout_items_outside_catalog_are_not_targets() {
        // two users; item "z" only appears in a's held-out tail
        let mut rows = vec![];
        for (k, i) in ["p", "q", "r", "s", "z"].iter().enumerate() {
            rows.push(("a", *i, k as i64, 1.0));
        }
        for (k, i) in ["p", "q", "r", "s", "t"].iter().enumerate() {
            rows.push(("b", *i, k as i64, 1.0));
        }
        let s = protocol_splits(&ds(&rows), Variant::All).unwrap();
        // a's only target z is not in the training catalogue -> a not evaluated
        assert_eq!(s.test.stats.n_heldout, 2);
        assert_eq!(s.test.stats.n_heldout_in_catalog, 0);
        assert_eq!(s.test.stats.n_eval_users, 0);
    }

    #[test]
    fn min_rating_variant_filters_ratings() {
        let mut rows = vec![];
        for k in 0..6 {
            rows.push((
                "a",
                ["1", "2", "3", "4", "5", "6"][k],
                k as i64,
                if k == 0 { 2.0 } else { 4.0 },
            ));
        }
        let s = protocol_splits(&ds(&rows), Variant::MinRating(4.0)).unwrap();
        assert_eq!(s.test.stats.n_train + s.test.stats.n_heldout, 5);
        let all = protocol_splits(&ds(&rows), Variant::All).unwrap();
        assert_eq!(all.test.stats.n_train + all.test.stats.n_heldout, 6);
        let _ = IdMap::new();
    }

    #[test]
    fn no_eligible_user_is_an_error() {
        let err = protocol_splits(&ds(&[("a", "1", 0, 1.0)]), Variant::All).unwrap_err();
        assert!(matches!(err, SplitError::NoEligibleUser { .. }), "{err}");
        assert!(err.to_string().contains("5 or more"), "{err}");
    }
}
