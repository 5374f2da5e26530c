//! Benchmark of the streaming generator: wall time and peak RSS of
//! `gen::write_csv` for the given sizes (report only, no assertions).
//!
//! cargo bench --bench gen -- --users 1000000 --items 1000000 --interactions 50000000
//!
//! Output goes to a temporary directory that is removed afterwards unless
//! `--out DIR` is given.

use clap::Parser;
use funnel::gen::{write_csv, GenParams, INTERACTIONS_FILE};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    gen: GenParams,
    /// Keep the output here instead of a removed temporary directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `cargo bench` passes --bench to every harness; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Peak resident set size of this process in KiB (Linux), if readable.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let temp = tempfile::tempdir()?;
    let dir = cli.out.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let started = Instant::now();
    let summary = write_csv(&cli.gen, &dir, None)?;
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(dir.join(INTERACTIONS_FILE))?.len();
    println!(
        "gen write_csv: users={} items={} interactions={} (skipped {}) threads={}",
        summary.users,
        summary.items,
        summary.interactions,
        summary.skipped,
        rayon::current_num_threads()
    );
    println!(
        "  {secs:.1} s, {:.2} M interactions/s, interactions.csv {:.2} GiB, peak RSS (VmHWM) {} MiB",
        summary.interactions as f64 / secs / 1e6,
        bytes as f64 / (1u64 << 30) as f64,
        peak_rss_kib().map_or("unknown".to_string(), |k| (k / 1024).to_string())
    );
    Ok(())
}
