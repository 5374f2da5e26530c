//! Behavioural tests of the generator: determinism, agreement of the two
//! outputs, and the statistical properties the model promises.

use super::model::World;
use super::*;
use crate::dataset::{EventKind, Interaction};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The default data set, generated once for the statistical tests.
fn default_data() -> &'static (Dataset, World) {
    static DATA: OnceLock<(Dataset, World)> = OnceLock::new();
    DATA.get_or_init(|| {
        let p = GenParams::default();
        (generate(&p).expect("defaults generate"), World::build(&p))
    })
}

fn small(seed: u64) -> GenParams {
    GenParams {
        users: 2500,
        items: 400,
        interactions: 30_000,
        categories: 7,
        clusters: 5,
        days: 20,
        new_item_fraction: 0.15,
        seed,
        start: 1_600_000_000,
    }
}

/// Interactions grouped per user, each in time order.
fn histories(d: &Dataset) -> Vec<Vec<Interaction>> {
    let mut h = vec![Vec::new(); d.users.len()];
    for x in &d.interactions {
        h[x.user as usize].push(*x);
    }
    for v in &mut h {
        v.sort_by_key(|x| x.ts);
    }
    h
}

#[test]
fn same_seed_same_data_different_seed_different_data() {
    let a = generate(&small(1)).expect("generates");
    let b = generate(&small(1)).expect("generates");
    let c = generate(&small(2)).expect("generates");
    assert_eq!(a.interactions, b.interactions);
    assert_eq!(a.item_meta, b.item_meta);
    assert_eq!(a.user_meta, b.user_meta);
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_ne!(a.interactions, c.interactions);
    assert_ne!(a.fingerprint, c.fingerprint);
    assert_eq!(a.name, "synthetic(seed=1)");
}

#[test]
fn dataset_shape_matches_parameters() {
    let p = small(3);
    let d = generate(&p).expect("generates");
    assert_eq!(d.users.len() as u64, p.users);
    assert_eq!(d.items.len() as u64, p.items);
    assert_eq!(d.items.external(123), "i000123");
    assert_eq!(d.users.external(45), "u000045");
    assert_eq!(d.categories.len(), p.categories as usize);
    assert_eq!(d.fingerprint, p.fingerprint());
    let requested = p.interactions as usize;
    assert!(d.interactions.len() <= requested);
    assert!(
        d.interactions.len() * 100 >= requested * 99,
        "only {} of {requested} placed",
        d.interactions.len()
    );
    // canonical order
    assert!(d
        .interactions
        .windows(2)
        .all(|w| (w[0].ts, w[0].user, w[0].item) <= (w[1].ts, w[1].user, w[1].item)));
    for m in &d.item_meta {
        assert!((1..=3).contains(&m.categories.len()));
        assert!(m.categories.windows(2).all(|w| w[0] < w[1]));
        assert!(m.categories.iter().all(|&c| c < p.categories));
        assert!(m.title.as_deref().is_some_and(|t| !t.is_empty()));
    }
    for m in &d.user_meta {
        assert!(m.age.is_some_and(|a| (15..=75).contains(&a)));
        assert!(m.gender.is_some());
        assert!(m
            .occupation
            .is_some_and(|o| (o as usize) < d.occupations.len()));
    }
    for x in &d.interactions {
        assert_eq!(x.value, x.kind.default_weight());
    }
}

#[test]
fn no_duplicate_pairs_and_no_event_before_creation() {
    let (d, _) = default_data();
    let start = GenParams::default().start;
    let end = start + 56 * 86_400;
    let mut pairs = HashSet::new();
    for x in &d.interactions {
        assert!(pairs.insert((x.user, x.item)), "duplicate {x:?}");
        let created = d.item_meta[x.item as usize]
            .created_at
            .expect("generated items have created_at");
        assert!(created <= x.ts, "{x:?} before creation at {created}");
        assert!((start..end).contains(&x.ts), "{x:?} outside the span");
    }
}

