//! Accumulates a `Dataset` from parsed rows of any format, and keeps the
//! `--max-bad-rows` budget (one budget across all input files).

use super::error::{IngestError, RowFault};
use crate::dataset::{BadRow, Dataset, EventKind, Interaction, ItemMeta, UserMeta};
use std::path::Path;

/// How many tolerated bad rows `TooManyBadRows` quotes.
const QUOTED_BAD_ROWS: usize = 5;

pub(crate) struct Builder {
    pub(crate) ds: Dataset,
    limit: u64,
    bad_count: u64,
    quoted: Vec<BadRow>,
}

impl Builder {
    pub(crate) fn new(max_bad_rows: u64) -> Self {
        Builder {
            ds: Dataset::default(),
            limit: max_bad_rows,
            bad_count: 0,
            quoted: Vec::new(),
        }
    }

    /// Records a malformed row. With no budget the first one is the error;
    /// otherwise rows within the budget are kept in `Dataset::bad_rows` and
    /// counting goes on to the end of the file (see `end_of_file`) so the
    /// error can say how many there are.
    pub(crate) fn reject(
        &mut self,
        file: &Path,
        line: u64,
        fault: RowFault,
    ) -> Result<(), IngestError> {
        if self.limit == 0 {
            return Err(IngestError::from_fault(file.to_path_buf(), line, fault));
        }
        self.bad_count += 1;
        let row = BadRow {
            file: file.display().to_string(),
            line,
            reason: fault.to_string(),
        };
        if self.quoted.len() < QUOTED_BAD_ROWS {
            self.quoted.push(row.clone());
        }
        if self.bad_count <= self.limit {
            self.ds.bad_rows.push(row);
        }
        Ok(())
    }

    /// Fails once a file has pushed the bad-row count past the budget.
    pub(crate) fn end_of_file(&self) -> Result<(), IngestError> {
        if self.bad_count > self.limit {
            return Err(IngestError::TooManyBadRows {
                count: self.bad_count,
                limit: self.limit,
                first: self.quoted.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn add_interaction(
        &mut self,
        user: &str,
        item: &str,
        ts: i64,
        kind: EventKind,
        value: f32,
    ) {
        let user = self.ds.users.intern(user);
        let item = self.ds.items.intern(item);
        self.ds.interactions.push(Interaction {
            user,
            item,
            ts,
            kind,
            value,
        });
    }

    /// The attributes of item `id`, adding the item if it is new (an item
    /// known only from the catalog is still an item: it can be recommended
    /// by content before anyone interacts with it).
    pub(crate) fn item_meta(&mut self, id: &str) -> (u32, &mut ItemMeta) {
        let index = self.ds.items.intern(id);
        let i = index as usize;
        if self.ds.item_meta.len() <= i {
            self.ds.item_meta.resize(i + 1, ItemMeta::default());
        }
        (index, &mut self.ds.item_meta[i])
    }

    pub(crate) fn user_meta(&mut self, id: &str) -> (u32, &mut UserMeta) {
        let index = self.ds.users.intern(id);
        let i = index as usize;
        if self.ds.user_meta.len() <= i {
            self.ds.user_meta.resize(i + 1, UserMeta::default());
        }
        (index, &mut self.ds.user_meta[i])
    }

    /// The category index of each of `names`, in the same order.
    pub(crate) fn category_indices(&mut self, names: &[String]) -> Result<Vec<u16>, RowFault> {
        names
            .iter()
            .map(|n| {
                self.ds
                    .intern_category(n)
                    .map_err(|e| RowFault::Other(e.to_string()))
            })
            .collect()
    }

    /// Category indices for `names`, sorted and unique, as `ItemMeta` wants.
    pub(crate) fn categories(&mut self, names: &[String]) -> Result<Vec<u16>, RowFault> {
        let mut out = self.category_indices(names)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    pub(crate) fn occupation(&mut self, name: &str) -> Result<u16, RowFault> {
        self.ds
            .intern_occupation(name)
            .map_err(|e| RowFault::Other(e.to_string()))
    }
}
