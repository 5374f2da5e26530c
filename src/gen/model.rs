//! The generative model: a catalogue with latent structure, user profiles,
//! and the per-user event process (see the `gen` module doc for the story).
//!
//! Owns: `World` (everything shared by all users, built once from the
//! parameters), `UserProfile`, and `World::user_events`, the single place
//! where interactions are drawn. Must not touch: files or `Dataset` assembly
//! (`write` and `mod.rs` do that), so both outputs share one code path.
//!
//! Reproducibility: every random decision comes from a stream derived from
//! (seed, family, index) — one stream per item, per user profile, per user
//! event sequence — so a user's rows never depend on which thread made them
//! or on what other users drew.

use super::names;
use super::params::GenParams;
use super::sampling::{running_sum, sample_cum, sample_in, TimeTable};
use crate::dataset::{EventKind, Gender, Interaction};
use crate::rng::Rng;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

const DAY: i64 = 86_400;

// Families of random streams; each is derived into one stream per index.
const FAMILY_CLUSTERS: u64 = 1;
const FAMILY_ITEMS: u64 = 2;
const FAMILY_ITEM_ORDER: u64 = 3;
const FAMILY_ITEM_ATTRS: u64 = 4;
const FAMILY_USERS: u64 = 5;
const FAMILY_ACTIVITY: u64 = 6;
const FAMILY_EVENTS: u64 = 7;

/// Cluster c holds a share ~ (c+1)^-0.8 of the catalogue and of users'
/// primary tastes: a few mainstream clusters and a long tail of niches.
const CLUSTER_SIZE_EXPONENT: f64 = 0.8;
/// Item weight ~ (rank+1)^-1.05 over a random global popularity rank.
const POPULARITY_EXPONENT: f64 = 1.05;
/// New items start out more attractive than their rank alone says.
const NEW_ITEM_BOOST: f64 = 2.0;
/// Catalogue items that predate the log were created within this time.
const OLD_ITEM_MAX_AGE: i64 = 365 * DAY;
/// New items arrive during this final share of the time span.
const NEW_ITEM_PERIOD: f64 = 0.2;
/// Sigma of the log-normal user activity: many light users, a few heavy.
const ACTIVITY_SIGMA: f64 = 1.0;
/// Every user gets at least this many events when the total allows it.
const MIN_EVENTS_PER_USER: u64 = 5;
/// Chance to continue from the previous item (sequential coherence).
const P_SEQUENTIAL_IN_SESSION: f64 = 0.5;
/// Weaker at a session's first event: a new visit often starts afresh.
const P_SEQUENTIAL_SESSION_START: f64 = 0.2;
/// Chance of a globally popular item regardless of taste.
const P_GLOBAL_POPULAR: f64 = 0.1;
/// Chance (once new items exist) of a recently created item in a taste cluster.
const P_FRESH: f64 = 0.1;
/// Within a taste draw, chance of the user's own niche of the cluster
/// rather than the cluster's popular items.
const P_NICHE: f64 = 0.5;
/// Proposals per event before the event is skipped (all seen / not yet
/// created); keeps heavy users from looping forever.
const MAX_ATTEMPTS: usize = 16;
/// Further proposals, uniform over a taste cluster, before skipping.
const MAX_UNIFORM_ATTEMPTS: usize = 8;
/// Mean seconds between events of one session.
const MEAN_GAP_SECS: f64 = 75.0;

/// A fast hasher for `u32` item indices: the per-user "seen" set is probed
/// for every proposal, and SipHash would dominate the event loop.
#[derive(Default)]
pub(crate) struct ItemHasher(u64);

impl Hasher for ItemHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

pub(crate) type SeenSet = HashSet<u32, BuildHasherDefault<ItemHasher>>;

#[derive(Debug, Clone, Copy)]
struct ItemInfo {
    created: i64,
    cluster: u32,
    /// Position in the cluster's latent order (`ClusterTables::by_pos`).
    slot: u32,
}

/// One taste cluster's items in latent order (`by_pos`, cumulative
/// popularity along it) and in time order.
#[derive(Debug, Default)]
struct ClusterTables {
    by_pos: Vec<u32>,
    pos_cum: Vec<f64>,
    by_time: TimeTable,
}

