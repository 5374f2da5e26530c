use super::*;
use crate::training::planted;

#[test]
fn fold_in_from_vectors_matches_fold_in() {
    let p = planted::generate(60, 40, 4, 8, 1, 3);
    let params = small_params();
    let model = fit(&p.train, &params, &mut |_| {}).unwrap();
    let items = &model.item_factors;
    let gram = crate::linalg::gram_matrix(items);
    let inter = [(3u32, 1.0f32), (7, 2.0), (11, 1.0)];
    let want = fold_in_user(items, &inter, &params).unwrap();
    let with: Vec<(&[f32], f32)> = inter
        .iter()
        .map(|&(i, r)| (items.row(i as usize), r))
        .collect();
    let got = fold_in_from_vectors(&gram, params.regularization, params.alpha, &with).unwrap();
    for (a, b) in want.iter().zip(&got) {
        assert!(
            (a - b).abs() < 1e-3 * (1.0 + a.abs()),
            "{want:?} vs {got:?}"
        );
    }
    assert!(fold_in_from_vectors(&gram, 1.0, 1.0, &[(&[1.0][..], 1.0)]).is_err());
}

fn small_params() -> AlsParams {
    AlsParams {
        factors: 16,
        regularization: 1.0,
        alpha: 2.0,
        iterations: 10,
        cg_steps: 3,
        seed: 7,
        threads: 2,
        compute_loss: false,
    }
}

fn planted_data() -> planted::Planted {
    planted::generate(600, 400, 4, 30, 3, 99)
}

#[test]
fn learns_planted_clusters_and_loss_decreases() {
    let data = planted_data();
    let params = AlsParams {
        compute_loss: true,
        ..small_params()
    };
    let mut losses = Vec::new();
    let model = fit(&data.train, &params, &mut |s| {
        assert!(s.seconds >= 0.0);
        losses.push(s.loss.expect("compute_loss is set"));
    })
    .unwrap();
    assert_eq!(losses.len(), params.iterations);
    for w in losses.windows(2) {
        // ALS never increases the objective; allow f32 rounding
        assert!(w[1] <= w[0] * (1.0 + 1e-4), "loss went up: {losses:?}");
    }
    assert!(losses[losses.len() - 1] < losses[0] * 0.99, "{losses:?}");

    let auc = planted::ranking_auc(&data, &model.user_factors, &model.item_factors);
    let random = planted::ranking_auc(
        &data,
        &planted::random_factors(600, 16, 1),
        &planted::random_factors(400, 16, 2),
    );
    assert!(auc >= 0.85, "ALS held-out AUC {auc}");
    assert!((random - 0.5).abs() < 0.05, "random AUC {random}");
}

#[test]
fn exact_solver_also_learns_and_beats_random() {
    let data = planted_data();
    let params = AlsParams {
        cg_steps: 0,
        iterations: 5,
        compute_loss: true,
        ..small_params()
    };
    let mut losses = Vec::new();
    let model = fit(&data.train, &params, &mut |s| losses.push(s.loss.unwrap())).unwrap();
    for w in losses.windows(2) {
        assert!(w[1] <= w[0] * (1.0 + 1e-4), "{losses:?}");
    }
    let auc = planted::ranking_auc(&data, &model.user_factors, &model.item_factors);
    assert!(auc >= 0.85, "exact ALS held-out AUC {auc}");
}

#[test]
fn same_seed_same_factors_any_thread_count() {
    let data = planted_data();
    let run = |threads, seed| {
        let p = AlsParams {
            threads,
            seed,
            iterations: 3,
            ..small_params()
        };
        fit(&data.train, &p, &mut |_| {}).unwrap()
    };
    let a = run(1, 7);
    assert_eq!(a, run(1, 7));
    assert_eq!(a, run(2, 7));
    assert_eq!(a, run(3, 7));
    assert_ne!(a.user_factors, run(2, 8).user_factors);
}

