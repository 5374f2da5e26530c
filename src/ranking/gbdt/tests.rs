//! End-to-end tests of training on generated data: learning quality,
//! missing values, determinism, serialisation, early stopping.

use super::objective::Targets;
use super::*;
use crate::rng::Rng;

const D: usize = 10;

struct Generated {
    features: Vec<f32>,
    labels: Vec<f32>,
    groups: Vec<u32>,
    /// The true probability of a positive label, for oracle orderings.
    truth: Vec<f32>,
}

impl Generated {
    fn dataset(&self) -> Dataset<'_> {
        Dataset {
            features: &self.features,
            n_features: D,
            labels: &self.labels,
            groups: &self.groups,
            feature_names: &[],
        }
    }
}

/// Groups of 50 candidates. Relevance needs two features together:
/// P(label 1) = 0.85 if x0 > 0.6 and x1 < 0.3, else 0.03 (a NaN in either
/// counts as not matching). x2..x9 are noise; 5% of all values are NaN.
fn interaction_data(groups: usize, seed: u64) -> Generated {
    let mut rng = Rng::new(seed);
    let mut g = Generated {
        features: Vec::new(),
        labels: Vec::new(),
        groups: vec![50; groups],
        truth: Vec::new(),
    };
    for _ in 0..groups * 50 {
        let row: Vec<f32> = (0..D)
            .map(|_| {
                if rng.f64() < 0.05 {
                    f32::NAN
                } else {
                    rng.f32()
                }
            })
            .collect();
        let p = if row[0] > 0.6 && row[1] < 0.3 {
            0.85
        } else {
            0.03
        };
        g.labels.push(if rng.f64() < p { 1.0 } else { 0.0 });
        g.truth.push(p as f32);
        g.features.extend(row);
    }
    g
}

/// Only the NaN-ness of x3 matters: P(label 1) = 0.6 when x3 is missing
/// (30% of rows), 0.05 otherwise; present x3 values carry no signal.
fn missingness_data(groups: usize, seed: u64) -> Generated {
    let mut rng = Rng::new(seed);
    let mut g = Generated {
        features: Vec::new(),
        labels: Vec::new(),
        groups: vec![50; groups],
        truth: Vec::new(),
    };
    for _ in 0..groups * 50 {
        let mut row: Vec<f32> = (0..D).map(|_| rng.f32()).collect();
        let missing = rng.f64() < 0.3;
        if missing {
            row[3] = f32::NAN;
        }
        let p = if missing { 0.6 } else { 0.05 };
        g.labels.push(if rng.f64() < p { 1.0 } else { 0.0 });
        g.truth.push(p as f32);
        g.features.extend(row);
    }
    g
}

fn predict_all(model: &GbdtModel, data: &Generated) -> Vec<f32> {
    let mut out = vec![0.0; data.labels.len()];
    model
        .predict_batch(&data.features, D, &mut out)
        .expect("test rows have the training width");
    out
}

fn mean_ndcg10(scores: &[f32], data: &Generated) -> f64 {
    Targets::new(
        Objective::LambdaRank { ndcg_at: 10 },
        &data.labels,
        &data.groups,
    )
    .metric(scores)
}

/// Area under the ROC curve by pair counting (ties count half).
fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut positives) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j + 1) as f64 / 2.0;
        for &k in &order[i..j] {
            if labels[k] > 0.5 {
                rank_sum += mid_rank;
                positives += 1.0;
            }
        }
        i = j;
    }
    let negatives = scores.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

fn quick_params(objective: Objective) -> GbdtParams {
    GbdtParams {
        objective,
        trees: 120,
        learning_rate: 0.1,
        early_stopping_rounds: 0,
        ..GbdtParams::default()
    }
}

fn train_quiet(train_set: &Generated, valid: Option<&Generated>, params: &GbdtParams) -> GbdtModel {
    let valid_set = valid.map(|v| v.dataset());
    train(
        &train_set.dataset(),
        valid_set.as_ref(),
        params,
        &mut |_| {},
    )
    .expect("generated data is well formed")
}

