//! GBDT benchmark: training time on 200k rows x 30 features (groups of
//! 50, LambdaRank, default parameters) and scoring latency for one
//! request of 300 rows x 30 features.
//!
//! Run: `cargo bench --bench gbdt` (release profile). Optional arguments:
//! `--rows N`, `--threads N` (0 = all cores), `--trees N`.
//! Data is generated, so figures are reproducible anywhere. Besides wall
//! time it prints CPU time (from /proc, Linux only), which stays meaningful
//! on a machine shared with other work.

use funnel::ranking::gbdt::{train, Dataset, GbdtParams, Objective};
use funnel::rng::Rng;
use std::time::Instant;

const D: usize = 30;
const GROUP: usize = 50;

/// CPU time of the calling thread in ns (first field of schedstat).
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// CPU time of the whole process (user + system) in seconds.
fn process_cpu_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the full line, in clock ticks (100 per second on
    // Linux).
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Rows with a few informative features (non-linear, interacting), the
/// rest noise, 5% NaN; graded labels 0..=2.
fn generate(rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut features = Vec::with_capacity(rows * D);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let row: Vec<f32> = (0..D)
            .map(|_| {
                if rng.f64() < 0.05 {
                    f32::NAN
                } else {
                    rng.normal() as f32
                }
            })
            .collect();
        let x = |i: usize| if row[i].is_nan() { 0.0 } else { row[i] as f64 };
        let signal = 1.5 * x(0) * x(1) + (x(2) * 2.0).sin() + 0.5 * x(3).abs() - 0.3 * x(4);
        let noisy = signal + rng.normal();
        labels.push(if noisy > 2.0 {
            2.0
        } else if noisy > 1.0 {
            1.0
        } else {
            0.0
        });
        features.extend(row);
    }
    let groups = vec![GROUP as u32; rows / GROUP];
    features.truncate(rows / GROUP * GROUP * D);
    labels.truncate(rows / GROUP * GROUP);
    (features, labels, groups)
}

fn main() {
    let rows = arg("--rows", 200_000);
    let threads = arg("--threads", 0);
    let trees = arg("--trees", 300);
    let (features, labels, groups) = generate(rows, 1);
    let (vf, vl, vg) = generate(rows / 10, 2);
    let train_set = Dataset {
        features: &features,
        n_features: D,
        labels: &labels,
        groups: &groups,
        feature_names: &[],
    };
    let valid_set = Dataset {
        features: &vf,
        n_features: D,
        labels: &vl,
        groups: &vg,
        feature_names: &[],
    };
    let params = GbdtParams {
        objective: Objective::LambdaRank { ndcg_at: 10 },
        trees,
        threads,
        // Time all rounds; early stopping would make the figure depend on
        // the data.
        early_stopping_rounds: 0,
        ..GbdtParams::default()
    };
    let mut last = None;
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    let model = match train(&train_set, Some(&valid_set), &params, &mut |s| {
        last = Some(s)
    }) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("training failed: {e}");
            std::process::exit(1);
        }
    };
    let train_secs = started.elapsed().as_secs_f64();
    let train_cpu = cpu_before
        .zip(process_cpu_secs())
        .map_or(f64::NAN, |(a, b)| b - a);
    let last = last.expect("at least one round ran");
    println!(
        "train: {} rows x {D} features, {} trees (threads={threads}): wall {train_secs:.2} s ({:.1} ms/tree), cpu {train_cpu:.2} s; train ndcg@10 {:.4}, valid ndcg@10 {:.4}",
        features.len() / D,
        model.n_trees(),
        train_secs * 1e3 / model.n_trees() as f64,
        last.train_metric,
        last.valid_metric.unwrap_or(f64::NAN),
    );

    // One request: 300 candidates x 30 features.
    let request_rows = 300;
    let request = &vf[..request_rows * D];
    let mut out = vec![0.0f32; request_rows];
    for _ in 0..50 {
        model
            .predict_batch(request, D, &mut out)
            .expect("request has the model's width");
    }
    // Per 100-request sample: wall and thread-CPU ns per request; the
    // median of 30 samples is reported.
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..30 {
        let reps = 100;
        let c = thread_cpu_ns();
        let t = Instant::now();
        for _ in 0..reps {
            model
                .predict_batch(std::hint::black_box(request), D, &mut out)
                .expect("request has the model's width");
            std::hint::black_box(&out);
        }
        wall.push(t.elapsed().as_nanos() as f64 / reps as f64);
        if let (Some(a), Some(b)) = (c, thread_cpu_ns()) {
            cpu.push((b - a) as f64 / reps as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (wall_ns, cpu_ns) = (median(&mut wall), median(&mut cpu));
    // The fastest sample is the best estimate on a machine shared with
    // other work (cache pollution inflates CPU time too).
    let cpu_min_ns = cpu.first().copied().unwrap_or(f64::NAN);
    let c = thread_cpu_ns();
    let mut checksum = 0.0f32;
    let reps = 100;
    for _ in 0..reps {
        for row in request.chunks_exact(D) {
            checksum += model.predict_row(std::hint::black_box(row));
        }
    }
    let row_cpu_ns = c.zip(thread_cpu_ns()).map_or(f64::NAN, |(a, b)| {
        (b - a) as f64 / (reps * request_rows) as f64
    });
    println!(
        "predict_batch: {request_rows} rows x {D} features, {} trees: per request median wall {:.1} us, median cpu {:.1} us ({:.0} ns/row), min cpu {:.1} us ({:.0} ns/row); predict_row loop {row_cpu_ns:.0} ns/row cpu (checksum {checksum:.1})",
        model.n_trees(),
        wall_ns / 1e3,
        cpu_ns / 1e3,
        cpu_ns / request_rows as f64,
        cpu_min_ns / 1e3,
        cpu_min_ns / request_rows as f64,
    );
}