#[test]
fn popularity_follows_a_power_law() {
    let (d, _) = default_data();
    let mut counts = vec![0u64; d.items.len()];
    for x in &d.interactions {
        counts[x.item as usize] += 1;
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top: u64 = counts[..counts.len() / 10].iter().sum();
    let share = top as f64 / d.interactions.len() as f64;
    eprintln!("top 10% of items hold {share:.3} of interactions");
    assert!(share > 0.35, "top 10% of items hold only {share:.3}");
    // and a long tail: the bottom half still gets something
    let bottom: u64 = counts[counts.len() / 2..].iter().sum();
    assert!(bottom > 0);
}

#[test]
fn user_activity_is_skewed_with_a_floor() {
    let (d, _) = default_data();
    let mut per_user: Vec<usize> = histories(d).iter().map(Vec::len).collect();
    per_user.sort_unstable();
    let median = per_user[per_user.len() / 2];
    assert!(per_user[0] >= 5, "lightest user has {}", per_user[0]);
    assert!(
        per_user[per_user.len() - 1] > 8 * median,
        "max {} vs median {median}",
        per_user[per_user.len() - 1]
    );
}

#[test]
fn new_items_exist_and_are_used() {
    let (d, w) = default_data();
    let p = GenParams::default();
    let is_new: Vec<bool> = d
        .item_meta
        .iter()
        .map(|m| m.created_at.expect("set") >= p.start)
        .collect();
    let n_new = is_new.iter().filter(|&&n| n).count();
    assert_eq!(n_new, 200);
    for (m, &new) in d.item_meta.iter().zip(&is_new) {
        if new {
            assert!(m.created_at.expect("set") >= w.new_from);
        }
    }
    let mut used = HashSet::new();
    let mut late_total = 0;
    let mut late_new = 0;
    for x in &d.interactions {
        if is_new[x.item as usize] {
            used.insert(x.item);
        }
        if x.ts >= w.new_from {
            late_total += 1;
            late_new += is_new[x.item as usize] as u32;
        }
    }
    assert!(
        used.len() * 10 >= n_new * 8,
        "{} of {n_new} new items used",
        used.len()
    );
    // fresh items matter once they exist: well above their 10% catalogue share
    // diluted by arrival times
    let share = late_new as f64 / late_total as f64;
    eprintln!(
        "{} of {n_new} new items used; they get {share:.3} of late events",
        used.len()
    );
    assert!(share > 0.10, "new items get {share:.3} of late events");
}

#[test]
fn users_concentrate_on_their_top_two_clusters() {
    let (d, w) = default_data();
    let mut shares = Vec::new();
    for h in histories(d) {
        let mut per_cluster: HashMap<u32, usize> = HashMap::new();
        for x in &h {
            *per_cluster.entry(w.cluster_of(x.item)).or_default() += 1;
        }
        let mut counts: Vec<usize> = per_cluster.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top2: usize = counts.iter().take(2).sum();
        shares.push(top2 as f64 / h.len() as f64);
    }
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    eprintln!("mean share of a user's items in their top-2 clusters: {mean:.3}");
    assert!(mean >= 0.6, "mean top-2 cluster share {mean:.3}");
}

#[test]
fn consecutive_items_are_latent_neighbours() {
    let (d, w) = default_data();
    let near = |a: u32, b: u32| w.cluster_of(a) == w.cluster_of(b) && w.slot_distance(a, b) <= 16;
    let (mut consecutive, mut consecutive_near) = (0u32, 0u32);
    let (mut distant, mut distant_near) = (0u32, 0u32);
    for h in histories(d) {
        for pair in h.windows(2) {
            consecutive += 1;
            consecutive_near += near(pair[0].item, pair[1].item) as u32;
        }
        let half = h.len() / 2;
        for k in 0..h.len() - half {
            distant += 1;
            distant_near += near(h[k].item, h[k + half].item) as u32;
        }
    }
    let c = consecutive_near as f64 / consecutive as f64;
    let f = distant_near as f64 / distant as f64;
    eprintln!("latent neighbours: consecutive pairs {c:.3}, distant pairs {f:.3}");
    assert!(c > 3.0 * f, "consecutive near {c:.3} vs distant {f:.3}");
}

#[test]
fn engagement_kinds_are_mostly_views() {
    let (d, _) = default_data();
    let mut counts = [0usize; 5];
    for x in &d.interactions {
        counts[x.kind as usize] += 1;
    }
    let [view, click, like, purchase, rate] = counts;
    assert_eq!(rate, 0);
    assert!(
        view > click && click > like && like > purchase && purchase > 0,
        "{counts:?}"
    );
    assert_eq!(EventKind::from_u8(0), Some(EventKind::View));
}

/// A predictor that knows only which cluster the user's history lies in
/// beats global popularity on each user's held-out last item: the data has
/// structure a recommender can learn.
#[test]
fn cluster_of_history_beats_popularity_on_held_out_items() {
    let (d, w) = default_data();
    let hist = histories(d);
    const K: usize = 10;
    let mut popularity = vec![0u32; d.items.len()];
    for h in &hist {
        for x in &h[..h.len() - 1] {
            popularity[x.item as usize] += 1;
        }
    }
    let mut by_popularity: Vec<u32> = (0..d.items.len() as u32).collect();
    by_popularity.sort_by_key(|&i| (std::cmp::Reverse(popularity[i as usize]), i));

    let (mut pop_hits, mut cluster_hits) = (0u32, 0u32);
    for h in &hist {
        let (train, held_out) = h.split_at(h.len() - 1);
        let target = held_out[0].item;
        let seen: HashSet<u32> = train.iter().map(|x| x.item).collect();
        let mut per_cluster: HashMap<u32, usize> = HashMap::new();
        for x in train {
            *per_cluster.entry(w.cluster_of(x.item)).or_default() += 1;
        }
        let favourite = per_cluster
            .iter()
            .max_by_key(|(&c, &n)| (n, std::cmp::Reverse(c)))
            .map(|(&c, _)| c);
        let pop_top = by_popularity.iter().filter(|i| !seen.contains(i)).take(K);
        pop_hits += pop_top.clone().any(|&i| i == target) as u32;
        let cluster_top = by_popularity
            .iter()
            .filter(|&&i| !seen.contains(&i) && Some(w.cluster_of(i)) == favourite)
            .take(K);
        cluster_hits += cluster_top.clone().any(|&i| i == target) as u32;
    }
    eprintln!("hit@{K} of held-out last items: cluster {cluster_hits}, popularity {pop_hits}");
    assert!(
        cluster_hits as f64 > 1.3 * pop_hits as f64,
        "cluster hits {cluster_hits} vs popularity hits {pop_hits}"
    );
}

fn read_csv(path: &std::path::Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).expect("file readable");
    r.records()
        .map(|rec| rec.expect("valid row").iter().map(str::to_owned).collect())
        .collect()
}

