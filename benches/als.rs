//! ALS training speed (and a ranking sanity check) on MovieLens-100K, or on
//! a generated power-law data set. Plain `fn main` (harness = false).
//!
//!   cargo bench --bench als
//!       ml-100k (943 x 1682, 100k binary entries): factors 64, reg 10,
//!       alpha 1, 15 iterations, CG 3 steps, 2 threads; prints min/median
//!       wall seconds over FUNNEL_BENCH_RUNS runs (default 7), then HR@10 on
//!       a seeded 80/20 random split.
//!   FUNNEL_BENCH_ALS_SYNTH=10000000 cargo bench --bench als
//!       ~10M interactions over 100k users x 50k items (power-law item
//!       popularity, exponential user activity); prints wall seconds and
//!       peak RSS (VmHWM).
//!
//! Other variables: FUNNEL_ML100K_DIR (default ../shared/data/ml-100k next
//! to the crate), FUNNEL_BENCH_THREADS (2), FUNNEL_BENCH_ITERS (15),
//! FUNNEL_BENCH_DUMP_DIR (write the matrices used here as COO files for
//! scripts/bench_als_vs_implicit.py, so both libraries see the same data).
//!
//! Dump format, little-endian: b"FNLCOO01", u64 rows, u64 cols, u64 nnz,
//! u32 row[nnz], u32 col[nnz], f32 value[nnz].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use funnel::linalg::Backend;
use funnel::matrix::Matrix;
use funnel::rng::Rng;
use funnel::sparse::Csr;
use funnel::training::als::{fit, AlsModel, AlsParams};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn params(alpha: f32) -> AlsParams {
    AlsParams {
        factors: 64,
        regularization: 10.0,
        alpha,
        iterations: env_usize("FUNNEL_BENCH_ITERS", 15),
        cg_steps: 3,
        seed: 42,
        threads: env_usize("FUNNEL_BENCH_THREADS", 2),
        compute_loss: false,
    }
}

fn main() {
    println!("kernels: {}", Backend::detect().name());
    let dump_dir = std::env::var_os("FUNNEL_BENCH_DUMP_DIR").map(PathBuf::from);
    if let Some(dir) = &dump_dir {
        std::fs::create_dir_all(dir).expect("create FUNNEL_BENCH_DUMP_DIR");
    }
    match std::env::var("FUNNEL_BENCH_ALS_SYNTH") {
        Ok(n) => {
            let n: usize = n.trim().replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("FUNNEL_BENCH_ALS_SYNTH must be a number of interactions, got {n:?}");
                std::process::exit(2)
            });
            synthetic(n, dump_dir.as_deref());
        }
        Err(_) => movielens(dump_dir.as_deref()),
    }
}

// ---------------------------------------------------------------------------
// MovieLens-100K

fn ml100k_dir() -> PathBuf {
    std::env::var_os("FUNNEL_ML100K_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k"))
}

/// (user, item) pairs, 0-based (u.data ids are 1-based and dense).
fn load_ml100k(path: &Path) -> Result<Vec<(u32, u32)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let mut f = line.split('\t');
            let mut next = || -> Result<u32, String> {
                f.next()
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|&v| v >= 1)
                    .map(|v| v - 1)
                    .ok_or_else(|| format!("{}:{}: bad line {line:?}", path.display(), n + 1))
            };
            Ok((next()?, next()?))
        })
        .collect()
}

fn binary_csr(pairs: &[(u32, u32)], rows: usize, cols: usize) -> Csr {
    let triples: Vec<(u32, u32, f32)> = pairs.iter().map(|&(u, i)| (u, i, 1.0)).collect();
    let m = Csr::from_triples(rows, cols, &triples);
    // repeated pairs were summed; the data is binary
    let ones = vec![1.0; m.nnz()];
    Csr::from_parts(rows, cols, m.offsets().to_vec(), m.indices().to_vec(), ones)
        .expect("parts of a valid Csr")
}