impl ClusterTables {
    /// A popularity-weighted item among the latent neighbours of `slot`.
    fn sample_near(&self, slot: usize, half_width: usize, rng: &mut Rng) -> Option<u32> {
        let lo = slot.saturating_sub(half_width);
        let hi = (slot + half_width + 1).min(self.by_pos.len());
        sample_in(&self.pos_cum, lo, hi, rng).map(|k| self.by_pos[k])
    }

    /// Latent neighbourhood used for "more like the previous item".
    fn sequential_half_width(&self) -> usize {
        (self.by_pos.len() / 64).clamp(4, 128)
    }

    /// Wider neighbourhood used for a user's personal niche of the cluster.
    fn niche_half_width(&self) -> usize {
        // Capped so a niche stays a niche in million-item catalogues (and
        // its running sums stay cache-sized).
        (self.by_pos.len() / 8).clamp(8, 1024)
    }
}

/// Demographic leanings of a cluster's fans (mild: most users get generic
/// draws).
#[derive(Debug, Clone)]
struct ClusterProfile {
    home_categories: [u16; 2],
    age_center: f64,
    female_share: f64,
    occupation: u16,
}

/// A user's fixed traits; a pure function of (seed, user).
#[derive(Debug, Clone)]
pub(crate) struct UserProfile {
    /// 1-3 distinct taste clusters, strongest first.
    pub taste: [u32; 3],
    taste_cum: [f64; 3],
    pub taste_len: usize,
    /// The user's preferred latent position (0..1) in each taste cluster.
    niche: [f64; 3],
    pub age: u16,
    pub gender: Gender,
    pub occupation: u16,
    /// Share of the span that passes before the user's first visit.
    join_fraction: f64,
}

impl UserProfile {
    fn sample_taste(&self, rng: &mut Rng) -> usize {
        let x = rng.f64() * self.taste_cum[self.taste_len - 1];
        self.taste_cum[..self.taste_len]
            .iter()
            .position(|&c| x < c)
            .unwrap_or(self.taste_len - 1)
    }

    pub fn likes_cluster(&self, cluster: u32) -> bool {
        self.taste[..self.taste_len].contains(&cluster)
    }
}

/// Everything shared by all users: catalogue, samplers, per-user budgets.
#[derive(Debug)]
pub(crate) struct World {
    pub start: i64,
    pub end: i64,
    /// New items are created in [new_from, end).
    pub new_from: i64,
    fresh_window: i64,
    categories: u16,
    /// Per item, packed so the event loop touches one cache line per item.
    items: Vec<ItemInfo>,
    clusters: Vec<ClusterTables>,
    cluster_cum: Vec<f64>,
    cluster_profiles: Vec<ClusterProfile>,
    global: TimeTable,
    /// Events to draw per user; sums to the requested interactions.
    pub budgets: Vec<u32>,
    item_attr_seed: u64,
    user_seed: u64,
    event_seed: u64,
}