#[test]
fn csv_rows_equal_generated_rows() {
    let p = small(5);
    let d = generate(&p).expect("generates");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("nested/out");
    let summary = write_csv(&p, &out, None).expect("writes");
    assert_eq!(summary.interactions as usize, d.interactions.len());
    assert_eq!(summary.interactions + summary.skipped, p.interactions);
    assert_eq!(summary.fingerprint, d.fingerprint);
    assert_eq!(summary.new_items, 60);

    let header = |name: &str| {
        csv::Reader::from_path(out.join(name))
            .expect("readable")
            .headers()
            .expect("header")
            .iter()
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        header(INTERACTIONS_FILE),
        "user_id,item_id,timestamp,kind,weight"
    );
    assert_eq!(header(ITEMS_FILE), "item_id,title,categories,created_at");
    assert_eq!(header(USERS_FILE), "user_id,age,gender,occupation");

    let mut from_csv: Vec<(u32, u32, i64, EventKind, f32)> = read_csv(&out.join(INTERACTIONS_FILE))
        .iter()
        .map(|r| {
            (
                d.users.get(&r[0]).expect("known user"),
                d.items.get(&r[1]).expect("known item"),
                r[2].parse().expect("ts"),
                EventKind::parse(&r[3]).expect("kind"),
                r[4].parse().expect("weight"),
            )
        })
        .collect();
    let mut from_mem: Vec<_> = d
        .interactions
        .iter()
        .map(|x| (x.user, x.item, x.ts, x.kind, x.value))
        .collect();
    from_csv.sort_by_key(|a| (a.0, a.1, a.2));
    from_mem.sort_by_key(|a| (a.0, a.1, a.2));
    assert_eq!(from_csv, from_mem);

    let items = read_csv(&out.join(ITEMS_FILE));
    assert_eq!(items.len(), d.items.len());
    for (k, row) in items.iter().enumerate() {
        let meta = &d.item_meta[k];
        assert_eq!(row[0], d.items.external(k as u32));
        assert_eq!(Some(row[1].as_str()), meta.title.as_deref());
        let cats: Vec<&str> = meta
            .categories
            .iter()
            .map(|&c| d.categories[c as usize].as_str())
            .collect();
        assert_eq!(row[2], cats.join("|"));
        assert_eq!(
            Some(row[3].parse::<i64>().expect("created")),
            meta.created_at
        );
    }
    let users = read_csv(&out.join(USERS_FILE));
    assert_eq!(users.len(), d.users.len());
    for (k, row) in users.iter().enumerate() {
        let meta = &d.user_meta[k];
        assert_eq!(row[0], d.users.external(k as u32));
        assert_eq!(Some(row[1].parse::<u16>().expect("age")), meta.age);
        assert_eq!(crate::dataset::Gender::parse(&row[2]), meta.gender);
        let occupation = d.occupations.iter().position(|o| *o == row[3]);
        assert_eq!(occupation.map(|o| o as u16), meta.occupation);
    }
    // no temporary files left behind
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE]);
}