#[test]
fn lambdarank_beats_every_single_feature_and_nears_the_oracle() {
    let train_set = interaction_data(400, 1);
    let test_set = interaction_data(300, 2);
    let model = train_quiet(
        &train_set,
        None,
        &quick_params(Objective::LambdaRank { ndcg_at: 10 }),
    );
    let learned = mean_ndcg10(&predict_all(&model, &test_set), &test_set);
    let oracle = mean_ndcg10(&test_set.truth, &test_set);
    let mut best_single: f64 = 0.0;
    for f in 0..D {
        for sign in [1.0f32, -1.0] {
            let scores: Vec<f32> = test_set
                .features
                .chunks(D)
                .map(|r| if r[f].is_nan() { -1e9 } else { sign * r[f] })
                .collect();
            best_single = best_single.max(mean_ndcg10(&scores, &test_set));
        }
    }
    println!(
        "ndcg@10 learned {learned:.4} oracle {oracle:.4} best single feature {best_single:.4}"
    );
    assert!(
        learned > best_single + 0.15,
        "learned {learned} vs single {best_single}"
    );
    assert!(
        learned > oracle - 0.05,
        "learned {learned} vs oracle {oracle}"
    );
    let importance = model.feature_importance_gain();
    let top_two = importance[0].min(importance[1]);
    assert!(
        importance[2..].iter().all(|&g| g < top_two),
        "{importance:?}"
    );
}

#[test]
fn logistic_learns_the_interaction() {
    let train_set = interaction_data(400, 3);
    let test_set = interaction_data(200, 4);
    let model = train_quiet(&train_set, None, &quick_params(Objective::Logistic));
    let scores = predict_all(&model, &test_set);
    let learned = auc(&scores, &test_set.labels);
    let oracle = auc(&test_set.truth, &test_set.labels);
    println!("auc learned {learned:.4} oracle {oracle:.4}");
    assert!(
        learned > 0.85 && learned > oracle - 0.03,
        "auc {learned} oracle {oracle}"
    );
    // Probabilities are calibrated to the base rate on average.
    let mean_p: f64 = scores
        .iter()
        .map(|&s| GbdtModel::probability(s) as f64)
        .sum::<f64>()
        / scores.len() as f64;
    let base_rate = test_set.labels.iter().map(|&l| l as f64).sum::<f64>() / scores.len() as f64;
    assert!((mean_p - base_rate).abs() < 0.02, "{mean_p} vs {base_rate}");
}

#[test]
fn predictive_missingness_is_learned() {
    let train_set = missingness_data(200, 5);
    let test_set = missingness_data(100, 6);
    for objective in [Objective::LambdaRank { ndcg_at: 10 }, Objective::Logistic] {
        let model = train_quiet(&train_set, None, &quick_params(objective));
        let scores = predict_all(&model, &test_set);
        let (mut missing, mut present) = (Vec::new(), Vec::new());
        for (row, &s) in test_set.features.chunks(D).zip(&scores) {
            if row[3].is_nan() {
                missing.push(s as f64);
            } else {
                present.push(s as f64);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&missing) > mean(&present), "{objective:?}");
        let missing_flag: Vec<f32> = test_set
            .features
            .chunks(D)
            .map(|r| if r[3].is_nan() { 1.0 } else { 0.0 })
            .collect();
        // Every missing row should outscore every present row: the model
        // separates them as well as the missingness flag itself does.
        assert!(
            auc(&scores, &missing_flag) > 0.99,
            "{objective:?}: missingness not separated"
        );
        let importance = model.feature_importance_gain();
        let top = (0..D)
            .max_by(|&a, &b| importance[a].total_cmp(&importance[b]))
            .expect("D > 0");
        assert_eq!(top, 3, "{objective:?}: {importance:?}");
    }
}

fn sampled_params(threads: usize) -> GbdtParams {
    GbdtParams {
        trees: 30,
        feature_fraction: 0.7,
        bagging_fraction: 0.8,
        threads,
        seed: 99,
        ..quick_params(Objective::LambdaRank { ndcg_at: 10 })
    }
}

#[test]
fn same_seed_gives_a_bit_identical_model_for_any_thread_count() {
    let data = interaction_data(100, 7);
    let one = train_quiet(&data, None, &sampled_params(1));
    let again = train_quiet(&data, None, &sampled_params(1));
    let two = train_quiet(&data, None, &sampled_params(2));
    let bytes = |m: &GbdtModel| postcard::to_allocvec(m).expect("serialise");
    assert_eq!(bytes(&one), bytes(&again));
    assert_eq!(bytes(&one), bytes(&two));
    let other_seed = train_quiet(
        &data,
        None,
        &GbdtParams {
            seed: 100,
            ..sampled_params(2)
        },
    );
    assert_ne!(
        bytes(&one),
        bytes(&other_seed),
        "seed must matter when sampling"
    );
}

