//! Vectors for items known only by their categories.
//!
//! A cold item (no interaction in the training window, or upserted live
//! without a vector) gets the mean of its categories' centroids, the
//! centroids being mean vectors of the items that do have interactions.
//! The trainer folds cold catalogue items with this before it builds the
//! ANN indexes, and a serving node folds a vector-less upsert with the
//! same function, so a cold item scores the same offline and online.

/// Mean vector per category over the rows `warm` marks (rows without
/// interactions hold no information and would pull every centroid towards
/// zero). A category without a warm item gets an empty centroid.
pub fn category_centroids(
    vectors: &crate::matrix::Matrix,
    categories: &[Vec<u16>],
    n_categories: usize,
    warm: &[bool],
) -> Vec<Vec<f32>> {
    let dim = vectors.cols();
    let mut sums = vec![vec![0f64; dim]; n_categories];
    let mut counts = vec![0usize; n_categories];
    for (i, cats) in categories.iter().enumerate() {
        if i >= vectors.rows() || !warm.get(i).copied().unwrap_or(false) {
            continue;
        }
        for &c in cats {
            if let Some(s) = sums.get_mut(c as usize) {
                for (a, &v) in s.iter_mut().zip(vectors.row(i)) {
                    *a += f64::from(v);
                }
                counts[c as usize] += 1;
            }
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(s, n)| {
            if n == 0 {
                Vec::new()
            } else {
                s.into_iter().map(|v| (v / n as f64) as f32).collect()
            }
        })
        .collect()
}

/// The mean of the centroids of `categories` that have one, or None when
/// none has (the item then has no vector: recall finds it only through
/// the popular, fresh and category paths).
pub fn fold_categories(centroids: &[Vec<f32>], categories: &[u16], dim: usize) -> Option<Vec<f32>> {
    let cs: Vec<&Vec<f32>> = categories
        .iter()
        .filter_map(|&c| centroids.get(c as usize))
        .filter(|c| c.len() == dim && dim > 0)
        .collect();
    if cs.is_empty() {
        return None;
    }
    let mut v = vec![0f32; dim];
    for c in &cs {
        for (a, b) in v.iter_mut().zip(c.iter()) {
            *a += b / cs.len() as f32;
        }
    }
    Some(v)
}

/// Gives every row that `warm` does not mark the folded vector of its
/// categories (rows whose categories have no centroid stay as they are).
/// Returns how many rows were folded.
pub fn fold_cold_rows(
    vectors: &mut crate::matrix::Matrix,
    categories: &[Vec<u16>],
    warm: &[bool],
    centroids: &[Vec<f32>],
) -> usize {
    let dim = vectors.cols();
    let mut folded = 0;
    for (i, cats) in categories.iter().enumerate().take(vectors.rows()) {
        if warm.get(i).copied().unwrap_or(false) {
            continue;
        }
        if let Some(v) = fold_categories(centroids, cats, dim) {
            vectors.row_mut(i).copy_from_slice(&v);
            folded += 1;
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    fn rows(r: &[[f32; 2]]) -> Matrix {
        Matrix::from_vec(r.len(), 2, r.iter().flatten().copied().collect()).unwrap()
    }

    #[test]
    fn centroids_average_only_warm_items() {
        let m = rows(&[[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [0.0, 4.0]]);
        let cats = vec![vec![0], vec![0, 1], vec![0], vec![1]];
        let warm = [true, true, false, true];
        let c = category_centroids(&m, &cats, 3, &warm);
        // the cold row 2 (zeros) does not drag category 0 down
        assert_eq!(c[0], vec![2.0, 1.0]);
        assert_eq!(c[1], vec![1.5, 3.0]);
        assert!(c[2].is_empty(), "a category without items has no centroid");
    }

    #[test]
    fn a_cold_row_becomes_the_mean_of_its_category_centroids() {
        let mut m = rows(&[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]);
        let cats = vec![vec![0], vec![1], vec![0, 1], vec![2], vec![]];
        let warm = [true, true, false, false, false];
        let c = category_centroids(&m, &cats, 3, &warm);
        let n = fold_cold_rows(&mut m, &cats, &warm, &c);
        assert_eq!(n, 1, "only the item whose categories have centroids");
        assert_eq!(m.row(2), &[0.5, 2.0]);
        assert_eq!(m.row(3), &[0.0, 0.0], "category 2 has no centroid");
        assert_eq!(m.row(0), &[1.0, 0.0], "warm rows are untouched");
        assert_eq!(fold_categories(&c, &[0, 1], 2), Some(vec![0.5, 2.0]));
        assert_eq!(fold_categories(&c, &[0], 3), None, "wrong dimension");
    }
}
