//! Offline training: everything `funnel train` fits from an interaction log.
//!
//! Owns: the model trainers (one module each: ALS, BPR, item-CF,
//! popularity), the offline pipeline that ties them to recall and ranking,
//! and the trainer that writes a bundle. Trainers take dense `Csr` matrices
//! and return plain arrays; must not touch serving state.

pub mod als;
pub mod bpr;
pub mod error;
pub mod itemcf;
pub mod pipeline;
pub mod popularity;
pub mod trainer;

pub use error::TrainError;

/// Generated data with known structure, shared by the trainers' tests.
#[cfg(test)]
pub(crate) mod planted {
    use crate::matrix::Matrix;
    use crate::rng::Rng;
    use crate::sparse::Csr;

    /// Users and items in `clusters` groups; each user's interactions are
    /// mostly (95%) items of its own group, chosen with a skew towards the group's
    /// "popular" items, plus some uniform noise. A few interactions per user
    /// are held out.
    pub struct Planted {
        pub train: Csr,
        /// (user, item) pairs not in `train`.
        pub held_out: Vec<(u32, u32)>,
    }

    pub fn generate(
        users: usize,
        items: usize,
        clusters: usize,
        per_user: usize,
        held_per_user: usize,
        seed: u64,
    ) -> Planted {
        let mut rng = Rng::new(seed);
        let per_cluster = items / clusters;
        let mut triples = Vec::new();
        let mut held_out = Vec::new();
        for u in 0..users {
            let cluster = u % clusters;
            let mut chosen: Vec<u32> = Vec::new();
            while chosen.len() < per_user + held_per_user {
                let item = if rng.f64() < 0.95 {
                    // squaring a uniform skews picks towards low ranks
                    let rank = ((rng.f64() * rng.f64()) * per_cluster as f64) as usize;
                    cluster * per_cluster + rank.min(per_cluster - 1)
                } else {
                    rng.usize_below(items)
                } as u32;
                if !chosen.contains(&item) {
                    chosen.push(item);
                }
            }
            for (n, &item) in chosen.iter().enumerate() {
                if n < per_user {
                    triples.push((u as u32, item, 1.0 + (n % 3) as f32));
                } else {
                    held_out.push((u as u32, item));
                }
            }
        }
        Planted {
            train: Csr::from_triples(users, items, &triples),
            held_out,
        }
    }

    /// Mean over held-out pairs of the fraction of the user's non-interacted
    /// items that score below the held-out item (ties count half).
    pub fn ranking_auc(p: &Planted, users: &Matrix, items: &Matrix) -> f64 {
        let score = |u: usize, i: usize| -> f32 {
            users
                .row(u)
                .iter()
                .zip(items.row(i))
                .map(|(a, b)| a * b)
                .sum()
        };
        let mut total = 0.0;
        for &(u, i) in &p.held_out {
            let (u, i) = (u as usize, i as usize);
            let seen = p.train.row_indices(u);
            let pos = score(u, i);
            let (mut wins, mut count) = (0.0, 0usize);
            for j in 0..items.rows() {
                if j == i || seen.binary_search(&(j as u32)).is_ok() {
                    continue;
                }
                let s = score(u, j);
                wins += if pos > s {
                    1.0
                } else if pos == s {
                    0.5
                } else {
                    0.0
                };
                count += 1;
            }
            total += wins / count as f64;
        }
        total / p.held_out.len() as f64
    }

    pub fn random_factors(rows: usize, k: usize, seed: u64) -> Matrix {
        let mut rng = Rng::new(seed);
        Matrix::from_vec(
            rows,
            k,
            (0..rows * k).map(|_| rng.normal() as f32).collect(),
        )
        .expect("shape matches")
    }
}
