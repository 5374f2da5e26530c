//! Bayesian personalised ranking matrix factorisation (Rendle et al. 2009)
//! trained by SGD with uniformly sampled negatives.
//!
//! Owns: `BprParams`, `fit`, `BprModel`. Must not touch: files, id maps,
//! threads (training is single-threaded so one seed gives one result on
//! every machine with IEEE f32 arithmetic).
//!
//! Every observed entry with a value > 0 is a positive; others are ignored.
//! Each step draws a positive (u, i) uniformly from the observed entries
//! and a negative item j uniformly from the items u has no positive
//! interaction with, and takes an SGD step on
//! `ln sigmoid(x_u . (y_i - y_j)) - reg (|x_u|^2 + |y_i|^2 + |y_j|^2)`.
//!
//! With `item_bias` (default) the factor matrices get one extra column:
//! users hold a constant 1.0 there and items a learned bias, so the score
//! stays a plain dot product `user_factors.row(u) . item_factors.row(i)`
//! and serving can treat BPR and ALS factors alike.

use std::time::Instant;

use thiserror::Error;

use crate::matrix::Matrix;
use crate::rng::Rng;
use crate::sparse::Csr;

#[derive(Debug, Clone, PartialEq)]
pub struct BprParams {
    /// Latent dimensions (the bias column is extra). Default 64.
    pub factors: usize,
    /// SGD step size. Default 0.05.
    pub learning_rate: f32,
    /// L2 penalty applied at every step to the vectors it touches. Default 0.01.
    pub regularization: f32,
    /// Passes; one pass draws as many samples as there are positives. Default 50.
    pub epochs: usize,
    /// Seed of the initial factors and the sampler. Default 42.
    pub seed: u64,
    /// Learn a per-item bias in an extra column (see the module doc). Default true.
    pub item_bias: bool,
}

impl Default for BprParams {
    fn default() -> Self {
        BprParams {
            factors: 64,
            learning_rate: 0.05,
            regularization: 0.01,
            epochs: 50,
            seed: 42,
            item_bias: true,
        }
    }
}

/// Reported after each epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub seconds: f64,
    /// Fraction of this epoch's sampled (u, i, j) triples that the model
    /// ranked correctly just before updating on them: a cheap running AUC.
    pub sampled_auc: f64,
    /// Samples dropped because no negative was found in a few draws (users
    /// who interacted with almost every item).
    pub skipped: u64,
}

/// Trained factors (`factors + 1` columns when `item_bias` is set).
#[derive(Debug, Clone, PartialEq)]
pub struct BprModel {
    pub user_factors: Matrix,
    pub item_factors: Matrix,
}

#[derive(Debug, Error)]
pub enum BprError {
    #[error(
        "the interaction matrix has no positive entries ({rows} x {cols}, {nnz} entries); BPR \
         needs at least one interaction with a value > 0"
    )]
    NoPositives {
        rows: usize,
        cols: usize,
        nnz: usize,
    },
    #[error(
        "BPR needs at least 2 items to sample negatives, the matrix has {cols}; use a \
         popularity model for such catalogues"
    )]
    TooFewItems { cols: usize },
    #[error("invalid BPR parameter `{name}`: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error(
        "interaction value {value} at row {row}, column {col} is not finite; clean the input \
         before training"
    )]
    NonFiniteValue { row: usize, col: u32, value: f32 },
}

/// Spread of the initial factors.
const INIT_STD: f64 = 0.01;
/// Negative draws per sample before giving up on it.
const NEGATIVE_TRIES: usize = 16;
const ITEM_STREAM_SALT: u64 = 0x5851_F42D_4C95_7F2D;
const SAMPLER_STREAM: u64 = u64::MAX;

pub fn fit(
    x: &Csr,
    params: &BprParams,
    on_epoch: &mut dyn FnMut(EpochStats),
) -> Result<BprModel, BprError> {
    validate(x, params)?;
    let positives = positive_entries(x);
    let k = params.factors;
    let width = k + usize::from(params.item_bias);
    let mut users = init_factors(x.n_rows(), k, width, params.seed, 1.0);
    let mut items = init_factors(x.n_cols(), k, width, params.seed ^ ITEM_STREAM_SALT, 0.0);
    let mut rng = Rng::derive(params.seed, SAMPLER_STREAM);
    let n_items = x.n_cols() as u64;
    let step = Step {
        lr: params.learning_rate,
        reg: params.regularization,
        k,
        bias: params.item_bias,
    };
    for epoch in 1..=params.epochs {
        let start = Instant::now();
        let (mut correct, mut skipped) = (0u64, 0u64);
        for _ in 0..positives.len() {
            let (u, i) = positives[rng.usize_below(positives.len())];
            let seen = x.row_indices(u as usize);
            let negative = (0..NEGATIVE_TRIES)
                .map(|_| rng.below(n_items) as u32)
                .find(|j| !is_positive(x, seen, u as usize, *j));
            let Some(j) = negative else {
                skipped += 1;
                continue;
            };
            let (yi, yj) = two_rows(&mut items, i as usize, j as usize);
            if step.apply(users.row_mut(u as usize), yi, yj) {
                correct += 1;
            }
        }
        let drawn = positives.len() as u64 - skipped;
        on_epoch(EpochStats {
            epoch,
            seconds: start.elapsed().as_secs_f64(),
            sampled_auc: if drawn == 0 {
                0.0
            } else {
                correct as f64 / drawn as f64
            },
            skipped,
        });
    }
    Ok(BprModel {
        user_factors: users,
        item_factors: items,
    })
}

