//! Where tests and benchmarks find MovieLens-100K, which is never part of
//! the repository (its licence forbids redistribution).
//!
//! Looks at `FUNNEL_ML100K_DIR`, then `../shared/data/ml-100k` beside the
//! checkout. When the data is absent the caller prints why and skips,
//! unless `FUNNEL_REQUIRE_ML100K=1` (set by `.ci/run` when CI has the data),
//! in which case a missing copy is a failure, so CI never silently skips.

use std::path::PathBuf;

/// The ml-100k directory, or `None` after printing why the caller skips.
pub fn ml100k_dir(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FUNNEL_ML100K_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k")),
    ];
    if let Some(dir) = candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("u.data").is_file())
    {
        return Some(dir);
    }
    let required = std::env::var("FUNNEL_REQUIRE_ML100K").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: FUNNEL_REQUIRE_ML100K=1 but MovieLens-100K was not found (set FUNNEL_ML100K_DIR)"
    );
    println!(
        "{test}: skipped: MovieLens-100K not found (set FUNNEL_ML100K_DIR to the ml-100k folder)"
    );
    None
}
