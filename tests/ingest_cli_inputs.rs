//! `DataArgs` as the commands use it: flattened into a clap command next to
//! other flags, parsed from a real command line, then loaded.

use clap::{CommandFactory, Parser};
use funnel::dataset::EventKind;
use funnel::ingest::{load, DataArgs, IngestError};
use std::fs;

/// Stand-in for a command such as `funnel train`.
#[derive(Parser, Debug)]
struct TrainLike {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 10)]
    epochs: u32,
}

fn parse(args: &[&str]) -> TrainLike {
    let mut all = vec!["funnel-train"];
    all.extend_from_slice(args);
    TrainLike::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn help_lists_every_data_flag() {
    let help = TrainLike::command().render_long_help().to_string();
    for flag in [
        "--data",
        "--format",
        "--interactions",
        "--user-col",
        "--item-col",
        "--time-col",
        "--rating-col",
        "--weight-col",
        "--kind-col",
        "--delimiter",
        "--time-unit",
        "--item-attrs",
        "--item-attr-id-col",
        "--category-col",
        "--category-sep",
        "--title-col",
        "--created-col",
        "--user-attrs",
        "--user-attr-id-col",
        "--age-col",
        "--gender-col",
        "--occupation-col",
        "--max-bad-rows",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
    assert!(help.contains("--epochs"));
}

#[test]
fn csv_with_attributes_from_a_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(
        dir.join("ratings.csv"),
        "user,movie,ts,stars\n1,10,1000,4\n2,10,1001,5\n2,11,oops,3\n",
    )
    .unwrap();
    fs::write(
        dir.join("movies.tsv"),
        "movie\ttitle\tgenres\nm\tunused\t\n10\tTen\tDrama|Crime\n",
    )
    .unwrap();
    let p = |name: &str| dir.join(name).display().to_string();
    let (ratings, movies) = (p("ratings.csv"), p("movies.tsv"));
    let cli = parse(&[
        "--data",
        &ratings,
        "--user-col",
        "user",
        "--item-col",
        "movie",
        "--time-col",
        "ts",
        "--rating-col",
        "stars",
        "--item-attrs",
        &movies,
        "--item-attr-id-col",
        "movie",
        "--category-col",
        "genres",
        "--max-bad-rows",
        "1",
        "--epochs",
        "3",
    ]);
    assert_eq!(cli.epochs, 3);
    let ds = load(&cli.data).unwrap();
    assert_eq!(ds.interactions.len(), 2);
    assert!(ds.interactions.iter().all(|x| x.kind == EventKind::Rate));
    assert_eq!(ds.bad_rows.len(), 1);
    assert_eq!(ds.bad_rows[0].line, 4);
    // "m" exists only in the catalog file, "10" in both.
    assert_eq!(ds.items.ids(), &["10", "m"]);
    let ten = &ds.item_meta[0];
    assert_eq!(ten.title.as_deref(), Some("Ten"));
    assert_eq!(ten.categories.len(), 2);

    // Without the budget, the same input stops at the bad row.
    let strict = DataArgs {
        max_bad_rows: 0,
        ..cli.data.clone()
    };
    let err = load(&strict).unwrap_err();
    assert!(
        matches!(err, IngestError::BadRow { line: 4, .. }),
        "{err:?}"
    );
}

#[test]
fn movielens_from_a_command_line_when_present() {
    let Some(dir) = funnel::testdata::ml100k_dir("ingest_cli_inputs::ml100k") else {
        return;
    };
    let dir = dir.as_path();
    let cli = parse(&["--data", &dir.display().to_string()]);
    let ds = load(&cli.data).unwrap();
    assert_eq!(
        (ds.users.len(), ds.items.len(), ds.interactions.len()),
        (943, 1682, 100_000)
    );
    assert_eq!(ds.categories.len(), 19);
}
