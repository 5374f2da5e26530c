use super::*;
use crate::dataset::{Dataset, EventKind};
use crate::features::RequestContext;
use crate::gen::{generate, GenParams};
use crate::ids::item_key;
use crate::ranking::score::Ranker;

fn small() -> Dataset {
    generate(&GenParams {
        users: 300,
        items: 200,
        interactions: 12_000,
        ..GenParams::default()
    })
    .expect("generator accepts small parameters")
}

fn quick_params() -> PipelineParams {
    let mut p = PipelineParams::default();
    p.als.factors = 16;
    p.als.iterations = 5;
    p.gbdt.trees = 20;
    p
}

struct Owned {
    keys: Vec<u64>,
    cats: Vec<Vec<u16>>,
    created: Vec<Option<i64>>,
    demo: Vec<Demographics>,
}

fn owned(ds: &Dataset) -> Owned {
    Owned {
        keys: ds.items.ids().iter().map(|id| item_key(id)).collect(),
        cats: ds.item_meta.iter().map(|m| m.categories.clone()).collect(),
        created: ds.item_meta.iter().map(|m| m.created_at).collect(),
        demo: ds.user_meta.iter().map(Demographics::from).collect(),
    }
}

fn input<'a>(ds: &Dataset, o: &'a Owned, log: &'a [Interaction]) -> FitInput<'a> {
    FitInput {
        n_users: ds.users.len(),
        interactions: log,
        item_keys: &o.keys,
        item_categories: &o.cats,
        item_created: &o.created,
        demographics: &o.demo,
        n_categories: ds.categories.len(),
        include_cold_items: true,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn large_catalogues_search_an_index_that_finds_what_the_exact_scan_finds() {
    let ds = generate(&GenParams {
        users: 200,
        items: 3000,
        interactions: 20_000,
        ..GenParams::default()
    })
    .unwrap();
    let o = owned(&ds);
    let log = ds.interactions.clone();
    let exact_p = quick_params();
    let exact = fit_models(&input(&ds, &o, &log), &exact_p, &Progress::hidden()).unwrap();
    assert!(
        exact.ann_index.is_none(),
        "3000 items are scanned exactly by default"
    );
    let indexed_p = PipelineParams {
        ann_index_min_items: 1000,
        ..quick_params()
    };
    let indexed = fit_models(&input(&ds, &o, &log), &indexed_p, &Progress::hidden()).unwrap();
    assert!(indexed.ann_index.is_some());
    // same seed, same factors: only the search differs
    assert_eq!(
        bits(exact.als.item_factors.row(7)),
        bits(indexed.als.item_factors.row(7))
    );
    let skip = o.keys[0];
    let allow = move |k: u64| k != skip;
    let (mut found, mut total) = (0usize, 0usize);
    for user in 0..50 {
        let want = exact.ann_path(user, 50, &allow).items;
        let got = indexed.ann_path(user, 50, &allow).items;
        assert!(got.iter().all(|(k, _)| *k != skip), "the filter applies");
        assert_eq!(got.len(), 50);
        total += want.len();
        found += want
            .iter()
            .filter(|w| got.iter().any(|g| g.0 == w.0))
            .count();
    }
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.9, "index recall@50 vs exact {recall:.3}");
}

#[test]
fn cold_items_get_the_mean_of_their_category_centroids() {
    let ds = small();
    let o = owned(&ds);
    // hold back every interaction with two categorised items: they stay
    // in the catalogue, cold
    let cold: Vec<u32> = (0..o.keys.len() as u32)
        .filter(|&i| !o.cats[i as usize].is_empty())
        .take(2)
        .collect();
    let log: Vec<Interaction> = ds
        .interactions
        .iter()
        .filter(|x| !cold.contains(&x.item))
        .cloned()
        .collect();
    let m = fit_models(&input(&ds, &o, &log), &quick_params(), &Progress::hidden()).unwrap();
    let warm = items_with_events(&log);
    let dim = m.als.item_factors.cols();
    let foldable = (0..o.keys.len() as u32)
        .filter(|i| !warm.contains(i))
        .filter(|&i| {
            crate::features::fold_categories(&m.category_centroids, &o.cats[i as usize], dim)
                .is_some()
        })
        .count();
    assert!(foldable >= cold.len());
    assert_eq!(m.cold_folded, foldable);
    for &i in &cold {
        let want = crate::features::fold_categories(
            &m.category_centroids,
            &o.cats[i as usize],
            m.als.item_factors.cols(),
        )
        .unwrap();
        assert_eq!(m.als.item_factors.row(i as usize), want.as_slice());
        assert!(want.iter().any(|&v| v != 0.0));
        assert!(m.in_catalog[i as usize]);
    }
    // the gram is the fitted factors' (cold rows zero), not the folded ones
    let mut fitted = m.als.item_factors.clone();
    for &i in &cold {
        fitted.row_mut(i as usize).fill(0.0);
    }
    let want = crate::linalg::gram_matrix(&fitted);
    let close = m
        .item_gram
        .iter()
        .zip(&want)
        .all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + b.abs()));
    assert!(close, "item_gram must leave the folded rows out");
}

