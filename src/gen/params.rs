//! The generator's knobs (`funnel gen` flags), their validation, and the
//! canonical text that identifies a generated data set.
//!
//! Owns: `GenParams`, its limits and `fingerprint`. Must not touch: the
//! generative model itself (`model`) or files (`write`).

use super::GenError;

/// Bump when the model changes so that a fingerprint never names two
/// different data sets.
pub(crate) const GENERATOR_VERSION: &str = "funnel-gen/1";

/// Upper bounds chosen so the in-memory tables stay within a few GiB (about
/// 100 bytes per item and 30 per user while the world is built).
pub const MAX_USERS: u64 = 50_000_000;
pub const MAX_ITEMS: u64 = 20_000_000;
/// Interaction counts are carried in `u32` budgets per user and in summaries.
pub const MAX_INTERACTIONS: u64 = u32::MAX as u64;
pub const MAX_CATEGORIES: u16 = 1024;
pub const MAX_CLUSTERS: u32 = 65_535;
pub const MAX_DAYS: u32 = 3650;
/// Largest share of the catalogue that may arrive late; above it there is
/// hardly a catalogue "from the start" left to recommend early on.
pub const MAX_NEW_ITEM_FRACTION: f64 = 0.9;
/// Start times are limited to [1970, 3000) so every derived timestamp fits.
pub const MAX_START: i64 = 32_503_680_000;

/// Parameters of the synthetic data set. The same parameters always produce
/// the same rows, whatever the thread count.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Number of users.
    #[arg(long, default_value_t = 5000)]
    pub users: u64,
    /// Number of items in the catalogue.
    #[arg(long, default_value_t = 2000)]
    pub items: u64,
    /// Number of interactions to generate (a few may be skipped when a user
    /// runs out of distinct items; the summary says how many).
    #[arg(long, default_value_t = 200_000)]
    pub interactions: u64,
    /// Number of item categories (genres).
    #[arg(long, default_value_t = 18)]
    pub categories: u16,
    /// Number of latent taste clusters.
    #[arg(long, default_value_t = 12)]
    pub clusters: u32,
    /// Length of the interaction log in days.
    #[arg(long, default_value_t = 56)]
    pub days: u32,
    /// Share of items created during the last 20% of the time span.
    #[arg(long, default_value_t = 0.1)]
    pub new_item_fraction: f64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start of the log, Unix seconds.
    #[arg(long, default_value_t = 1_700_000_000)]
    pub start: i64,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            users: 5000,
            items: 2000,
            interactions: 200_000,
            categories: 18,
            clusters: 12,
            days: 56,
            new_item_fraction: 0.1,
            seed: 42,
            start: 1_700_000_000,
        }
    }
}

impl GenParams {
    /// Most distinct items one user may be given: half the catalogue, so a
    /// heavy user's last picks are still drawn from a real choice.
    pub fn per_user_cap(&self) -> u64 {
        (self.items / 2).max(1)
    }

    /// Checks every limit; the error names the flag and the accepted range.
    pub fn validate(&self) -> Result<(), GenError> {
        check_range("--users", self.users, 1, MAX_USERS)?;
        check_range("--items", self.items, 1, MAX_ITEMS)?;
        check_range("--interactions", self.interactions, 1, MAX_INTERACTIONS)?;
        check_range(
            "--categories",
            self.categories as u64,
            1,
            MAX_CATEGORIES as u64,
        )?;
        let max_clusters = (MAX_CLUSTERS as u64).min(self.items);
        if self.clusters == 0 || self.clusters as u64 > max_clusters {
            return Err(GenError::OutOfRange {
                flag: "--clusters",
                value: self.clusters.to_string(),
                accepted: format!("1..={max_clusters} (at most one cluster per item)"),
            });
        }
        check_range("--days", self.days as u64, 1, MAX_DAYS as u64)?;
        let f = self.new_item_fraction;
        if !(f.is_finite() && (0.0..=MAX_NEW_ITEM_FRACTION).contains(&f)) {
            return Err(GenError::OutOfRange {
                flag: "--new-item-fraction",
                value: f.to_string(),
                accepted: format!("0..={MAX_NEW_ITEM_FRACTION}"),
            });
        }
        if !(0..MAX_START).contains(&self.start) {
            return Err(GenError::OutOfRange {
                flag: "--start",
                value: self.start.to_string(),
                accepted: format!("0..{MAX_START} (Unix seconds)"),
            });
        }
        let capacity = self.users.saturating_mul(self.per_user_cap());
        if self.interactions > capacity {
            return Err(GenError::TooDense {
                interactions: self.interactions,
                capacity,
            });
        }
        Ok(())
    }

