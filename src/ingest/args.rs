//! The data flags shared by every command that reads interactions
//! (`funnel train`, `funnel eval`, ...). Parsing only; `ingest::load`
//! interprets them.
//!
//! Column flags are `Option`s so that `DataArgs::default()` matches the CLI
//! defaults and so a column named explicitly can be told apart from a
//! default one (an explicit attribute column that is absent is an error; a
//! default one is just not used).

use std::path::{Path, PathBuf};

/// Input format of `--data` / `--interactions`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataFormat {
    /// Look at the path: a directory with `u.data` is MovieLens, a directory
    /// with `events-*.log` segments is an event log, a file goes by its
    /// extension (.csv, .tsv, .parquet).
    #[default]
    #[value(name = "auto")]
    Auto,
    /// A MovieLens-100K directory (u.data, u.item, u.genre, u.user).
    #[value(name = "movielens")]
    Movielens,
    /// Comma-separated with a header row.
    #[value(name = "csv")]
    Csv,
    /// Tab-separated with a header row.
    #[value(name = "tsv")]
    Tsv,
    /// Apache Parquet.
    #[value(name = "parquet")]
    Parquet,
    /// A directory of funnel event-log segments.
    #[value(name = "eventlog")]
    Eventlog,
}

impl DataFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Auto => "auto",
            DataFormat::Movielens => "movielens",
            DataFormat::Csv => "csv",
            DataFormat::Tsv => "tsv",
            DataFormat::Parquet => "parquet",
            DataFormat::Eventlog => "eventlog",
        }
    }
}

/// Unit of integer (or decimal) timestamps in the time column.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeUnit {
    #[default]
    #[value(name = "s")]
    Seconds,
    #[value(name = "ms")]
    Millis,
}

pub const DEFAULT_USER_COL: &str = "user_id";
pub const DEFAULT_ITEM_COL: &str = "item_id";
pub const DEFAULT_TIME_COL: &str = "timestamp";
pub const DEFAULT_CATEGORY_COL: &str = "categories";
pub const DEFAULT_CATEGORY_SEP: &str = "|";
pub const DEFAULT_TITLE_COL: &str = "title";
pub const DEFAULT_CREATED_COL: &str = "created_at";
pub const DEFAULT_AGE_COL: &str = "age";
pub const DEFAULT_GENDER_COL: &str = "gender";
pub const DEFAULT_OCCUPATION_COL: &str = "occupation";

/// Where the interactions come from and how to read them.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DataArgs {
    /// Input: a MovieLens-100K directory, an event-log directory, or an
    /// interactions file (.csv, .tsv, .parquet).
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,

    /// Input format; `auto` decides from the path.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = DataFormat::Auto)]
    pub format: DataFormat,

    /// The interactions file for csv/tsv/parquet (same as `--data FILE`).
    #[arg(long, value_name = "FILE")]
    pub interactions: Option<PathBuf>,

    /// User id column of the interactions [default: user_id].
    #[arg(long, value_name = "NAME")]
    pub user_col: Option<String>,

    /// Item id column of the interactions [default: item_id].
    #[arg(long, value_name = "NAME")]
    pub item_col: Option<String>,

    /// Time column: integers in --time-unit, or RFC 3339 text [default: timestamp].
    #[arg(long, value_name = "NAME")]
    pub time_col: Option<String>,

    /// Explicit rating column; a row with a rating becomes a `rate` event.
    #[arg(long, value_name = "NAME")]
    pub rating_col: Option<String>,

    /// Event weight column (default: the kind's default weight).
    #[arg(long, value_name = "NAME")]
    pub weight_col: Option<String>,

    /// Event kind column: view, click, like, purchase or rate (default: view).
    #[arg(long, value_name = "NAME")]
    pub kind_col: Option<String>,

    /// Field delimiter of delimited files: one ASCII character, `\t` or
    /// `tab` [default: `,` for csv, tab for tsv].
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<char>,

    /// Unit of numeric timestamps.
    #[arg(long, value_enum, value_name = "UNIT", default_value_t = TimeUnit::Seconds)]
    pub time_unit: TimeUnit,

    /// Item attributes file (.csv, .tsv or .parquet) with a header row.
    #[arg(long, value_name = "FILE")]
    pub item_attrs: Option<PathBuf>,

    /// Item id column of --item-attrs [default: item_id].
    #[arg(long, value_name = "NAME")]
    pub item_attr_id_col: Option<String>,

    /// Categories column of --item-attrs [default: categories].
    #[arg(long, value_name = "NAME")]
    pub category_col: Option<String>,

    /// Separator between categories in one cell [default: |].
    #[arg(long, value_name = "SEP")]
    pub category_sep: Option<String>,

    /// Title column of --item-attrs [default: title].
    #[arg(long, value_name = "NAME")]
    pub title_col: Option<String>,

    /// Creation time column of --item-attrs (like --time-col, or a
    /// YYYY-MM-DD date) [default: created_at].
    #[arg(long, value_name = "NAME")]
    pub created_col: Option<String>,

    /// User attributes file (.csv, .tsv or .parquet) with a header row.
    #[arg(long, value_name = "FILE")]
    pub user_attrs: Option<PathBuf>,

    /// User id column of --user-attrs [default: user_id].
    #[arg(long, value_name = "NAME")]
    pub user_attr_id_col: Option<String>,

    /// Age column of --user-attrs [default: age].
    #[arg(long, value_name = "NAME")]
    pub age_col: Option<String>,

    /// Gender column of --user-attrs [default: gender].
    #[arg(long, value_name = "NAME")]
    pub gender_col: Option<String>,

    /// Occupation column of --user-attrs [default: occupation].
    #[arg(long, value_name = "NAME")]
    pub occupation_col: Option<String>,

    /// Skip up to N malformed rows (listed in the run's report) instead of
    /// stopping at the first one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_bad_rows: u64,
}

