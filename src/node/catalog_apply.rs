//! Catalogue application: puts item upserts and deletes into this node's
//! shard copies of the served version and into its catalogue, either
//! directly (a single node) or, in a cluster, the changes Raft committed,
//! in log order, from the index this node applied last.
//!
//! Owns: no state of its own; the order changes are applied in, and
//! advancing the cluster link's applied catalogue index once they are.
//! Must not touch: validation and folding of client items (`Node`'s
//! operations do that before anything is written), the Raft rules
//! (`cluster::state`), or which version is served (`model_host`; the
//! caller passes the `Serving` to apply to).

use super::model_host::ModelHost;
use crate::cluster::ItemRecord;
use crate::control::ClusterLink;
use crate::coordinator::Serving;
use crate::ids::{item_key, shard_of};
use crate::service::types::ServiceError;
use crate::shard::{Delete, Upsert};
use std::collections::BTreeMap;

/// Puts items into this node's shards and catalogue.
pub(super) async fn apply_upserts(
    host: &ModelHost,
    serving: &Serving,
    records: &[ItemRecord],
) -> Result<(), ServiceError> {
    let shards = host.shard_actors();
    let n_shards = serving.model.shard_count.max(1);
    let mut by_shard: BTreeMap<u32, Vec<(u64, Vec<f32>)>> = BTreeMap::new();
    for r in records {
        if r.vector.len() != serving.model.dimension {
            continue;
        }
        let key = item_key(&r.id);
        let s = shard_of(key, n_shards);
        if shards.contains_key(&s) {
            by_shard.entry(s).or_default().push((key, r.vector.clone()));
        }
    }
    for (s, batch) in by_shard {
        shards[&s]
            .send(Upsert { items: batch })
            .await
            .map_err(|e| ServiceError::unavailable_from(format!("shard {s} unavailable"), e))?
            .map_err(ServiceError::internal_cause)?;
    }
    for r in records {
        serving.catalog.upsert(
            &r.id,
            r.vector.clone(),
            &r.categories,
            r.title.clone(),
            r.created_at,
        );
    }
    Ok(())
}

/// Removes items from this node's shards and catalogue; answers how
/// many existed.
pub(super) async fn apply_deletes(
    host: &ModelHost,
    serving: &Serving,
    ids: &[String],
) -> Result<u32, ServiceError> {
    let shards = host.shard_actors();
    let n_shards = serving.model.shard_count.max(1);
    let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut deleted = 0;
    for id in ids {
        let key = item_key(id);
        if serving.catalog.delete(key) {
            deleted += 1;
        }
        let s = shard_of(key, n_shards);
        if shards.contains_key(&s) {
            by_shard.entry(s).or_default().push(key);
        }
    }
    for (s, keys) in by_shard {
        shards[&s]
            .send(Delete { keys })
            .await
            .map_err(|e| ServiceError::unavailable_from(format!("shard {s} unavailable"), e))?
            .map_err(ServiceError::internal_cause)?;
    }
    Ok(deleted)
}

/// Applies the catalogue changes Raft committed since the last call, in
/// log order, to this node's shards and to `serving`'s catalogue.
pub(super) async fn apply_committed(
    host: &ModelHost,
    link: &ClusterLink,
    serving: &Serving,
) -> Result<(), ServiceError> {
    let from = link.catalog_applied();
    enum Change {
        Upsert(ItemRecord),
        Delete(String),
    }
    let (changes, upto) = {
        let st = link.raft.state();
        let st = st.read();
        let changes: Vec<Change> = st
            .catalog
            .changed_since(from)
            .map(|c| match c {
                crate::cluster::CatalogChange::Upsert { item, .. } => Change::Upsert(item.clone()),
                crate::cluster::CatalogChange::Delete { id, .. } => Change::Delete(id.to_string()),
            })
            .collect();
        (changes, st.last_applied.map_or(0, |l| l.index))
    };
    // consecutive runs of one kind go together; order across kinds is kept
    let mut i = 0;
    while i < changes.len() {
        let is_upsert = matches!(changes[i], Change::Upsert(_));
        let mut j = i;
        while j < changes.len() && matches!(changes[j], Change::Upsert(_)) == is_upsert {
            j += 1;
        }
        if is_upsert {
            let recs: Vec<ItemRecord> = changes[i..j]
                .iter()
                .filter_map(|c| match c {
                    Change::Upsert(r) => Some(r.clone()),
                    Change::Delete(_) => None,
                })
                .collect();
            apply_upserts(host, serving, &recs).await?;
        } else {
            let ids: Vec<String> = changes[i..j]
                .iter()
                .filter_map(|c| match c {
                    Change::Delete(id) => Some(id.clone()),
                    Change::Upsert(_) => None,
                })
                .collect();
            apply_deletes(host, serving, &ids).await?;
        }
        i = j;
    }
    link.set_catalog_applied(upto);
    Ok(())
}