fn movielens(dump: Option<&Path>) {
    let path = ml100k_dir().join("u.data");
    if !path.exists() {
        println!(
            "skipping: {} not found (set FUNNEL_ML100K_DIR to the ml-100k folder)",
            path.display()
        );
        return;
    }
    let pairs = match load_ml100k(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot read ml-100k: {e}");
            std::process::exit(1)
        }
    };
    let rows = pairs.iter().map(|p| p.0 as usize + 1).max().unwrap_or(0);
    let cols = pairs.iter().map(|p| p.1 as usize + 1).max().unwrap_or(0);
    let x = binary_csr(&pairs, rows, cols);
    let p = params(1.0);
    println!(
        "ml-100k: {rows} users x {cols} items, {} entries; factors {} reg {} alpha {} iterations {} cg_steps {} threads {}",
        x.nnz(), p.factors, p.regularization, p.alpha, p.iterations, p.cg_steps, p.threads
    );
    let runs = env_usize("FUNNEL_BENCH_RUNS", 7).max(1);
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let model = fit(&x, &p, &mut |_| {}).expect("ALS fit");
        times.push(start.elapsed().as_secs_f64());
        std::hint::black_box(model);
    }
    report_times("ours ml-100k fit", &mut times);

    // ranking sanity check on a seeded 80/20 random split
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    Rng::new(2024).shuffle(&mut order);
    let n_test = pairs.len() / 5;
    let test: Vec<(u32, u32)> = order[..n_test].iter().map(|&i| pairs[i]).collect();
    let train: Vec<(u32, u32)> = order[n_test..].iter().map(|&i| pairs[i]).collect();
    let xtrain = binary_csr(&train, rows, cols);
    if let Some(dir) = dump {
        write_coo(&dir.join("ml100k_full.coo"), &x);
        write_coo(&dir.join("ml100k_train.coo"), &xtrain);
        write_coo(&dir.join("ml100k_test.coo"), &binary_csr(&test, rows, cols));
        println!("dumped ml-100k matrices to {}", dir.display());
    }
    for alpha in [1.0f32, 0.0] {
        let model = fit(&xtrain, &params(alpha), &mut |_| {}).expect("ALS fit");
        let (hr, precision, users) = hit_rate_at(10, &model, &xtrain, &test);
        println!(
            "ours ml-100k alpha {alpha} (confidence 1 + {alpha} r): HR@10 {hr:.4}, precision@10 {precision:.4} over {users} test users"
        );
    }
}

fn report_times(label: &str, times: &mut [f64]) {
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let all: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
    println!(
        "{label}: min {:.4} s, median {median:.4} s over {} runs [{}]",
        times[0],
        times.len(),
        all.join(" ")
    );
}

