#!/usr/bin/env python3
"""Times the peer, implicit's CPU AlternatingLeastSquares (v0.7.3), on the same
data and settings as `cargo bench --bench als`, so the two can be compared in
one sitting.

Setup (once):  S=../shared/baselines; cd "$(mktemp -d)"; bash $S/setup_env.sh peers
Run:
  FUNNEL_BENCH_DUMP_DIR=/tmp/als-dump cargo bench --bench als        # ours + dumps the split
  peers/bin/python scripts/bench_als_vs_implicit.py --dump-dir /tmp/als-dump
  FUNNEL_BENCH_DUMP_DIR=/tmp/als-dump FUNNEL_BENCH_ALS_SYNTH=10000000 cargo bench --bench als
  peers/bin/python scripts/bench_als_vs_implicit.py --dump-dir /tmp/als-dump --synth

Settings: factors 64, regularization 10, alpha 1, 15 iterations, CG (3 steps,
implicit's default), 2 threads, BLAS limited to 1 thread (implicit's advice).
Note implicit's confidence is alpha * r, funnel's is 1 + alpha * r: on binary
data implicit alpha=a equals funnel alpha=a-1. The work per iteration is the
same either way (both do every CG product), so timings compare directly; the
HR@10 check reports implicit at alpha 1 and 2 (= funnel alpha 0 and 1).

The dump format is written by benches/als.rs: b"FNLCOO01", u64 rows, u64 cols,
u64 nnz, u32 row[nnz], u32 col[nnz], f32 value[nnz], little-endian.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

# implicit warns (and slows down) when BLAS runs its own thread pool inside
# its threads; this must be set before numpy loads BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402


def load_coo(path: str) -> sp.csr_matrix:
    with open(path, "rb") as f:
        if f.read(8) != b"FNLCOO01":
            sys.exit(f"{path}: not a funnel COO dump (rerun the Rust bench with FUNNEL_BENCH_DUMP_DIR)")
        rows, cols, nnz = np.frombuffer(f.read(24), dtype="<u8")
        r = np.frombuffer(f.read(4 * int(nnz)), dtype="<u4")
        c = np.frombuffer(f.read(4 * int(nnz)), dtype="<u4")
        v = np.frombuffer(f.read(4 * int(nnz)), dtype="<f4")
    return sp.csr_matrix((v, (r, c)), shape=(int(rows), int(cols)), dtype=np.float32)


def load_ml100k(directory: str) -> sp.csr_matrix:
    d = np.loadtxt(os.path.join(directory, "u.data"), dtype=np.int64)
    u, i = d[:, 0] - 1, d[:, 1] - 1
    m = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(u.max() + 1, i.max() + 1))
    m.data[:] = 1.0  # repeated pairs are summed by scipy; the data is binary
    return m


def make_model(alpha: float, threads: int, iterations: int):
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(factors=64, regularization=10.0, alpha=alpha,
                                   iterations=iterations, num_threads=threads,
                                   random_state=42)


def timed_fit(X: sp.csr_matrix, alpha: float, threads: int, iterations: int):
    model = make_model(alpha, threads, iterations)
    with threadpool_limits(1, "blas"):
        start = time.perf_counter()
        model.fit(X, show_progress=False)
        seconds = time.perf_counter() - start
    return model, seconds


def report(label: str, times: list[float]) -> None:
    times = sorted(times)
    print(f"{label}: min {times[0]:.4f} s, median {statistics.median_low(times):.4f} s "
          f"over {len(times)} runs [{' '.join(f'{t:.4f}' for t in times)}]")


def hit_rate_at(n: int, user_factors, item_factors, train: sp.csr_matrix,
                test: sp.csr_matrix) -> tuple[float, float, int]:
    """(fraction of test users with a test item among their top-n unseen items,
    mean fraction of those n that are test items, users); ties broken by lower
    item index, as in the Rust bench."""
    hits = relevant = users = 0
    for u in range(train.shape[0]):
        wanted = test.indices[test.indptr[u]:test.indptr[u + 1]]
        if len(wanted) == 0:
            continue
        users += 1
        scores = item_factors @ user_factors[u]
        scores[train.indices[train.indptr[u]:train.indptr[u + 1]]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:n]
        found = int(np.isin(top, wanted).sum())
        hits += found > 0
        relevant += found
    return hits / max(users, 1), relevant / (n * max(users, 1)), users


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump-dir", help="folder the Rust bench dumped its matrices to")
    ap.add_argument("--ml100k-dir", default=os.environ.get(
        "FUNNEL_ML100K_DIR", os.path.join(here, "..", "..", "shared", "data", "ml-100k")))
    ap.add_argument("--runs", type=int, help="fits to time (default 7 on ml-100k, 1 on --synth)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--synth", action="store_true",
                    help="time the generated set (dump-dir/synth.coo) instead of ml-100k")
    args = ap.parse_args()

    import implicit
    print(f"implicit {implicit.__version__}, numpy {np.__version__}")

    if args.synth:
        if not args.dump_dir:
            sys.exit("--synth needs --dump-dir with synth.coo from the Rust bench")
        X = load_coo(os.path.join(args.dump_dir, "synth.coo"))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"synthetic: {X.shape[0]} users x {X.shape[1]} items, {X.nnz} entries; "
              f"peak RSS after loading {rss_before} kB")
        times = []
        for _ in range(max(1, args.runs or 1)):
            _, s = timed_fit(X, 1.0, args.threads, args.iters)
            times.append(s)
        report("implicit synthetic fit", times)
        print(f"peak RSS (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} kB")
        return

    udata = os.path.join(args.ml100k_dir, "u.data")
    if not os.path.exists(udata):
        print(f"skipping: {udata} not found (pass --ml100k-dir)")
        return
    X = load_ml100k(args.ml100k_dir)
    print(f"ml-100k: {X.shape[0]} users x {X.shape[1]} items, {X.nnz} entries; factors 64 "
          f"reg 10 alpha 1 iterations {args.iters} cg_steps 3 threads {args.threads}")
    times = [timed_fit(X, 1.0, args.threads, args.iters)[1] for _ in range(max(1, args.runs or 7))]
    report("implicit ml-100k fit", times)

    if args.dump_dir:
        train = load_coo(os.path.join(args.dump_dir, "ml100k_train.coo"))
        test = load_coo(os.path.join(args.dump_dir, "ml100k_test.coo"))
        for alpha in (1.0, 2.0):
            model, _ = timed_fit(train, alpha, args.threads, args.iters)
            hr, precision, users = hit_rate_at(10, np.asarray(model.user_factors),
                                               np.asarray(model.item_factors), train, test)
            print(f"implicit ml-100k alpha {alpha:g} (confidence {alpha:g} r): HR@10 {hr:.4f}, "
                  f"precision@10 {precision:.4f} over {users} test users")


if __name__ == "__main__":
    main()