fn items_with_events(log: &[Interaction]) -> std::collections::HashSet<u32> {
    log.iter().map(|x| x.item).collect()
}

#[test]
fn training_rows_are_point_in_time() {
    let ds = small();
    let o = owned(&ds);
    let p = quick_params();
    let log = ds.interactions.clone();
    let models = fit_models(&input(&ds, &o, &log), &p, &Progress::hidden()).unwrap();
    // requests at the median event time of a few active users
    let mid = log[log.len() / 2].ts;
    let users: Vec<u32> = (0..ds.users.len() as u32)
        .filter(|&u| {
            log.iter().any(|x| x.user == u && x.ts <= mid)
                && log.iter().any(|x| x.user == u && x.ts > mid)
        })
        .take(20)
        .collect();
    assert!(
        users.len() >= 5,
        "the generated log has users active on both sides of t"
    );
    let requests: Vec<LabelledRequest> = users
        .iter()
        .map(|&u| LabelledRequest {
            user: u,
            ctx: RequestContext::at(mid),
            targets: log
                .iter()
                .filter(|x| x.user == u && x.ts > mid)
                .map(|x| o.keys[x.item as usize])
                .collect(),
        })
        .collect();
    let base = ranker_examples(&models, &input(&ds, &o, &log), &requests, &p.recall);
    assert!(!base.rows.is_empty());

    // events after t, for the same users and others, change nothing
    let mut later = log.clone();
    for (n, &u) in users.iter().enumerate() {
        later.push(Interaction {
            user: u,
            item: (n % 200) as u32,
            ts: mid + 1 + n as i64,
            kind: EventKind::Purchase,
            value: 6.0,
        });
    }
    later.push(Interaction {
        user: 0,
        item: 3,
        ts: mid + 100,
        kind: EventKind::Click,
        value: 2.0,
    });
    later.sort_by_key(|x| (x.ts, x.user, x.item));
    let after = ranker_examples(&models, &input(&ds, &o, &later), &requests, &p.recall);
    assert_eq!(bits(&base.rows), bits(&after.rows));
    assert_eq!(base.labels, after.labels);

    // control: one event before t for a requesting user does change its rows
    let mut earlier = log.clone();
    let unseen = (0..200u32)
        .find(|&i| !log.iter().any(|x| x.user == users[0] && x.item == i))
        .unwrap();
    earlier.push(Interaction {
        user: users[0],
        item: unseen,
        ts: mid - 1,
        kind: EventKind::Purchase,
        value: 6.0,
    });
    earlier.sort_by_key(|x| (x.ts, x.user, x.item));
    let before = ranker_examples(&models, &input(&ds, &o, &earlier), &requests, &p.recall);
    assert_ne!(bits(&base.rows), bits(&before.rows));
}

#[test]
fn ranker_learns_and_recommendations_exclude_seen_items() {
    let ds = small();
    let o = owned(&ds);
    let p = quick_params();
    let inp = input(&ds, &o, &ds.interactions);
    let (ranker, report) = ranker_from_holdout(&inp, &p, 3, &Progress::hidden()).unwrap();
    assert!(report.train_groups > 50, "{report:?}");
    assert!(matches!(ranker, Ranker::Gbdt(_)));
    let models = fit_models(&inp, &p, &Progress::hidden()).unwrap();
    for u in 0..20u32 {
        let recs = models.recommend(&ranker, u, &models.default_context(u), 10, &p, 7);
        assert_eq!(recs.len(), 10);
        let state = &models.user_states[u as usize];
        assert!(recs.iter().all(|k| !state.has_seen(*k)));
        let mut dedup = recs.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), 10);
    }
}

#[test]
fn fitting_errors_are_typed_and_keep_their_text() {
    let ds = small();
    let o = owned(&ds);
    let p = quick_params();
    let hidden = Progress::hidden();

    let err = fit_models(&input(&ds, &o, &[]), &p, &hidden).err().unwrap();
    assert!(matches!(err, TrainError::NoInteractions), "{err:?}");
    assert_eq!(err.to_string(), "no interactions to fit on");

    let mut no_factors = p.clone();
    no_factors.als.factors = 0;
    let err = fit_models(&input(&ds, &o, &ds.interactions), &no_factors, &hidden)
        .err()
        .unwrap();
    match &err {
        TrainError::Als(inner @ als::AlsError::InvalidParam { name, .. }) => {
            assert_eq!(*name, "factors");
            assert_eq!(err.to_string(), inner.to_string());
        }
        other => panic!("expected the ALS error, got {other:?}"),
    }

    // no request at all: no query group for the ranker
    let inp = input(&ds, &o, &ds.interactions);
    let models = fit_models(&inp, &p, &hidden).unwrap();
    let err = train_ranker(&models, &inp, &[], &p, &hidden).err().unwrap();
    assert!(matches!(err, TrainError::NoRankerGroups), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no training request had a target among its recalled candidates; \
         the data is too small or too sparse to train a ranker"
    );
}
