//! The one place features are computed, offline and online.
//!
//! Owns: the feature schema (names, version, hash), realtime per-user state
//! (`UserState`) and per-item counters (`ItemStats`) with the event-by-event
//! update rules, the request context, and the pure function that turns
//! (user state, item, context, recall provenance) into a feature vector.
//! The trainer replays logged events through exactly this code to build
//! training rows; the server calls it per request. No feature is computed
//! anywhere else.
//!
//! Must not touch: actors, files, the network, model training. Everything
//! here is a plain function of its arguments, so it is tested without a
//! server and two callers with the same inputs get bit-identical vectors.

mod context;
mod extract;
mod item_fold;
mod item_stats;
mod schema;
mod user_state;

pub use context::{Device, RequestContext};
pub use extract::{CfLookup, ItemInput, RecallPath, RecallProvenance, UserFeatures, NO_CF};
pub use item_fold::{category_centroids, fold_categories, fold_cold_rows};
pub use item_stats::ItemStats;
pub use schema::{FeatureSchema, FEATURE_NAMES, N_FEATURES, SCHEMA_VERSION};
pub use user_state::{event_strength, Demographics, RecentEvent, StateParams, UserState};