/// (fraction of users with a test item among their top-`n` unseen items,
/// mean fraction of those `n` that are test items, users with test items).
fn hit_rate_at(n: usize, model: &AlsModel, train: &Csr, test: &[(u32, u32)]) -> (f64, f64, usize) {
    let mut test_items: Vec<Vec<u32>> = vec![Vec::new(); train.n_rows()];
    for &(u, i) in test {
        test_items[u as usize].push(i);
    }
    let items: &Matrix = &model.item_factors;
    let (mut hits, mut relevant, mut users) = (0usize, 0usize, 0usize);
    let mut scored: Vec<(f32, u32)> = Vec::with_capacity(items.rows());
    for (u, wanted) in test_items.iter().enumerate() {
        if wanted.is_empty() {
            continue;
        }
        users += 1;
        let seen = train.row_indices(u);
        let xu = model.user_factors.row(u);
        scored.clear();
        scored.extend(
            (0..items.rows() as u32)
                .filter(|i| seen.binary_search(i).is_err())
                .map(|i| (funnel::linalg::dot(xu, items.row(i as usize)), i)),
        );
        let k = n.min(scored.len());
        if k == 0 {
            continue;
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let found = scored[..k]
            .iter()
            .filter(|(_, i)| wanted.contains(i))
            .count();
        hits += usize::from(found > 0);
        relevant += found;
    }
    let users_f = users.max(1) as f64;
    (
        hits as f64 / users_f,
        relevant as f64 / (n as f64 * users_f),
        users,
    )
}

fn write_coo(path: &Path, m: &Csr) {
    // streamed, so dumping does not inflate the peak RSS this bench reports
    let file = std::fs::File::create(path).expect("create dump file");
    let mut out = std::io::BufWriter::new(file);
    let mut put = |bytes: &[u8]| out.write_all(bytes).expect("write dump file");
    put(b"FNLCOO01");
    for v in [m.n_rows() as u64, m.n_cols() as u64, m.nnz() as u64] {
        put(&v.to_le_bytes());
    }
    for r in 0..m.n_rows() {
        for _ in 0..m.row_len(r) {
            put(&(r as u32).to_le_bytes());
        }
    }
    for c in m.indices() {
        put(&c.to_le_bytes());
    }
    for v in m.values() {
        put(&v.to_le_bytes());
    }
    out.flush().expect("write dump file");
}

// ---------------------------------------------------------------------------
// Generated data

fn synthetic(n: usize, dump: Option<&Path>) {
    let (n_users, n_items) = (100_000usize, 50_000usize);
    let start = Instant::now();
    let x = generate(n, n_users, n_items, 7);
    println!(
        "synthetic: {n_users} users x {n_items} items, {} entries (asked {n}), generated in {:.2} s; VmHWM after generation {}",
        x.nnz(),
        start.elapsed().as_secs_f64(),
        vm_hwm()
    );
    if let Some(dir) = dump {
        write_coo(&dir.join("synth.coo"), &x);
        println!("dumped synthetic matrix to {}", dir.display());
    }
    let p = params(1.0);
    println!(
        "factors {} reg {} alpha {} iterations {} cg_steps {} threads {}",
        p.factors, p.regularization, p.alpha, p.iterations, p.cg_steps, p.threads
    );
    let runs = env_usize("FUNNEL_BENCH_RUNS", 1).max(1);
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let model = fit(&x, &p, &mut |_| {}).expect("ALS fit");
        times.push(start.elapsed().as_secs_f64());
        std::hint::black_box(model);
    }
    report_times("ours synthetic fit", &mut times);
    println!("peak RSS (VmHWM) {}", vm_hwm());
}

/// Each user draws an exponential number of distinct items (mean
/// n / users, at least 1); items follow a Zipf-like law with exponent 0.8.
fn generate(n: usize, n_users: usize, n_items: usize, seed: u64) -> Csr {
    let mut cdf: Vec<f64> = Vec::with_capacity(n_items);
    let mut total = 0.0;
    for i in 0..n_items {
        total += 1.0 / ((i + 1) as f64).powf(0.8);
        cdf.push(total);
    }
    let mut rng = Rng::new(seed);
    let mean = n as f64 / n_users as f64;
    let mut offsets = vec![0u64];
    let mut indices: Vec<u32> = Vec::with_capacity(n + n / 10);
    let mut row: Vec<u32> = Vec::new();
    for _ in 0..n_users {
        let want = (rng.exponential(mean).round() as usize).clamp(1, n_items / 2);
        row.clear();
        while row.len() < want {
            let u = rng.f64() * total;
            let item = cdf.partition_point(|&c| c <= u).min(n_items - 1) as u32;
            if !row.contains(&item) {
                row.push(item);
            }
        }
        row.sort_unstable();
        indices.extend_from_slice(&row);
        offsets.push(indices.len() as u64);
    }
    let values = vec![1.0f32; indices.len()];
    Csr::from_parts(n_users, n_items, offsets, indices, values).expect("generated parts agree")
}

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