fn family_seed(seed: u64, family: u64) -> u64 {
    Rng::derive(seed, family).next_u64()
}
impl World {
    /// Builds the catalogue and budgets. `p` must be validated.
    pub fn build(p: &GenParams) -> World {
        let n_items = p.items as usize;
        let n_clusters = p.clusters as usize;
        let span = p.days as i64 * DAY;
        let start = p.start;
        let end = start + span;
        let new_from = end - (span as f64 * NEW_ITEM_PERIOD) as i64;

        let cluster_cum =
            running_sum((0..n_clusters).map(|c| ((c + 1) as f64).powf(-CLUSTER_SIZE_EXPONENT)));
        let cluster_profiles = cluster_profiles(p, n_clusters);

        // Popularity rank and newness come from two independent shuffles so
        // that they are exact in count and uncorrelated.
        let mut order_rng = Rng::derive(p.seed, FAMILY_ITEM_ORDER);
        let mut perm: Vec<u32> = (0..n_items as u32).collect();
        order_rng.shuffle(&mut perm);
        let mut rank = vec![0u32; n_items];
        for (r, &i) in perm.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        order_rng.shuffle(&mut perm);
        let n_new = (p.new_item_fraction * n_items as f64).round() as usize;
        let mut is_new = vec![false; n_items];
        for &i in &perm[..n_new] {
            is_new[i as usize] = true;
        }
        drop(perm);

        let item_seed = family_seed(p.seed, FAMILY_ITEMS);
        let mut item_cluster = vec![0u32; n_items];
        let mut item_pos = vec![0f64; n_items];
        let mut item_created = vec![0i64; n_items];
        let mut weight = vec![0f64; n_items];
        for i in 0..n_items {
            let mut rng = Rng::derive(item_seed, i as u64);
            // The first items seed every cluster so none is empty.
            item_cluster[i] = if i < n_clusters {
                i as u32
            } else {
                sample_cum(&cluster_cum, &mut rng) as u32
            };
            item_pos[i] = rng.f64();
            item_created[i] = if is_new[i] {
                new_from + rng.below((end - new_from) as u64) as i64
            } else {
                start - 1 - rng.below(OLD_ITEM_MAX_AGE as u64) as i64
            };
            let boost = if is_new[i] { NEW_ITEM_BOOST } else { 1.0 };
            weight[i] = boost * ((rank[i] + 1) as f64).powf(-POPULARITY_EXPONENT);
        }
        drop(rank);

        let mut members: Vec<Vec<u32>> = vec![Vec::new(); n_clusters];
        for (i, &c) in item_cluster.iter().enumerate() {
            members[c as usize].push(i as u32);
        }
        let mut item_pos_slot = vec![0u32; n_items];
        let clusters: Vec<ClusterTables> = members
            .into_iter()
            .map(|mut by_pos| {
                by_pos.sort_by(|&a, &b| {
                    item_pos[a as usize]
                        .total_cmp(&item_pos[b as usize])
                        .then(a.cmp(&b))
                });
                for (slot, &i) in by_pos.iter().enumerate() {
                    item_pos_slot[i as usize] = slot as u32;
                }
                let pos_cum = running_sum(by_pos.iter().map(|&i| weight[i as usize]));
                let by_time = TimeTable::build(by_pos.clone(), &item_created, &weight, start);
                ClusterTables {
                    by_pos,
                    pos_cum,
                    by_time,
                }
            })
            .collect();
        let global = TimeTable::build((0..n_items as u32).collect(), &item_created, &weight, start);

        World {
            start,
            end,
            new_from,
            fresh_window: (span / 8).clamp(DAY, 7 * DAY),
            categories: p.categories,
            items: (0..n_items)
                .map(|i| ItemInfo {
                    created: item_created[i],
                    cluster: item_cluster[i],
                    slot: item_pos_slot[i],
                })
                .collect(),
            clusters,
            cluster_cum,
            cluster_profiles,
            global,
            budgets: budgets(p),
            item_attr_seed: family_seed(p.seed, FAMILY_ITEM_ATTRS),
            user_seed: family_seed(p.seed, FAMILY_USERS),
            event_seed: family_seed(p.seed, FAMILY_EVENTS),
        }
    }

    /// How far apart two items of one cluster lie in its latent order.
    #[cfg(test)]
    pub fn slot_distance(&self, a: u32, b: u32) -> usize {
        let (a, b) = (self.items[a as usize].slot, self.items[b as usize].slot);
        a.abs_diff(b) as usize
    }

    pub fn cluster_of(&self, item: u32) -> u32 {
        self.items[item as usize].cluster
    }