impl DataArgs {
    /// A MovieLens-100K directory.
    pub fn movielens(dir: impl AsRef<Path>) -> Self {
        DataArgs {
            data: Some(dir.as_ref().to_path_buf()),
            format: DataFormat::Movielens,
            ..Default::default()
        }
    }

    /// A CSV interactions file with the default column names.
    pub fn csv(file: impl AsRef<Path>) -> Self {
        DataArgs {
            data: Some(file.as_ref().to_path_buf()),
            format: DataFormat::Csv,
            ..Default::default()
        }
    }

    /// A Parquet interactions file with the default column names.
    pub fn parquet(file: impl AsRef<Path>) -> Self {
        DataArgs {
            data: Some(file.as_ref().to_path_buf()),
            format: DataFormat::Parquet,
            ..Default::default()
        }
    }

    /// A funnel event-log directory.
    pub fn eventlog(dir: impl AsRef<Path>) -> Self {
        DataArgs {
            data: Some(dir.as_ref().to_path_buf()),
            format: DataFormat::Eventlog,
            ..Default::default()
        }
    }
}

/// A `--delimiter` value that is not one ASCII character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "delimiter {0:?} is not a single ASCII character; pass e.g. --delimiter ';' or --delimiter tab"
)]
pub struct DelimiterError(String);

/// Accepts one ASCII character, or `\t` / `tab` for a tab, which is awkward
/// to type in a shell.
fn parse_delimiter(s: &str) -> Result<char, DelimiterError> {
    if s == "\\t" || s.eq_ignore_ascii_case("tab") {
        return Ok('\t');
    }
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii() => Ok(c),
        _ => Err(DelimiterError(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        data: DataArgs,
    }

    fn parse(args: &[&str]) -> Result<DataArgs, clap::Error> {
        let mut all = vec!["funnel"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.data)
    }

    #[test]
    fn no_flags_equal_the_default_struct() {
        assert_eq!(parse(&[]).unwrap(), DataArgs::default());
    }

    #[test]
    fn every_flag_parses_under_its_long_name() {
        let a = parse(&[
            "--data",
            "d",
            "--format",
            "tsv",
            "--interactions",
            "i.tsv",
            "--user-col",
            "u",
            "--item-col",
            "i",
            "--time-col",
            "t",
            "--rating-col",
            "r",
            "--weight-col",
            "w",
            "--kind-col",
            "k",
            "--delimiter",
            "tab",
            "--time-unit",
            "ms",
            "--item-attrs",
            "items.csv",
            "--item-attr-id-col",
            "iid",
            "--category-col",
            "cats",
            "--category-sep",
            ";",
            "--title-col",
            "name",
            "--created-col",
            "born",
            "--user-attrs",
            "users.csv",
            "--user-attr-id-col",
            "uid",
            "--age-col",
            "a",
            "--gender-col",
            "g",
            "--occupation-col",
            "o",
            "--max-bad-rows",
            "7",
        ])
        .unwrap();
        assert_eq!(a.format, DataFormat::Tsv);
        assert_eq!(a.delimiter, Some('\t'));
        assert_eq!(a.time_unit, TimeUnit::Millis);
        assert_eq!(a.max_bad_rows, 7);
        assert_eq!(a.occupation_col.as_deref(), Some("o"));
        assert_eq!(a.category_sep.as_deref(), Some(";"));
        assert_eq!(a.item_attrs, Some(PathBuf::from("items.csv")));
    }

    #[test]
    fn bad_values_are_refused_with_the_choices() {
        let err = parse(&["--format", "xml"]).err().unwrap().to_string();
        assert!(
            err.contains("movielens") && err.contains("eventlog"),
            "{err}"
        );
        assert!(parse(&["--delimiter", ";;"]).is_err());
        assert!(parse(&["--delimiter", "§"]).is_err());
        assert_eq!(
            parse(&["--delimiter", "\\t"]).unwrap().delimiter,
            Some('\t')
        );
        assert!(parse(&["--time-unit", "us"]).is_err());
    }
}
