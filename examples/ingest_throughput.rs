//! Rough throughput of ingest and the event log on generated data (and on
//! ml-100k when its dev copy is present). Not a test: prints wall times.
//!
//! Run: `cargo run --example ingest_throughput [ROWS]` (default 1,000,000).

use anyhow::{Context, Result};
use funnel::dataset::EventKind;
use funnel::eventlog::{read_all, EventLogOptions, EventLogWriter, FsyncPolicy, LogEvent};
use funnel::ingest::{load, DataArgs};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

fn synthetic_event(i: u64) -> LogEvent {
    LogEvent::new(
        1_700_000_000 + i as i64,
        format!("user-{}", i % 50_000),
        format!("item-{}", (i * 7919) % 20_000),
        EventKind::Click,
        2.0,
    )
}

fn main() -> Result<()> {
    let rows: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("ROWS must be a whole number")?,
        None => 1_000_000,
    };
    let ml = Path::new("/work/shared/data/ml-100k");
    if ml.join("u.data").is_file() {
        let t = Instant::now();
        let ds = load(&DataArgs::movielens(ml))?;
        println!(
            "movielens {}: {} interactions in {:?}",
            ml.display(),
            ds.interactions.len(),
            t.elapsed()
        );
    } else {
        println!("skipping ml-100k: {} is absent", ml.display());
    }

    let tmp = tempfile::tempdir()?;
    let csv = tmp.path().join("events.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        writeln!(f, "user_id,item_id,timestamp,kind")?;
        for i in 0..rows {
            let e = synthetic_event(i);
            writeln!(f, "{},{},{},click", e.user_id, e.item_id, e.ts)?;
        }
    }
    let t = Instant::now();
    let ds = load(&DataArgs {
        kind_col: Some("kind".into()),
        ..DataArgs::csv(&csv)
    })?;
    println!(
        "csv: {} interactions in {:?}",
        ds.interactions.len(),
        t.elapsed()
    );

    for (policy, batch, n) in [
        (FsyncPolicy::Never, 1000u64, rows),
        (FsyncPolicy::Always, 1000, rows),
        (FsyncPolicy::Always, 1, 2000.min(rows)),
    ] {
        let dir = tmp.path().join(format!("log-{policy}-{batch}"));
        let options = EventLogOptions {
            fsync: policy,
            segment_bytes: 64 << 20,
        };
        let (mut w, _) = EventLogWriter::open(&dir, options)?;
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let mut evs: Vec<LogEvent> = (i..(i + batch).min(n)).map(synthetic_event).collect();
            w.append_batch(&mut evs)?;
            i += batch;
        }
        w.close()?;
        let el = t.elapsed();
        println!(
            "append fsync={policy} batch={batch}: {n} events in {el:?} ({:.0} events/s)",
            n as f64 / el.as_secs_f64()
        );
        if policy == FsyncPolicy::Never {
            let t = Instant::now();
            let evs = read_all(&dir)?;
            println!("read_all: {} events in {:?}", evs.len(), t.elapsed());
            let t = Instant::now();
            let ds = load(&DataArgs::eventlog(&dir))?;
            println!(
                "ingest eventlog: {} interactions in {:?}",
                ds.interactions.len(),
                t.elapsed()
            );
        }
    }
    Ok(())
}
