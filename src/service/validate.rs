//! Edge validation: every request is checked completely before anything
//! changes, and an error names the field (with its index in a batch) and
//! says what is allowed.

use super::types::{EventIn, ItemIn, RecommendQuery, ServiceError};
use crate::config::ApiConfig;
use crate::dataset::EventKind;
use crate::ids::validate_id;

/// Most categories a recommend filter or an item may carry.
pub const MAX_CATEGORIES: usize = 64;
/// Longest category name or title accepted.
pub const MAX_TEXT: usize = 512;

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidArgument(msg)
}

fn check_id(field: &str, id: &str) -> Result<(), ServiceError> {
    validate_id(id).map_err(|e| invalid(format!("{field}: {e}")))
}

/// A recommend request with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecommend {
    pub user_id: String,
    pub k: usize,
    pub deadline_ms: u32,
    pub exclude: Vec<String>,
    pub categories: Vec<String>,
    pub timestamp: Option<i64>,
    pub device: String,
    pub seed: Option<u64>,
    pub request_id: Option<String>,
}

pub fn recommend(q: RecommendQuery, api: &ApiConfig) -> Result<ValidRecommend, ServiceError> {
    check_id("user_id", &q.user_id)?;
    let k = if q.k == 0 {
        api.default_k
    } else {
        q.k as usize
    };
    if k > api.max_k {
        return Err(invalid(format!(
            "k: {k} is above the maximum of {}; ask for at most {}",
            api.max_k, api.max_k
        )));
    }
    if q.exclude_item_ids.len() > api.max_batch {
        return Err(ServiceError::ResourceExhausted(format!(
            "exclude_item_ids: {} ids is above the maximum of {}",
            q.exclude_item_ids.len(),
            api.max_batch
        )));
    }
    for (i, id) in q.exclude_item_ids.iter().enumerate() {
        check_id(&format!("exclude_item_ids[{i}]"), id)?;
    }
    check_categories("categories", &q.categories)?;
    // a client may ask for less time than the default, never for more than the maximum
    let deadline_ms = match q.deadline_ms {
        0 => api.default_deadline_ms,
        d => (d as u64).min(api.max_deadline_ms),
    };
    if q.context.timestamp < 0 {
        return Err(invalid(format!(
            "context.timestamp: {} is negative; send Unix seconds or 0 for now",
            q.context.timestamp
        )));
    }
    if q.context.device.len() > MAX_TEXT {
        return Err(invalid(format!(
            "context.device: longer than {MAX_TEXT} bytes"
        )));
    }
    if q.request_id.len() > 128 {
        return Err(invalid("request_id: longer than 128 bytes".into()));
    }
    Ok(ValidRecommend {
        user_id: q.user_id,
        k,
        deadline_ms: deadline_ms.min(u32::MAX as u64) as u32,
        exclude: q.exclude_item_ids,
        categories: q.categories,
        timestamp: (q.context.timestamp > 0).then_some(q.context.timestamp),
        device: q.context.device,
        seed: (q.seed != 0).then_some(q.seed),
        request_id: (!q.request_id.is_empty()).then_some(q.request_id),
    })
}

fn check_categories(field: &str, cats: &[String]) -> Result<(), ServiceError> {
    if cats.len() > MAX_CATEGORIES {
        return Err(invalid(format!(
            "{field}: {} categories; at most {MAX_CATEGORIES} are allowed",
            cats.len()
        )));
    }
    for (i, c) in cats.iter().enumerate() {
        if c.trim().is_empty() || c.len() > MAX_TEXT || c.chars().any(char::is_control) {
            return Err(invalid(format!("{field}[{i}]: a category must be non-empty printable text of at most {MAX_TEXT} bytes")));
        }
    }
    Ok(())
}

fn check_batch(field: &str, n: usize, api: &ApiConfig) -> Result<(), ServiceError> {
    if n == 0 {
        return Err(invalid(format!(
            "{field}: the batch is empty; send at least one"
        )));
    }
    if n > api.max_batch {
        return Err(ServiceError::ResourceExhausted(format!(
            "{field}: {n} entries is above the maximum batch of {}; split the batch",
            api.max_batch
        )));
    }
    Ok(())
}

/// An event ready to log and apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    pub weight: f32,
    pub timestamp: i64,
    pub device: String,
}

pub fn events(
    events: Vec<EventIn>,
    api: &ApiConfig,
    now: i64,
) -> Result<Vec<ValidEvent>, ServiceError> {
    check_batch("events", events.len(), api)?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            check_id(&format!("events[{i}].user_id"), &e.user_id)?;
            check_id(&format!("events[{i}].item_id"), &e.item_id)?;
            let kind =
                EventKind::parse(&e.kind).map_err(|m| invalid(format!("events[{i}].kind: {m}")))?;
            if !e.weight.is_finite() || e.weight < 0.0 {
                return Err(invalid(format!(
                    "events[{i}].weight: {} is not a finite number >= 0",
                    e.weight
                )));
            }
            if e.timestamp < 0 {
                return Err(invalid(format!(
                    "events[{i}].timestamp: {} is negative; send Unix seconds or 0 for now",
                    e.timestamp
                )));
            }
            if e.device.len() > MAX_TEXT {
                return Err(invalid(format!(
                    "events[{i}].device: longer than {MAX_TEXT} bytes"
                )));
            }
            let weight = if e.weight == 0.0 {
                kind.default_weight()
            } else {
                e.weight
            };
            Ok(ValidEvent {
                user_id: e.user_id,
                item_id: e.item_id,
                kind,
                weight,
                timestamp: if e.timestamp == 0 { now } else { e.timestamp },
                device: e.device,
            })
        })
        .collect()
}