#[test]
fn serialisation_round_trips_predict_identically() {
    let train_set = interaction_data(60, 8);
    let test_set = interaction_data(20, 9);
    let model = train_quiet(&train_set, None, &sampled_params(2));
    let expected = predict_all(&model, &test_set);

    let json = serde_json::to_string(&model).expect("serialise json");
    let from_json: GbdtModel = serde_json::from_str(&json).expect("load json");
    let bytes = postcard::to_allocvec(&model).expect("serialise postcard");
    let from_postcard: GbdtModel = postcard::from_bytes(&bytes).expect("load postcard");
    for loaded in [&from_json, &from_postcard] {
        assert_eq!(loaded, &model);
        let got = predict_all(loaded, &test_set);
        assert!(
            got.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "loaded model scores differ"
        );
    }
    // predict_row agrees bit for bit with the batch path.
    for (row, &e) in test_set.features.chunks(D).zip(&expected) {
        assert_eq!(model.predict_row(row).to_bits(), e.to_bits());
    }
}

#[test]
fn corrupted_serialised_models_are_rejected() {
    let data = interaction_data(40, 10);
    let model = train_quiet(&data, None, &sampled_params(1));
    let good = serde_json::to_value(&model).expect("serialise");
    let nodes = good["trees"][0]["nodes"]
        .as_array()
        .expect("trees have nodes")
        .len();
    assert!(nodes >= 2, "need a non-trivial tree to corrupt");
    let corruptions: [(&str, &str, serde_json::Value); 3] = [
        ("child out of range", "left", serde_json::json!(nodes + 5)),
        ("cycle back to the root", "right", serde_json::json!(0)),
        ("feature out of range", "feature", serde_json::json!(D)),
    ];
    for (what, field, value) in corruptions {
        let mut bad = good.clone();
        bad["trees"][0]["nodes"][1][field] = value;
        let result = serde_json::from_value::<GbdtModel>(bad);
        assert!(result.is_err(), "{what} accepted");
    }
    // A NaN leaf cannot be written as JSON; postcard can carry one.
    let mut bad = model.clone();
    bad.trees_mut()[0].leaf_values[0] = f32::NAN;
    let bytes = postcard::to_allocvec(&bad).expect("serialise");
    postcard::from_bytes::<GbdtModel>(&bytes).expect_err("NaN leaf accepted");
    assert!(matches!(
        bad.validate(),
        Err(GbdtError::CorruptModel { .. })
    ));
}

#[test]
fn early_stopping_keeps_the_best_validation_round() {
    // Little, noisy data and a high learning rate overfit quickly, so the
    // validation NDCG peaks early and then declines.
    let train_set = interaction_data(30, 11);
    let valid_set = interaction_data(60, 12);
    let params = GbdtParams {
        trees: 400,
        learning_rate: 0.3,
        min_data_in_leaf: 2,
        early_stopping_rounds: 15,
        ..GbdtParams::default()
    };
    let mut history = Vec::new();
    let model = train(
        &train_set.dataset(),
        Some(&valid_set.dataset()),
        &params,
        &mut |s| history.push(s),
    )
    .expect("well formed");
    let metrics: Vec<f64> = history
        .iter()
        .map(|s| s.valid_metric.expect("validation metric reported"))
        .collect();
    let best = (0..metrics.len()).fold(0, |b, i| if metrics[i] > metrics[b] { i } else { b });
    assert!(history.len() < 400, "early stopping never triggered");
    assert_eq!(
        history.len(),
        best + 1 + 15,
        "stops after exactly the patience"
    );
    assert_eq!(model.best_iteration(), Some(best));
    assert_eq!(model.n_trees(), best + 1);
    let rescored = mean_ndcg10(&predict_all(&model, &valid_set), &valid_set);
    assert_eq!(
        rescored, metrics[best],
        "kept trees reproduce the best score"
    );
    assert!(history.iter().enumerate().all(|(i, s)| s.iteration == i));
}

