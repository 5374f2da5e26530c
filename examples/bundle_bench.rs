//! Times writing, opening and loading a bundle of generated vectors, and
//! measures ANN recall@10 against brute force.
//!
//! cargo run --example bundle_bench -- [items] [dim] [shards] [connectivity] [expansion_add] [expansion_search]
//! (defaults: 100000 items, 64 dimensions, 1 shard, IndexParams::default()). Writes to a temp dir
//! and removes it. Prints wall time and this process's CPU time per phase,
//! since other work on the machine inflates wall time.

use funnel::bundle::{
    Bundle, BundleWriter, IndexParams, ItemTable, ManifestFields, OpenCheck, WriteOptions,
};
use funnel::ids::shard_of;
use funnel::matrix::Matrix;
use funnel::rng::Rng;
use std::time::Instant;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Phase {
    wall: Instant,
    cpu: f64,
}

impl Phase {
    fn start() -> Self {
        Phase {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }
    fn done(&self) -> String {
        format!(
            "{:.2}s wall / {:.2}s cpu",
            self.wall.elapsed().as_secs_f64(),
            cpu_seconds() - self.cpu
        )
    }
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (n, dim, shards) = (arg(1, 100_000), arg(2, 64), arg(3, 1) as u32);
    let defaults = IndexParams::default();
    let params = IndexParams {
        connectivity: arg(4, defaults.connectivity as usize) as u32,
        expansion_add: arg(5, defaults.expansion_add as usize) as u32,
        expansion_search: arg(6, defaults.expansion_search as usize) as u32,
        ..defaults
    };
    let mut rng = Rng::new(1);
    let data: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
    let vectors = Matrix::from_vec(n, dim, data)?;
    let items = ItemTable::from_ids((0..n).map(|i| format!("item-{i}")).collect());
    let tmp = std::env::temp_dir().join(format!("funnel-bundle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let out = tmp.join("bundle");

    let p = Phase::start();
    let mut w = BundleWriter::create(&out, WriteOptions::default())?;
    w.put_items(&items)?;
    w.put_item_vectors(&items, &vectors, shards, params.clone())?;
    let m = w.finish(ManifestFields {
        model_version: "bench".into(),
        ..Default::default()
    })?;
    let write = p.done();

    let p = Phase::start();
    let b = Bundle::open(&out, &OpenCheck::default())?;
    let open = p.done();
    let p = Phase::start();
    let loaded = (0..shards)
        .map(|s| b.load_shard(s))
        .collect::<Result<Vec<_>, _>>()?;
    let load = p.done();

    // Queries: random Gaussian vectors; truth: exact top 10 over all items.
    let queries = 200;
    let k = 10;
    let mut hits_total = 0usize;
    let mut search_wall = std::time::Duration::ZERO;
    for _ in 0..queries {
        let q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        let mut exact: Vec<(f32, u64)> = (0..n)
            .map(|r| {
                let dot: f32 = vectors.row(r).iter().zip(&q).map(|(a, b)| a * b).sum();
                (dot, items.keys[r])
            })
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: std::collections::HashSet<u64> = exact[..k].iter().map(|x| x.1).collect();
        let t = Instant::now();
        let mut merged = Vec::new();
        for s in &loaded {
            merged.extend(s.search(&q, k)?);
        }
        merged.sort_by(|a, b| b.score.total_cmp(&a.score));
        search_wall += t.elapsed();
        hits_total += merged[..k.min(merged.len())]
            .iter()
            .filter(|h| truth.contains(&h.key))
            .count();
    }
    let per_shard: Vec<usize> = loaded.iter().map(|s| s.keys.len()).collect();
    assert_eq!(per_shard.iter().sum::<usize>(), n);
    assert!(items.keys.iter().all(|&k| shard_of(k, shards) < shards));
    println!(
        "items={n} dim={dim} shards={shards} {params:?} rayon_threads={} bundle={:.1} MiB",
        rayon::current_num_threads(),
        m.total_bytes() as f64 / (1 << 20) as f64
    );
    println!("write+index build: {write}");
    println!("open (verify non-shard files): {open}");
    println!("load all shards (verify + restore): {load}");
    println!(
        "search: {queries} queries x {shards} shard(s), {:.3} ms/query, recall@{k} vs brute force {:.3}",
        search_wall.as_secs_f64() * 1e3 / queries as f64,
        hits_total as f64 / (queries * k) as f64
    );
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}
