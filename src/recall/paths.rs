//! The pure recall paths. Each returns up to `k` (item key, path score)
//! pairs, best first, skipping items the filter refuses.

/// Best `k` of scored items: higher score first, ties to the lower key so
/// the order never depends on hash-map iteration.
pub fn top_by_score(
    items: impl Iterator<Item = (u64, f32)>,
    k: usize,
    allow: &dyn Fn(u64) -> bool,
) -> Vec<(u64, f32)> {
    let mut v: Vec<(u64, f32)> = items
        .filter(|&(key, s)| s.is_finite() && allow(key))
        .collect();
    let order = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if v.len() > k {
        v.select_nth_unstable_by(k, order);
        v.truncate(k);
    }
    v.sort_by(order);
    v
}

/// The first `k` allowed items of a ranked list (popular, trending, fresh),
/// scored by descending position.
pub fn from_list(list: &[u64], k: usize, allow: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
    list.iter()
        .copied()
        .filter(|&key| allow(key))
        .take(k)
        .enumerate()
        .map(|(r, key)| (key, 1.0 / (r as f32 + 1.0)))
        .collect()
}

/// Category rule: the most popular items of the user's favourite
/// categories, each category's share of `k` proportional to its taste
/// weight (at least one slot for each). `taste` is (category, weight)
/// normalised; `by_category[c]` is category c's popularity-ordered list.
pub fn rules(
    taste: &[(u16, f32)],
    by_category: &[Vec<u64>],
    k: usize,
    allow: &dyn Fn(u64) -> bool,
) -> Vec<(u64, f32)> {
    let mut cats: Vec<(u16, f32)> = taste
        .iter()
        .copied()
        .filter(|&(c, w)| w > 0.0 && (c as usize) < by_category.len())
        .collect();
    cats.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    cats.truncate(5);
    let total: f32 = cats.iter().map(|c| c.1).sum();
    let mut out: Vec<(u64, f32)> = Vec::with_capacity(k);
    let mut seen = std::collections::HashSet::new();
    for &(c, w) in &cats {
        let share = ((w / total) * k as f32).ceil().max(1.0) as usize;
        let mut taken = 0;
        for (r, &key) in by_category[c as usize].iter().enumerate() {
            if taken == share || out.len() == k {
                break;
            }
            if allow(key) && seen.insert(key) {
                out.push((key, w / (r as f32 + 1.0)));
                taken += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_by_score_orders_and_filters() {
        let items = vec![(5, 0.5), (3, 0.9), (9, 0.9), (1, f32::NAN), (2, 0.1)];
        let got = top_by_score(items.into_iter(), 3, &|k| k != 9);
        assert_eq!(got, vec![(3, 0.9), (5, 0.5), (2, 0.1)]);
    }

    #[test]
    fn list_path_skips_refused() {
        let got = from_list(&[4, 5, 6, 7], 2, &|k| k != 5);
        assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4, 6]);
    }

    #[test]
    fn rules_split_by_taste() {
        let by_cat = vec![vec![10, 11, 12, 13], vec![20, 21, 22]];
        let got = rules(&[(0, 0.75), (1, 0.25)], &by_cat, 4, &|k| k != 11);
        let keys: Vec<u64> = got.iter().map(|x| x.0).collect();
        assert_eq!(keys, vec![10, 12, 13, 20]);
    }
}