#[test]
fn exact_half_step_is_thread_count_independent() {
    let data = planted_data();
    let run = |threads| {
        let p = AlsParams {
            threads,
            iterations: 2,
            cg_steps: 0,
            ..small_params()
        };
        fit(&data.train, &p, &mut |_| {}).unwrap()
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn fold_in_equals_exact_user_half_step() {
    let data = planted_data();
    let params = small_params();
    let model = fit(&data.train, &params, &mut |_| {}).unwrap();
    let exact = AlsParams {
        cg_steps: 0,
        ..params.clone()
    };
    let mut users = model.user_factors.clone();
    half_step(
        Backend::detect(),
        &data.train,
        &model.item_factors,
        &mut users,
        &exact,
    )
    .unwrap();
    // a CG model is close to, but not exactly at, the exact solution
    assert_ne!(users, model.user_factors);

    let folder = FoldIn::new(&model.item_factors, &exact).unwrap();
    for u in (0..data.train.n_rows()).step_by(37) {
        let interactions: Vec<(u32, f32)> = data.train.row(u).collect();
        let folded = folder.fold_in(&interactions).unwrap();
        assert_eq!(folded.as_slice(), users.row(u), "user {u}");
        // order and the one-off entry point do not matter
        let mut reversed = interactions.clone();
        reversed.reverse();
        assert_eq!(
            fold_in_user(&model.item_factors, &reversed, &exact).unwrap(),
            folded
        );
    }
    // duplicates are summed like the training matrix does
    let (a, b) = (3u32, 5u32);
    assert_eq!(
        folder.fold_in(&[(a, 1.0), (b, 2.0), (a, 1.5)]).unwrap(),
        folder.fold_in(&[(b, 2.0), (a, 2.5)]).unwrap()
    );
    assert_eq!(folder.fold_in(&[]).unwrap(), vec![0.0; 16]);
}

#[test]
fn fold_in_solution_satisfies_normal_equations() {
    // independent check of the exact solve: A x = b with A, b built naively in f64
    let items = planted::random_factors(30, 5, 3);
    let params = AlsParams {
        factors: 5,
        regularization: 0.5,
        alpha: 3.0,
        ..AlsParams::default()
    };
    let obs = [(2u32, 1.0f32), (7, 2.0), (11, -1.0), (29, 0.5)];
    let x = fold_in_user(&items, &obs, &params).unwrap();
    let k = 5;
    for row in 0..k {
        let mut ax = 0.0f64;
        let mut b = 0.0f64;
        for i in 0..30 {
            let y = items.row(i);
            let (c, p) = match obs.iter().find(|o| o.0 == i as u32) {
                Some(&(_, r)) => (
                    1.0 + 3.0 * f64::from(r.abs()),
                    if r > 0.0 { 1.0 } else { 0.0 },
                ),
                None => (1.0, 0.0),
            };
            let s: f64 = (0..k).map(|t| f64::from(y[t]) * f64::from(x[t])).sum();
            ax += c * f64::from(y[row]) * s;
            b += c * p * f64::from(y[row]);
        }
        ax += 0.5 * f64::from(x[row]);
        assert!((ax - b).abs() < 1e-3, "row {row}: {ax} vs {b}");
    }
}

#[test]
fn rejects_bad_input_with_specific_errors() {
    let ok = Csr::from_triples(2, 2, &[(0, 1, 1.0)]);
    let p = small_params();
    let err = |x: &Csr, p: &AlsParams| fit(x, p, &mut |_| {}).unwrap_err();
    assert!(matches!(
        err(&Csr::from_triples(2, 2, &[]), &p),
        AlsError::EmptyMatrix { .. }
    ));
    assert!(matches!(
        err(&Csr::from_triples(0, 0, &[]), &p),
        AlsError::EmptyMatrix { .. }
    ));
    let zero = AlsParams {
        factors: 0,
        ..p.clone()
    };
    assert!(matches!(
        err(&ok, &zero),
        AlsError::InvalidParam {
            name: "factors",
            ..
        }
    ));
    let neg = AlsParams {
        regularization: -1.0,
        ..p.clone()
    };
    assert!(matches!(
        err(&ok, &neg),
        AlsError::InvalidParam {
            name: "regularization",
            ..
        }
    ));
    let nan_alpha = AlsParams {
        alpha: f32::NAN,
        ..p.clone()
    };
    assert!(matches!(
        err(&ok, &nan_alpha),
        AlsError::InvalidParam { name: "alpha", .. }
    ));
    let nan = Csr::from_triples(2, 2, &[(0, 0, 1.0), (1, 1, f32::NAN)]);
    assert!(matches!(
        err(&nan, &p),
        AlsError::NonFiniteValue { row: 1, col: 1, .. }
    ));
    let inf = Csr::from_triples(2, 2, &[(1, 0, f32::INFINITY)]);
    assert!(matches!(
        err(&inf, &p),
        AlsError::NonFiniteValue { row: 1, col: 0, .. }
    ));

    let items = planted::random_factors(4, 16, 1);
    assert!(matches!(
        fold_in_user(&items, &[(4, 1.0)], &p),
        Err(AlsError::ItemOutOfRange {
            item: 4,
            n_items: 4
        })
    ));
    assert!(matches!(
        fold_in_user(&items, &[(1, f32::NAN)], &p),
        Err(AlsError::NonFiniteValue { .. })
    ));
    let wrong_k = AlsParams {
        factors: 8,
        ..p.clone()
    };
    assert!(matches!(
        fold_in_user(&items, &[(1, 1.0)], &wrong_k),
        Err(AlsError::FactorMismatch {
            expected: 8,
            got: 16
        })
    ));
    // the messages say what to do
    let msg = err(&Csr::from_triples(2, 2, &[]), &p).to_string();
    assert!(msg.contains("one interaction"), "{msg}");
}

#[test]
fn weighted_loss_matches_naive_sum_over_all_cells() {
    let x = Csr::from_triples(3, 4, &[(0, 1, 2.0), (1, 0, 1.0), (1, 3, -1.0), (2, 2, 0.5)]);
    let params = AlsParams {
        factors: 3,
        regularization: 0.7,
        alpha: 2.0,
        ..AlsParams::default()
    };
    let users = planted::random_factors(3, 3, 4);
    let items = planted::random_factors(4, 3, 5);
    let got = weighted_loss(Backend::detect(), &x, &users, &items, &params);
    let (mut err, mut weight) = (0.0f64, 0.0f64);
    for u in 0..3 {
        for i in 0..4 {
            let r = x
                .row(u)
                .find(|&(c, _)| c as usize == i)
                .map(|(_, v)| f64::from(v));
            let (c, p) = match r {
                Some(r) => (1.0 + 2.0 * r.abs(), if r > 0.0 { 1.0 } else { 0.0 }),
                None => (1.0, 0.0),
            };
            let s: f64 = (0..3)
                .map(|f| f64::from(users.row(u)[f]) * f64::from(items.row(i)[f]))
                .sum();
            err += c * (p - s) * (p - s);
            weight += c;
        }
    }
    let sq: f64 = users
        .as_slice()
        .iter()
        .chain(items.as_slice())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    let want = (err + 0.7 * sq) / weight;
    assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
}

#[test]
fn portable_kernels_give_nearly_the_same_half_step() {
    // on machines without AVX2 every other test already runs the portable
    // path; here both are compared where both exist
    let Some(avx) = linalg::Avx2Fma::detect() else {
        println!("no AVX2+FMA on this CPU: only the portable path exists");
        return;
    };
    let data = planted_data();
    let model = fit(&data.train, &small_params(), &mut |_| {}).unwrap();
    for cg_steps in [0, 3] {
        let p = AlsParams {
            cg_steps,
            ..small_params()
        };
        let mut a = model.user_factors.clone();
        let mut b = model.user_factors.clone();
        half_step(
            Backend::Avx2Fma(avx),
            &data.train,
            &model.item_factors,
            &mut a,
            &p,
        )
        .unwrap();
        half_step(
            Backend::Portable(linalg::Portable),
            &data.train,
            &model.item_factors,
            &mut b,
            &p,
        )
        .unwrap();
        let scale = a.as_slice().iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .as_slice()
            .iter()
            .zip(b.as_slice())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-3 * scale,
            "cg_steps {cg_steps}: max diff {diff}, scale {scale}"
        );
    }
}

#[test]
fn users_without_interactions_get_zero_vectors() {
    let x = Csr::from_triples(3, 3, &[(0, 0, 1.0), (2, 1, 1.0)]);
    let p = AlsParams {
        factors: 4,
        iterations: 2,
        ..AlsParams::default()
    };
    let m = fit(&x, &p, &mut |_| {}).unwrap();
    assert_eq!(m.user_factors.row(1), &[0.0; 4]);
    assert_eq!(m.item_factors.row(2), &[0.0; 4]);
    assert!(m.user_factors.row(0).iter().any(|v| *v != 0.0));
}