#[test]
fn csv_output_is_independent_of_thread_count() {
    let p = small(9);
    let progress = indicatif::ProgressBar::hidden();
    let dirs = [1usize, 3].map(|threads| {
        let dir = tempfile::tempdir().expect("temp dir");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| write_csv(&p, dir.path(), Some(&progress)))
            .expect("writes");
        dir
    });
    assert_eq!(progress.length(), Some(p.interactions));
    assert_eq!(progress.position(), p.interactions);
    for name in [INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE] {
        let a = std::fs::read(dirs[0].path().join(name)).expect("read");
        let b = std::fs::read(dirs[1].path().join(name)).expect("read");
        assert!(a.len() > 100, "{name} is nearly empty");
        assert!(a == b, "{name} differs between 1 and 3 threads");
    }
}

#[test]
fn invalid_parameters_and_unwritable_paths_are_errors() {
    let p = GenParams {
        users: 0,
        ..Default::default()
    };
    assert!(matches!(
        generate(&p),
        Err(GenError::OutOfRange {
            flag: "--users",
            ..
        })
    ));

    let dir = tempfile::tempdir().expect("temp dir");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").expect("write");
    let target = blocker.join("sub");
    let e = write_csv(&small(1), &target, None).unwrap_err();
    assert!(matches!(e, GenError::Io { .. }), "{e}");
    assert!(e.to_string().contains("a-file"), "{e}");
}

#[test]
fn tiny_and_sparse_requests_work() {
    // fewer interactions than 5 per user, and a one-item catalogue
    for p in [
        GenParams {
            users: 100,
            items: 50,
            interactions: 120,
            clusters: 3,
            ..Default::default()
        },
        GenParams {
            users: 3,
            items: 1,
            interactions: 3,
            clusters: 1,
            categories: 1,
            new_item_fraction: 0.0,
            ..Default::default()
        },
    ] {
        let d = generate(&p).expect("generates");
        assert_eq!(d.interactions.len() as u64, p.interactions, "{p:?}");
    }
}