    pub fn created_at(&self, item: u32) -> i64 {
        self.items[item as usize].created
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// Events budgeted for users in `users` (for sizing output buffers).
    pub fn budget_of(&self, users: std::ops::Range<u64>) -> u64 {
        self.budgets[users.start as usize..users.end as usize]
            .iter()
            .map(|&b| b as u64)
            .sum()
    }

    pub fn n_users(&self) -> usize {
        self.budgets.len()
    }

    /// 1-3 categories, sorted and unique, leaning to the cluster's home
    /// categories so that content features carry taste information.
    pub fn item_categories(&self, item: u32) -> Vec<u16> {
        let mut rng = Rng::derive(self.item_attr_seed, item as u64);
        let home = self.cluster_profiles[self.cluster_of(item) as usize].home_categories;
        let r = rng.f64();
        let count = if r < 0.5 {
            1
        } else if r < 0.85 {
            2
        } else {
            3
        };
        let mut cats = Vec::with_capacity(count);
        for k in 0..count {
            let r = rng.f64();
            let home_share = if k == 0 { 0.9 } else { 0.5 };
            let c = if r < home_share * 0.65 {
                home[0]
            } else if r < home_share {
                home[1]
            } else {
                rng.below(self.categories as u64) as u16
            };
            cats.push(c);
        }
        cats.sort_unstable();
        cats.dedup();
        cats
    }

    pub fn item_title(&self, item: u32) -> String {
        // A separate stream from the categories so either can change alone.
        let mut rng = Rng::derive(self.item_attr_seed ^ 0x7469_746c_6573, item as u64);
        names::title(rng.next_u64(), rng.next_u64(), rng.next_u64())
    }

    pub fn profile(&self, user: u32) -> UserProfile {
        let mut rng = Rng::derive(self.user_seed, user as u64);
        let n_clusters = self.clusters.len();
        let r = rng.f64();
        let wanted = if r < 0.35 {
            1
        } else if r < 0.75 {
            2
        } else {
            3
        };
        let wanted = wanted.min(n_clusters);
        let mut taste = [0u32; 3];
        let mut taste_len = 0;
        // Secondary tastes follow cluster sizes too; a few redraws settle
        // duplicates, and a user keeps fewer tastes if they do not.
        for _ in 0..wanted * 4 {
            if taste_len == wanted {
                break;
            }
            let c = sample_cum(&self.cluster_cum, &mut rng) as u32;
            if !taste[..taste_len].contains(&c) {
                taste[taste_len] = c;
                taste_len += 1;
            }
        }
        let first = 0.55 + 0.3 * rng.f64();
        let second_share = 0.5 + 0.5 * rng.f64();
        let weights = match taste_len {
            1 => [1.0, 0.0, 0.0],
            2 => [first, 1.0 - first, 0.0],
            _ => {
                let rest = 1.0 - first;
                [first, rest * second_share, rest * (1.0 - second_share)]
            }
        };
        let taste_cum = [weights[0], weights[0] + weights[1], 1.0];
        let niche = [rng.f64(), rng.f64(), rng.f64()];

        let leaning = &self.cluster_profiles[taste[0] as usize];
        let age = if rng.f64() < 0.7 {
            leaning.age_center + 9.0 * rng.normal()
        } else {
            15.0 + rng.below(61) as f64
        };
        let age = age.round().clamp(15.0, 75.0) as u16;
        let gender = if rng.f64() < 0.03 {
            Gender::Other
        } else if rng.f64() < leaning.female_share {
            Gender::Female
        } else {
            Gender::Male
        };
        let occupation = if rng.f64() < 0.4 {
            leaning.occupation
        } else {
            rng.below(names::OCCUPATIONS.len() as u64) as u16
        };
        let join_fraction = 0.5 * rng.f64().powi(2);
        UserProfile {
            taste,
            taste_cum,
            taste_len,
            niche,
            age,
            gender,
            occupation,
            join_fraction,
        }
    }

    /// Appends the user's interactions, in time order, to `out`; `seen` is
    /// scratch space (cleared here). Returns how many budgeted events were
    /// skipped because no unseen, already-created item was found.
    pub fn user_events(&self, user: u32, out: &mut Vec<Interaction>, seen: &mut SeenSet) -> u64 {
        seen.clear();
        let n = self.budgets[user as usize] as u64;
        if n == 0 {
            return 0;
        }
        let profile = self.profile(user);
        let mut rng = Rng::derive(self.event_seed, user as u64);

        let window_start =
            self.start + ((self.end - self.start) as f64 * profile.join_fraction) as i64;
        let events_per_session = 2.0 + 6.0 * rng.f64();
        let sessions = ((n as f64 / events_per_session).round() as u64).clamp(1, n) as usize;
        let mut session_starts: Vec<i64> = (0..sessions)
            .map(|_| window_start + rng.below((self.end - window_start) as u64) as i64)
            .collect();
        session_starts.sort_unstable();
        let mut session_len = vec![1u32; sessions];
        for _ in sessions as u64..n {
            session_len[rng.usize_below(sessions)] += 1;
        }

        let mut skipped = 0;
        let mut prev: Option<u32> = None;
        let mut last_ts = i64::MIN;
        for (&session_start, &len) in session_starts.iter().zip(&session_len) {
            let mut t = session_start;
            for k in 0..len {
                if k > 0 {
                    t += 1 + rng.exponential(MEAN_GAP_SECS) as i64;
                }
                // Strictly increasing per user (sessions may overlap), and
                // never past the end of the span.
                let ts = t.max(last_ts.saturating_add(1)).min(self.end - 1);
                t = ts;
                last_ts = ts;
                match self.pick(&profile, &mut rng, ts, prev, k == 0, seen) {
                    Some(item) => {
                        seen.insert(item);
                        prev = Some(item);
                        let liked = profile.likes_cluster(self.cluster_of(item));
                        let kind = draw_kind(&mut rng, liked);
                        out.push(Interaction {
                            user,
                            item,
                            ts,
                            kind,
                            value: kind.default_weight(),
                        });
                    }
                    None => skipped += 1,
                }
            }
        }
        skipped
    }

    fn pick(
        &self,
        profile: &UserProfile,
        rng: &mut Rng,
        ts: i64,
        prev: Option<u32>,
        session_start: bool,
        seen: &SeenSet,
    ) -> Option<u32> {
        let acceptable = |i: &u32| self.created_at(*i) <= ts && !seen.contains(i);
        let proposed = (0..MAX_ATTEMPTS).find_map(|_| {
            self.propose(profile, rng, ts, prev, session_start)
                .filter(acceptable)
        });
        // A user who has seen the popular part of their tastes still has
        // unseen tail items there (or, for the heaviest users, elsewhere): a
        // uniform pick finds one when popularity keeps offering the heads.
        proposed.or_else(|| {
            (0..MAX_UNIFORM_ATTEMPTS).find_map(|attempt| {
                let table = if attempt % 2 == 0 {
                    &self.clusters[profile.taste[profile.sample_taste(rng)] as usize].by_time
                } else {
                    &self.global
                };
                table.sample_uniform_available(ts, rng).filter(acceptable)
            })
        })
    }

    /// One candidate item; the caller rejects unseen-ness and availability
    /// where the path itself does not guarantee them.
    fn propose(
        &self,
        profile: &UserProfile,
        rng: &mut Rng,
        ts: i64,
        prev: Option<u32>,
        session_start: bool,
    ) -> Option<u32> {
        if let Some(prev) = prev {
            let p_seq = if session_start {
                P_SEQUENTIAL_SESSION_START
            } else {
                P_SEQUENTIAL_IN_SESSION
            };
            if rng.f64() < p_seq {
                let info = &self.items[prev as usize];
                let table = &self.clusters[info.cluster as usize];
                let slot = info.slot as usize;
                return table.sample_near(slot, table.sequential_half_width(), rng);
            }
        }
        let r = rng.f64();
        if r < P_GLOBAL_POPULAR {
            return self.global.sample_available(ts, rng);
        }
        let k = profile.sample_taste(rng);
        let table = &self.clusters[profile.taste[k] as usize];
        if ts >= self.new_from && r < P_GLOBAL_POPULAR + P_FRESH {
            let fresh = table
                .by_time
                .sample_created_between(ts - self.fresh_window, ts, rng);
            if fresh.is_some() {
                return fresh;
            }
        }
        if rng.f64() < P_NICHE {
            let len = table.by_pos.len();
            let center = ((profile.niche[k] * len as f64) as usize).min(len - 1);
            table.sample_near(center, table.niche_half_width(), rng)
        } else {
            table.by_time.sample_available(ts, rng)
        }
    }
}

/// Mostly views, some clicks, fewer likes, rare purchases; stronger
/// engagement on items from the user's own tastes (a signal for rankers).
fn draw_kind(rng: &mut Rng, liked: bool) -> EventKind {
    let (purchase, like, click) = if liked {
        (0.03, 0.10, 0.20)
    } else {
        (0.01, 0.05, 0.15)
    };
    let r = rng.f64();
    if r < purchase {
        EventKind::Purchase
    } else if r < purchase + like {
        EventKind::Like
    } else if r < purchase + like + click {
        EventKind::Click
    } else {
        EventKind::View
    }
}

fn cluster_profiles(p: &GenParams, n_clusters: usize) -> Vec<ClusterProfile> {
    let seed = family_seed(p.seed, FAMILY_CLUSTERS);
    let n_occupations = names::OCCUPATIONS.len() as u64;
    (0..n_clusters)
        .map(|c| {
            let mut rng = Rng::derive(seed, c as u64);
            // Spread primary categories over the vocabulary before reusing any.
            let first = (c % p.categories as usize) as u16;
            let second = rng.below(p.categories as u64) as u16;
            ClusterProfile {
                home_categories: [first, second],
                age_center: 18.0 + 42.0 * rng.f64(),
                female_share: 0.25 + 0.5 * rng.f64(),
                occupation: rng.below(n_occupations) as u16,
            }
        })
        .collect()
}

/// Events per user: log-normal activity scaled to the requested total, at
/// least `MIN_EVENTS_PER_USER` each when the total allows, at most the
/// per-user cap; the sum is exactly `p.interactions`.
fn budgets(p: &GenParams) -> Vec<u32> {
    let n = p.users as usize;
    let total = p.interactions;
    let cap = p.per_user_cap();
    let floor = MIN_EVENTS_PER_USER.min(cap).min(total / p.users);
    let room = cap - floor;
    let seed = family_seed(p.seed, FAMILY_ACTIVITY);
    let activity: Vec<f64> = (0..n)
        .map(|u| (ACTIVITY_SIGMA * Rng::derive(seed, u as u64).normal()).exp())
        .collect();

    // Water-filling: users whose proportional share exceeds the cap are
    // pinned at it and the rest is shared again among the others.
    let mut pinned = vec![false; n];
    let mut to_share = total - floor * p.users;
    loop {
        let free_weight: f64 = (0..n).filter(|&u| !pinned[u]).map(|u| activity[u]).sum();
        let mut newly_pinned = 0u64;
        for u in 0..n {
            if !pinned[u] && to_share as f64 * activity[u] / free_weight >= room as f64 {
                pinned[u] = true;
                newly_pinned += 1;
            }
        }
        if newly_pinned == 0 {
            break;
        }
        to_share = to_share.saturating_sub(newly_pinned * room);
    }
    let free_weight: f64 = (0..n).filter(|&u| !pinned[u]).map(|u| activity[u]).sum();
    // u32 is enough: room is at most half the catalogue (validated).
    let mut extra = vec![0u32; n];
    let mut remainders: Vec<(f64, u32)> = Vec::new();
    let mut given = 0u64;
    for u in 0..n {
        if pinned[u] {
            extra[u] = room as u32;
            continue;
        }
        let share = to_share as f64 * activity[u] / free_weight;
        let whole = (share.floor() as u64).min(room);
        extra[u] = whole as u32;
        given += whole;
        remainders.push((share - whole as f64, u as u32));
    }
    // Largest remainders first; the loop also absorbs float rounding.
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // Float rounding could in theory overshoot by a unit; never underflow.
    let mut left = to_share.saturating_sub(given);
    while left > 0 {
        let before = left;
        for &(_, u) in &remainders {
            if left == 0 {
                break;
            }
            if (extra[u as usize] as u64) < room {
                extra[u as usize] += 1;
                left -= 1;
            }
        }
        assert!(left < before, "validated totals always fit under the caps");
    }
    extra.into_iter().map(|e| floor as u32 + e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_sum_exactly_and_respect_floor_and_cap() {
        for (users, items, interactions) in
            [(100, 50, 2000), (10, 4, 20), (50, 1000, 120), (7, 3, 7)]
        {
            let p = GenParams {
                users,
                items,
                interactions,
                clusters: 1,
                ..Default::default()
            };
            p.validate().expect("valid");
            let b = budgets(&p);
            assert_eq!(b.iter().map(|&x| x as u64).sum::<u64>(), interactions);
            let floor = 5.min(p.per_user_cap()).min(interactions / users);
            assert!(b
                .iter()
                .all(|&x| x as u64 >= floor && x as u64 <= p.per_user_cap()));
        }
    }

    #[test]
    fn activity_is_skewed() {
        let p = GenParams::default();
        let mut b = budgets(&p);
        b.sort_unstable();
        let median = b[b.len() / 2];
        let top = b[b.len() - 1];
        assert!(b[0] >= 5);
        assert!(top > 8 * median, "max {top} median {median}");
    }
}
