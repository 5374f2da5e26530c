//! Item-to-item neighbours: cosine similarity over co-occurrence in user
//! histories, top-M per item, sparse.
//!
//! sim(i, j) = co(i, j) / sqrt(n_i * n_j), where co counts users who have
//! both items and n_i users who have i. Each item keeps its M most similar
//! items (ties to the lower index), which is what the item-CF recall path
//! expands from a user's recent items.

use crate::sparse::Csr;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ItemCfParams {
    /// Neighbours kept per item.
    pub neighbours: usize,
    /// Only a user's most recent this-many items count, so one very heavy
    /// user cannot dominate the quadratic co-occurrence work.
    pub max_user_items: usize,
    /// Shrinkage: sim *= co / (co + shrink). 0 = plain cosine.
    pub shrink: f32,
}

impl Default for ItemCfParams {
    fn default() -> Self {
        ItemCfParams {
            neighbours: 100,
            max_user_items: 500,
            shrink: 0.0,
        }
    }
}

/// Builds the neighbour lists. `user_items[u]` is user u's distinct items
/// in time order (oldest first). Returns an n_items x n_items `Csr` whose
/// row i lists i's neighbours by descending similarity.
pub fn fit(user_items: &[Vec<u32>], n_items: usize, p: &ItemCfParams) -> Csr {
    let recent = |items: &Vec<u32>| -> Vec<u32> {
        let start = items.len().saturating_sub(p.max_user_items);
        items[start..].to_vec()
    };
    let users: Vec<Vec<u32>> = user_items.iter().map(recent).collect();
    let mut item_users: Vec<Vec<u32>> = vec![Vec::new(); n_items];
    for (u, items) in users.iter().enumerate() {
        for &i in items {
            item_users[i as usize].push(u as u32);
        }
    }
    let counts: Vec<f32> = item_users.iter().map(|v| v.len() as f32).collect();
    let m = p.neighbours;
    let rows: Vec<Vec<(u32, f32)>> = (0..n_items)
        .into_par_iter()
        .map_init(
            || (vec![0u32; n_items], Vec::<u32>::new()),
            |(co, touched), i| {
                for &u in &item_users[i] {
                    for &j in &users[u as usize] {
                        if j as usize != i {
                            if co[j as usize] == 0 {
                                touched.push(j);
                            }
                            co[j as usize] += 1;
                        }
                    }
                }
                let ni = counts[i];
                let mut sims: Vec<(u32, f32)> = touched
                    .iter()
                    .map(|&j| {
                        let c = co[j as usize] as f32;
                        let mut s = c / (ni * counts[j as usize]).sqrt();
                        if p.shrink > 0.0 {
                            s *= c / (c + p.shrink);
                        }
                        (j, s)
                    })
                    .collect();
                for &j in touched.iter() {
                    co[j as usize] = 0;
                }
                touched.clear();
                let order =
                    |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                if sims.len() > m {
                    sims.select_nth_unstable_by(m, order);
                    sims.truncate(m);
                }
                sims.sort_by(order);
                sims
            },
        )
        .collect();
    Csr::from_rows(n_items, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_on_a_tiny_example() {
        // users: {0,1}, {0,1,2}, {2,3}
        let users = vec![vec![0, 1], vec![0, 1, 2], vec![2, 3]];
        let nb = fit(
            &users,
            4,
            &ItemCfParams {
                neighbours: 10,
                ..Default::default()
            },
        );
        // co(0,1)=2, n0=2, n1=2 -> 1.0 ; co(0,2)=1, n2=2 -> 0.5
        assert_eq!(nb.row(0).collect::<Vec<_>>(), vec![(1, 1.0), (2, 0.5)]);
        // item 2: co with 0,1 = 1 (sim .5 each), with 3 = 1, n3 = 1 -> 1/sqrt(2)
        let r2: Vec<(u32, f32)> = nb.row(2).collect();
        assert_eq!(r2[0].0, 3);
        assert!((r2[0].1 - 1.0 / 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(&r2[1..], &[(0, 0.5), (1, 0.5)]);
        // item 3 only co-occurs with 2
        assert_eq!(nb.row_indices(3), &[2]);
    }

    #[test]
    fn top_m_and_history_cap() {
        let users = vec![vec![0, 1, 2, 3]];
        let nb = fit(
            &users,
            4,
            &ItemCfParams {
                neighbours: 2,
                max_user_items: 10,
                shrink: 0.0,
            },
        );
        assert_eq!(nb.row_indices(0), &[1, 2]);
        // with a cap of 2 only items 2 and 3 co-occur
        let nb = fit(
            &users,
            4,
            &ItemCfParams {
                neighbours: 5,
                max_user_items: 2,
                shrink: 0.0,
            },
        );
        assert_eq!(nb.row_len(0), 0);
        assert_eq!(nb.row_indices(3), &[2]);
    }
}
