//! Item-CF neighbour lists addressed by stable item key, shared by the
//! item-CF recall path and the cross features.

use crate::features::CfLookup;
use crate::ids::KeyMap;
use crate::sparse::Csr;

/// `CfIndex::new` was given neighbour lists whose shape is not
/// n_items x n_items.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item-CF lists are {rows}x{cols} but there are {items} items")]
pub struct CfShapeError {
    pub rows: usize,
    pub cols: usize,
    pub items: usize,
}

/// `lists` row i holds item i's neighbours (dense indices) and similarities.
#[derive(Debug, Clone, Default)]
pub struct CfIndex {
    keys: Vec<u64>,
    key_to_idx: KeyMap<u32>,
    lists: Csr,
}

impl CfIndex {
    /// `keys[i]` is the key of dense item i; `lists` is n_items x n_items.
    pub fn new(keys: Vec<u64>, lists: Csr) -> Result<Self, CfShapeError> {
        if lists.n_rows() != keys.len() || lists.n_cols() != keys.len() {
            return Err(CfShapeError {
                rows: lists.n_rows(),
                cols: lists.n_cols(),
                items: keys.len(),
            });
        }
        let key_to_idx = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();
        Ok(CfIndex {
            keys,
            key_to_idx,
            lists,
        })
    }

    pub fn lists(&self) -> &Csr {
        &self.lists
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl CfLookup for CfIndex {
    fn for_each_neighbour(&self, item: u64, f: &mut dyn FnMut(u64, f32)) {
        if let Some(&i) = self.key_to_idx.get(&item) {
            for (j, s) in self.lists.row(i as usize) {
                f(self.keys[j as usize], s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_not_square_over_the_items_are_a_shape_error() {
        let err = CfIndex::new(vec![10, 20], Csr::from_triples(2, 3, &[])).unwrap_err();
        assert_eq!(
            err,
            CfShapeError {
                rows: 2,
                cols: 3,
                items: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "item-CF lists are 2x3 but there are 2 items"
        );
        let ok = CfIndex::new(vec![10, 20], Csr::from_triples(2, 2, &[(0, 1, 0.5)])).unwrap();
        let mut seen = Vec::new();
        ok.for_each_neighbour(10, &mut |k, s| seen.push((k, s)));
        assert_eq!(seen, vec![(20, 0.5)]);
    }
}