/// An item upsert with its vector checked (or empty: to be folded in).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidItem {
    pub item_id: String,
    pub vector: Vec<f32>,
    pub categories: Vec<String>,
    pub title: Option<String>,
    pub created_at: i64,
}

pub fn items(
    items: Vec<ItemIn>,
    dimension: usize,
    api: &ApiConfig,
    now: i64,
) -> Result<Vec<ValidItem>, ServiceError> {
    check_batch("items", items.len(), api)?;
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .enumerate()
        .map(|(i, it)| {
            check_id(&format!("items[{i}].item_id"), &it.item_id)?;
            if !seen.insert(it.item_id.clone()) {
                return Err(invalid(format!("items[{i}].item_id: {:?} appears twice in the batch", it.item_id)));
            }
            if !it.vector.is_empty() && it.vector.len() != dimension {
                return Err(invalid(format!(
                    "items[{i}].vector: has dimension {}, the model's is {dimension}",
                    it.vector.len()
                )));
            }
            if let Some(j) = it.vector.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!("items[{i}].vector[{j}]: {} is not a finite number", it.vector[j])));
            }
            if it.vector.is_empty() && it.categories.is_empty() {
                return Err(invalid(format!(
                    "items[{i}]: no vector and no categories; send a vector, or categories to fold one from"
                )));
            }
            check_categories(&format!("items[{i}].categories"), &it.categories)?;
            if it.title.len() > MAX_TEXT {
                return Err(invalid(format!("items[{i}].title: longer than {MAX_TEXT} bytes")));
            }
            if it.created_at < 0 {
                return Err(invalid(format!("items[{i}].created_at: {} is negative", it.created_at)));
            }
            Ok(ValidItem {
                item_id: it.item_id,
                vector: it.vector,
                categories: it.categories,
                title: (!it.title.is_empty()).then_some(it.title),
                created_at: if it.created_at == 0 { now } else { it.created_at },
            })
        })
        .collect()
}

pub fn item_ids(ids: &[String], api: &ApiConfig) -> Result<(), ServiceError> {
    check_batch("item_ids", ids.len(), api)?;
    for (i, id) in ids.iter().enumerate() {
        check_id(&format!("item_ids[{i}]"), id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> ApiConfig {
        ApiConfig {
            max_k: 50,
            max_batch: 3,
            ..ApiConfig::default()
        }
    }

    fn err(r: Result<impl std::fmt::Debug, ServiceError>) -> ServiceError {
        r.expect_err("should be refused")
    }

    #[test]
    fn recommend_defaults_and_limits() {
        let a = api();
        let v = recommend(
            RecommendQuery {
                user_id: "u1".into(),
                ..Default::default()
            },
            &a,
        )
        .unwrap();
        assert_eq!(
            (v.k, v.deadline_ms),
            (a.default_k, a.default_deadline_ms as u32)
        );
        let v = recommend(
            RecommendQuery {
                user_id: "u1".into(),
                deadline_ms: 60_000,
                ..Default::default()
            },
            &a,
        )
        .unwrap();
        assert_eq!(v.deadline_ms as u64, a.max_deadline_ms);
        assert!(
            matches!(err(recommend(RecommendQuery { user_id: "u1".into(), k: 51, ..Default::default() }, &a)), ServiceError::InvalidArgument(m) if m.starts_with("k:"))
        );
        assert!(
            matches!(err(recommend(RecommendQuery::default(), &a)), ServiceError::InvalidArgument(m) if m.starts_with("user_id"))
        );
        let many = RecommendQuery {
            user_id: "u".into(),
            exclude_item_ids: vec!["a".into(); 4],
            ..Default::default()
        };
        assert!(matches!(
            err(recommend(many, &a)),
            ServiceError::ResourceExhausted(_)
        ));
    }

    #[test]
    fn events_are_checked_with_their_index() {
        let a = api();
        let ok = EventIn {
            user_id: "u".into(),
            item_id: "i".into(),
            kind: "click".into(),
            ..Default::default()
        };
        let v = events(vec![ok.clone()], &a, 100).unwrap();
        assert_eq!((v[0].weight, v[0].timestamp), (2.0, 100));
        let bad_kind = EventIn {
            kind: "hover".into(),
            ..ok.clone()
        };
        let e = err(events(vec![ok.clone(), bad_kind], &a, 0));
        assert!(
            e.to_string()
                .starts_with("events[1].kind: unknown event kind"),
            "{e}"
        );
        let nan = EventIn {
            weight: f32::NAN,
            ..ok.clone()
        };
        assert!(err(events(vec![nan], &a, 0))
            .to_string()
            .contains("events[0].weight"));
        assert!(matches!(
            err(events(vec![ok.clone(); 4], &a, 0)),
            ServiceError::ResourceExhausted(_)
        ));
        assert!(matches!(
            err(events(vec![], &a, 0)),
            ServiceError::InvalidArgument(_)
        ));
    }

    #[test]
    fn items_need_the_right_dimension_and_finite_values() {
        let a = api();
        let it = |v: Vec<f32>| ItemIn {
            item_id: "x".into(),
            vector: v,
            ..Default::default()
        };
        assert!(items(vec![it(vec![1.0, 2.0])], 2, &a, 5).is_ok());
        assert!(err(items(vec![it(vec![1.0])], 2, &a, 5))
            .to_string()
            .contains("dimension 1, the model's is 2"));
        assert!(err(items(vec![it(vec![1.0, f32::INFINITY])], 2, &a, 5))
            .to_string()
            .contains("vector[1]"));
        assert!(err(items(vec![it(vec![])], 2, &a, 5))
            .to_string()
            .contains("no vector and no categories"));
        assert!(err(items(
            vec![it(vec![1.0, 1.0]), it(vec![1.0, 1.0])],
            2,
            &a,
            5
        ))
        .to_string()
        .contains("twice"));
    }
}