fn validate(x: &Csr, params: &BprParams) -> Result<(), BprError> {
    let bad = |name, reason: &str| {
        Err(BprError::InvalidParam {
            name,
            reason: reason.to_string(),
        })
    };
    if params.factors == 0 {
        return bad("factors", "must be at least 1 (typical: 32-256)");
    }
    if !(params.learning_rate > 0.0 && params.learning_rate.is_finite()) {
        return bad(
            "learning_rate",
            "must be a finite number > 0 (typical: 0.01-0.1)",
        );
    }
    if !(params.regularization >= 0.0 && params.regularization.is_finite()) {
        return bad("regularization", "must be a finite number >= 0");
    }
    for row in 0..x.n_rows() {
        for (col, value) in x.row(row) {
            if !value.is_finite() {
                return Err(BprError::NonFiniteValue { row, col, value });
            }
        }
    }
    if !x.values().iter().any(|&v| v > 0.0) {
        return Err(BprError::NoPositives {
            rows: x.n_rows(),
            cols: x.n_cols(),
            nnz: x.nnz(),
        });
    }
    if x.n_cols() < 2 {
        return Err(BprError::TooFewItems { cols: x.n_cols() });
    }
    Ok(())
}

fn positive_entries(x: &Csr) -> Vec<(u32, u32)> {
    (0..x.n_rows())
        .flat_map(|u| {
            x.row(u)
                .filter(|&(_, v)| v > 0.0)
                .map(move |(i, _)| (u as u32, i))
        })
        .collect()
}

/// Rows are sorted by column, so membership is a binary search.
fn is_positive(x: &Csr, seen: &[u32], u: usize, item: u32) -> bool {
    match seen.binary_search(&item) {
        Ok(pos) => x.row_values(u)[pos] > 0.0,
        Err(_) => false,
    }
}

fn init_factors(rows: usize, k: usize, width: usize, seed: u64, bias_value: f32) -> Matrix {
    let mut m = Matrix::zeros(rows, width);
    for (r, row) in m.rows_mut().enumerate() {
        let mut rng = Rng::derive(seed, r as u64);
        for v in &mut row[..k] {
            *v = (rng.normal() * INIT_STD) as f32;
        }
        for v in &mut row[k..] {
            *v = bias_value;
        }
    }
    m
}

/// Mutable access to two different rows of one matrix.
fn two_rows(m: &mut Matrix, a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    debug_assert_ne!(a, b, "a positive is never its own negative");
    let w = m.cols();
    let data = m.as_mut_slice();
    if a < b {
        let (lo, hi) = data.split_at_mut(b * w);
        (&mut lo[a * w..(a + 1) * w], &mut hi[..w])
    } else {
        let (lo, hi) = data.split_at_mut(a * w);
        (&mut hi[..w], &mut lo[b * w..(b + 1) * w])
    }
}

struct Step {
    lr: f32,
    reg: f32,
    k: usize,
    bias: bool,
}

