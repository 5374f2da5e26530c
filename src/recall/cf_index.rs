//! Item-CF neighbour lists addressed by stable item key, shared by the
//! item-CF recall path and the cross features.

use crate::features::CfLookup;
use crate::ids::KeyMap;
use crate::sparse::Csr;

/// `lists` row i holds item i's neighbours (dense indices) and similarities.
#[derive(Debug, Clone, Default)]
pub struct CfIndex {
    keys: Vec<u64>,
    key_to_idx: KeyMap<u32>,
    lists: Csr,
}

impl CfIndex {
    /// `keys[i]` is the key of dense item i; `lists` is n_items x n_items.
    pub fn new(keys: Vec<u64>, lists: Csr) -> Result<Self, String> {
        if lists.n_rows() != keys.len() || lists.n_cols() != keys.len() {
            return Err(format!(
                "item-CF lists are {}x{} but there are {} items",
                lists.n_rows(),
                lists.n_cols(),
                keys.len()
            ));
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