    /// One line per parameter in a fixed order, prefixed by the generator
    /// version: the identity of the data set.
    pub fn canonical_text(&self) -> String {
        format!(
            "{GENERATOR_VERSION}\nusers={}\nitems={}\ninteractions={}\ncategories={}\n\
             clusters={}\ndays={}\nnew_item_fraction={}\nseed={}\nstart={}\n",
            self.users,
            self.items,
            self.interactions,
            self.categories,
            self.clusters,
            self.days,
            self.new_item_fraction,
            self.seed,
            self.start
        )
    }

    /// blake3 hex of `canonical_text`, stored as `Dataset::fingerprint`.
    pub fn fingerprint(&self) -> String {
        blake3::hash(self.canonical_text().as_bytes())
            .to_hex()
            .to_string()
    }
}

fn check_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<(), GenError> {
    if value < min || value > max {
        return Err(GenError::OutOfRange {
            flag,
            value: value.to_string(),
            accepted: format!("{min}..={max}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gen: GenParams,
    }

    #[test]
    fn clap_defaults_equal_default_impl() {
        let cli = Cli::try_parse_from(["gen"]).expect("no flags parse");
        assert_eq!(cli.gen, GenParams::default());
        let cli = Cli::try_parse_from(["gen", "--new-item-fraction", "0.25", "--users", "7"])
            .expect("flags parse");
        assert_eq!(cli.gen.new_item_fraction, 0.25);
        assert_eq!(cli.gen.users, 7);
    }

    #[test]
    fn defaults_are_valid() {
        GenParams::default().validate().expect("defaults valid");
    }

    #[test]
    fn zero_counts_name_the_flag() {
        for (flag, p) in [
            (
                "--users",
                GenParams {
                    users: 0,
                    ..Default::default()
                },
            ),
            (
                "--items",
                GenParams {
                    items: 0,
                    ..Default::default()
                },
            ),
            (
                "--interactions",
                GenParams {
                    interactions: 0,
                    ..Default::default()
                },
            ),
        ] {
            let e = p.validate().unwrap_err();
            assert!(matches!(e, GenError::OutOfRange { .. }), "{e}");
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let too_many = GenParams {
            interactions: u32::MAX as u64 + 1,
            users: MAX_USERS,
            items: MAX_ITEMS,
            ..Default::default()
        };
        assert!(too_many
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--interactions"));
        let dense = GenParams {
            users: 10,
            items: 10,
            interactions: 51,
            clusters: 2,
            ..Default::default()
        };
        assert!(matches!(
            dense.validate(),
            Err(GenError::TooDense { capacity: 50, .. })
        ));
        let clusters = GenParams {
            items: 5,
            users: 100,
            interactions: 10,
            ..Default::default()
        };
        assert!(clusters
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--clusters"));
        for f in [f64::NAN, -0.1, 0.95] {
            let p = GenParams {
                new_item_fraction: f,
                ..Default::default()
            };
            assert!(p.validate().is_err(), "{f}");
        }
    }

    #[test]
    fn fingerprint_tracks_every_parameter() {
        let base = GenParams::default();
        let other = GenParams {
            start: base.start + 1,
            ..base.clone()
        };
        assert_eq!(base.fingerprint(), GenParams::default().fingerprint());
        assert_ne!(base.fingerprint(), other.fingerprint());
        assert_eq!(base.fingerprint().len(), 64);
    }
}
