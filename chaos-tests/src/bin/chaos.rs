//! `chaos --scenario NAME|all --seed N --duration SECS [--json]`: runs chaos
//! scenarios against a real funnel cluster and prints a report per run.
//! Exits 1 when any invariant was broken, 2 when the harness could not run.

use anyhow::{bail, Result};
use chaos_tests::scenario::{all, run, RunOptions};
use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Chaos scenarios against a real funnel cluster")]
struct Args {
    /// A scenario name (see --list), or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Seed of every random choice; the same seed replays the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of fault injection per scenario (setup and verification come on top).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// First port of the cluster; each node takes three consecutive ports.
    #[arg(long, default_value_t = 20500)]
    base_port: u16,
    /// Print each report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let scenarios = all();
    if args.list {
        for s in &scenarios {
            println!("{:<26} {}", s.name, s.about);
        }
        return Ok(());
    }
    let chosen: Vec<_> = if args.scenario == "all" {
        scenarios.iter().collect()
    } else {
        scenarios
            .iter()
            .filter(|s| s.name == args.scenario)
            .collect()
    };
    if chosen.is_empty() {
        let names: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        bail!(
            "no scenario named {:?}; choose one of {} or `all`",
            args.scenario,
            names.join(", ")
        );
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    let mut failed = false;
    for s in chosen {
        let opts = RunOptions {
            seed: args.seed,
            duration: Duration::from_secs(args.duration),
            base_port: args.base_port,
        };
        match run(s, &opts) {
            Ok(r) => {
                failed |= !r.passed();
                if args.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    print!("{}", r.render());
                }
            }
            Err(e) => {
                eprintln!("chaos: scenario {} seed {}: {e}", s.name, args.seed);
                std::process::exit(2);
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
