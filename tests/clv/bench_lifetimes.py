#!/usr/bin/env python3
"""Times lifetimes' BetaGeoFitter.fit on simulated customer summaries of several sizes.

For each size N it simulates N customers from a known BG/NBD process with numpy (seeded),
writes them to <out-dir>/customers_<N>.csv (columns x,t_x,T, in days, rounded to 0.01 like
the CDNOW summaries) so patron-clv can fit exactly the same data
(`cargo run --release -p patron-clv --example fit_csv -- <csv>`), then fits lifetimes and
prints one JSON object with the timings and fitted parameters.

Simulation (exact, vectorized): lambda ~ Gamma(r, rate alpha), p ~ Beta(a, b); the number of
repeat purchases until drop-out is K ~ Geometric(p) on {1, 2, ...}; repeat purchases in
(0, T] number n ~ Poisson(lambda T); x = min(K, n); given n, the purchase times are uniform
order statistics on (0, T], so the x-th is t_x = T * Beta(x, n - x + 1) (t_x = 0 if x = 0).

Usage (from the workspace root):
    .venv-clv/bin/python tests/clv/bench_lifetimes.py --out-dir /tmp/patron-clv-bench \
        --sizes 10000 100000 1000000
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

import lifetimes
from lifetimes import BetaGeoFitter

# CDNOW's published weekly parameters with alpha converted to days.
TRUTH = {"r": 0.243, "alpha": 4.414 * 7.0, "a": 0.793, "b": 2.426}


def simulate(n, seed, t_min=30.0, t_max=730.0):
    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUTH["r"], 1.0 / TRUTH["alpha"], n)
    p = rng.beta(TRUTH["a"], TRUTH["b"], n)
    T = rng.uniform(t_min, t_max, n)
    k = rng.geometric(p)
    purchases = rng.poisson(lam * T)
    x = np.minimum(k, purchases)
    t_x = np.zeros(n)
    pos = x > 0
    t_x[pos] = T[pos] * rng.beta(x[pos], purchases[pos] - x[pos] + 1)
    T = np.round(T, 2)
    t_x = np.minimum(np.round(t_x, 2), T)
    return pd.DataFrame({"x": x.astype(int), "t_x": t_x, "T": T})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="/tmp/patron-clv-bench")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    results = {"lifetimes": lifetimes.__version__, "truth": TRUTH, "runs": []}
    for n in args.sizes:
        df = simulate(n, args.seed + n)
        path = os.path.join(args.out_dir, f"customers_{n}.csv")
        df.to_csv(path, index=False, float_format="%.2f")
        bgf = BetaGeoFitter(penalizer_coef=0.0)
        start = time.perf_counter()
        bgf.fit(df["x"], df["t_x"], df["T"])
        elapsed = time.perf_counter() - start
        run = {
            "customers": n,
            "csv": path,
            "distinct_triples": int(df.drop_duplicates().shape[0]),
            "fit_seconds": elapsed,
            "params": {k: float(v) for k, v in bgf.params_.items()},
        }
        results["runs"].append(run)
        print(f"n={n}: {elapsed:.2f}s {run['params']}", file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