#[test]
fn logistic_early_stopping_minimises_logloss() {
    let train_set = interaction_data(20, 13);
    let valid_set = interaction_data(40, 14);
    let params = GbdtParams {
        objective: Objective::Logistic,
        trees: 400,
        learning_rate: 0.5,
        min_data_in_leaf: 2,
        early_stopping_rounds: 10,
        ..GbdtParams::default()
    };
    let mut history = Vec::new();
    let model = train(
        &train_set.dataset(),
        Some(&valid_set.dataset()),
        &params,
        &mut |s| history.push(s),
    )
    .expect("well formed");
    let metrics: Vec<f64> = history.iter().filter_map(|s| s.valid_metric).collect();
    let best = (0..metrics.len()).fold(0, |b, i| if metrics[i] < metrics[b] { i } else { b });
    assert!(history.len() < 400);
    assert_eq!(model.best_iteration(), Some(best));
    assert_eq!(model.n_trees(), best + 1);
}

#[test]
fn without_early_stopping_all_trees_are_kept() {
    let train_set = interaction_data(30, 15);
    let valid_set = interaction_data(30, 16);
    let params = GbdtParams {
        trees: 25,
        early_stopping_rounds: 0,
        ..GbdtParams::default()
    };
    let model = train_quiet(&train_set, Some(&valid_set), &params);
    assert_eq!(model.n_trees(), 25);
    assert!(model.best_iteration().is_some());
}

#[test]
fn params_round_trip_through_toml_with_defaults_filled_in() {
    let text = "trees = 50\nobjective = \"logistic\"\n";
    let params: GbdtParams = toml::from_str(text).expect("valid config");
    assert_eq!(params.trees, 50);
    assert_eq!(params.objective, Objective::Logistic);
    assert_eq!(params.max_leaves, GbdtParams::default().max_leaves);
    let ranked: GbdtParams =
        toml::from_str("[objective.lambda_rank]\nndcg_at = 5\n").expect("valid config");
    assert_eq!(ranked.objective, Objective::LambdaRank { ndcg_at: 5 });
    assert!(
        toml::from_str::<GbdtParams>("tress = 5").is_err(),
        "typos are errors"
    );
}

#[test]
fn fast_scoring_layout_matches_the_reference_walk() {
    let train_set = interaction_data(60, 17);
    let model = train_quiet(&train_set, None, &sampled_params(2));
    // 301 rows: full 8-row lanes plus a remainder; values outside the
    // training range, infinities and NaNs exercise every branch.
    let mut rng = Rng::new(18);
    let rows: Vec<f32> = (0..301 * D)
        .map(|_| match rng.below(20) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            _ => rng.f32() * 1.4 - 0.2,
        })
        .collect();
    let mut out = vec![0.0; 301];
    model
        .predict_batch(&rows, D, &mut out)
        .expect("right width");
    for (row, &got) in rows.chunks(D).zip(&out) {
        let want = model.predict_row_reference(row);
        assert_eq!(got.to_bits(), want.to_bits());
        assert_eq!(model.predict_row(row).to_bits(), want.to_bits());
    }
    // Short rows take the safe path: absent features read as missing.
    let short = &rows[..D - 1];
    let mut padded = short.to_vec();
    padded.push(f32::NAN);
    assert_eq!(model.predict_row(short), model.predict_row(&padded));
}

#[test]
fn trees_added_in_two_ranges_give_the_full_score_bit_for_bit() {
    let train_set = interaction_data(60, 23);
    let model = train_quiet(&train_set, None, &sampled_params(2));
    assert!(
        model.n_trees() > 10,
        "the split below needs trees on both sides"
    );
    let rows = &train_set.features[..37 * D];
    let mut full = vec![0.0; 37];
    model.predict_batch(rows, D, &mut full).unwrap();
    let mut split = vec![model.base_score(); 37];
    model.add_trees(rows, D, 0..7, &mut split).unwrap();
    assert_ne!(split, full, "seven trees alone are not the whole model");
    // past the end is clamped, not an error
    model.add_trees(rows, D, 7..usize::MAX, &mut split).unwrap();
    for (a, b) in split.iter().zip(&full) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
    // a bad shape is refused and leaves the scores as they were
    assert!(model.add_trees(&rows[1..], D, 0..3, &mut split).is_err());
    assert!(model.predict_batch(&rows[1..], D, &mut split).is_err());
    assert_eq!(split, full);
}