impl Step {
    /// One SGD step on (u, i, j); returns whether the triple was already
    /// ordered correctly before the step.
    fn apply(&self, xu: &mut [f32], yi: &mut [f32], yj: &mut [f32]) -> bool {
        let k = self.k;
        let mut diff: f32 = 0.0;
        for f in 0..k {
            diff += xu[f] * (yi[f] - yj[f]);
        }
        if self.bias {
            diff += yi[k] - yj[k];
        }
        // d/d(diff) of ln sigmoid(diff) = sigmoid(-diff)
        let g = 1.0 / (1.0 + diff.exp());
        let (lr, reg) = (self.lr, self.reg);
        for f in 0..k {
            let (u, p, n) = (xu[f], yi[f], yj[f]);
            xu[f] = u + lr * (g * (p - n) - reg * u);
            yi[f] = p + lr * (g * u - reg * p);
            yj[f] = n + lr * (-g * u - reg * n);
        }
        if self.bias {
            yi[k] += lr * (g - reg * yi[k]);
            yj[k] += lr * (-g - reg * yj[k]);
        }
        diff > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::planted;

    fn params() -> BprParams {
        BprParams {
            factors: 16,
            epochs: 30,
            seed: 3,
            ..BprParams::default()
        }
    }

    #[test]
    fn learns_planted_clusters_far_above_random() {
        let data = planted::generate(600, 400, 4, 30, 3, 99);
        let mut stats = Vec::new();
        let model = fit(&data.train, &params(), &mut |s| stats.push(s)).unwrap();
        assert_eq!(stats.len(), 30);
        assert_eq!(model.user_factors.cols(), 17);
        assert!(model
            .user_factors
            .as_slice()
            .chunks(17)
            .all(|r| r[16] == 1.0));
        let auc = planted::ranking_auc(&data, &model.user_factors, &model.item_factors);
        assert!(auc >= 0.85, "BPR held-out AUC {auc}");
        let random = planted::ranking_auc(
            &data,
            &planted::random_factors(600, 17, 1),
            &planted::random_factors(400, 17, 2),
        );
        assert!(auc - random > 0.3, "BPR {auc} vs random {random}");
        // the running training AUC improves as it learns
        assert!(
            stats[29].sampled_auc > stats[0].sampled_auc + 0.1,
            "{stats:?}"
        );
    }

    #[test]
    fn same_seed_same_factors_and_seed_matters() {
        let data = planted::generate(100, 80, 4, 10, 0, 5);
        let p = BprParams {
            epochs: 3,
            ..params()
        };
        let a = fit(&data.train, &p, &mut |_| {}).unwrap();
        assert_eq!(a, fit(&data.train, &p, &mut |_| {}).unwrap());
        let q = BprParams { seed: 4, ..p };
        assert_ne!(a, fit(&data.train, &q, &mut |_| {}).unwrap());
    }

    #[test]
    fn without_bias_the_width_is_the_factor_count() {
        let data = planted::generate(50, 40, 2, 5, 0, 6);
        let p = BprParams {
            item_bias: false,
            epochs: 2,
            ..params()
        };
        let m = fit(&data.train, &p, &mut |_| {}).unwrap();
        assert_eq!((m.user_factors.cols(), m.item_factors.cols()), (16, 16));
    }

    #[test]
    fn negatives_are_never_positives_and_full_users_are_skipped() {
        // user 0 has every item: no negative exists, every sample is skipped
        let x = Csr::from_triples(1, 3, &[(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0)]);
        let mut skipped = 0;
        let before = fit(
            &x,
            &BprParams {
                epochs: 0,
                ..params()
            },
            &mut |_| {},
        )
        .unwrap();
        let after = fit(
            &x,
            &BprParams {
                epochs: 2,
                ..params()
            },
            &mut |s| skipped += s.skipped,
        )
        .unwrap();
        assert_eq!(skipped, 6);
        assert_eq!(before, after, "skipped samples must not update anything");
        // a non-positive entry is a valid negative
        let y = Csr::from_triples(1, 2, &[(0, 0, 1.0), (0, 1, -1.0)]);
        let mut s = 0;
        fit(
            &y,
            &BprParams {
                epochs: 1,
                ..params()
            },
            &mut |e| s += e.skipped,
        )
        .unwrap();
        assert_eq!(s, 0);
    }

    #[test]
    fn rejects_bad_input() {
        let ok = Csr::from_triples(2, 3, &[(0, 1, 1.0)]);
        let run = |x: &Csr, p: &BprParams| fit(x, p, &mut |_| {}).unwrap_err();
        assert!(matches!(
            run(&Csr::from_triples(2, 3, &[]), &params()),
            BprError::NoPositives { .. }
        ));
        assert!(matches!(
            run(&Csr::from_triples(2, 3, &[(0, 0, -1.0)]), &params()),
            BprError::NoPositives { .. }
        ));
        assert!(matches!(
            run(&Csr::from_triples(1, 1, &[(0, 0, 1.0)]), &params()),
            BprError::TooFewItems { cols: 1 }
        ));
        let lr = BprParams {
            learning_rate: 0.0,
            ..params()
        };
        assert!(matches!(
            run(&ok, &lr),
            BprError::InvalidParam {
                name: "learning_rate",
                ..
            }
        ));
        let k0 = BprParams {
            factors: 0,
            ..params()
        };
        assert!(matches!(
            run(&ok, &k0),
            BprError::InvalidParam {
                name: "factors",
                ..
            }
        ));
        let nan = Csr::from_triples(2, 3, &[(1, 2, f32::NAN)]);
        assert!(matches!(
            run(&nan, &params()),
            BprError::NonFiniteValue { row: 1, col: 2, .. }
        ));
    }
}
