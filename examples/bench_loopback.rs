//! How much load can `funnel bench` itself generate on this machine?
//!
//! Starts the canned test server of `tests/bench_support` in-process (answers
//! after 1 ms, exports CPU counters) and runs the benchmark against it with
//! the given `funnel bench` flags (the target is filled in). The send-lag
//! row of the report shows when the generator, not the server, falls behind.
//!
//!     cargo run --example bench_loopback -- --qps 2000 --duration 5

#[path = "../tests/bench_support/mod.rs"]
mod bench_support;

use funnel::bench::{run_blocking, BenchArgs};

fn main() -> anyhow::Result<()> {
    let server = bench_support::start(bench_support::Behaviour::default());
    let mut argv = vec![
        "bench".to_string(),
        "--target".to_string(),
        server.url.clone(),
    ];
    argv.extend(std::env::args().skip(1));
    let args = BenchArgs::try_parse_from(argv)?;
    let report = run_blocking(&args)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
