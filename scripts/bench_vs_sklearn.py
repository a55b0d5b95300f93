#!/usr/bin/env python3
"""Side-by-side speed of `isoflow score` (whole process: read CSV, score,
write CSV) against scikit-learn's `score_samples` alone, on the same data and
the same model size (100 trees, psi=256).

Usage: python3 scripts/bench_vs_sklearn.py [--rows 567479] [--dims 3] [--repeat 3]
Needs numpy and scikit-learn in the running Python, and release binaries
(`cargo build --release --workspace`).
"""
import argparse, os, subprocess, tempfile, time

import numpy as np
from sklearn.ensemble import IsolationForest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=567_479)
    ap.add_argument("--dims", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.lognormal(size=(args.rows, args.dims))
    X[: args.rows // 200] *= 25  # a sprinkling of outliers
    y = np.zeros(args.rows, dtype=int)
    y[: args.rows // 200] = 1
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "data.csv")
        header = ",".join(f"f{i}" for i in range(args.dims)) + ",label"
        np.savetxt(csv, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.6g")
        model = os.path.join(tmp, "m.isoflow")
        subprocess.run([os.path.join(BIN, "isoflow-train"), "fit", "--input", csv, "--out", model], check=True,
                       capture_output=True)
        out = os.path.join(tmp, "scores.csv")
        ours = best(lambda: subprocess.run([os.path.join(BIN, "isoflow"), "score", "--model", model, "--input", csv,
                                            "--output", out, "--backend", "cpu"], check=True, capture_output=True),
                    args.repeat)
        forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(X)
        theirs = best(lambda: forest.score_samples(X), args.repeat)
    print(f"rows={args.rows} dims={args.dims} trees=100 psi=256 cores={os.cpu_count()}")
    print(f"isoflow score (whole process, CSV in/out, cpu): {ours:.3f} s  ({args.rows / ours:,.0f} rows/s)")
    print(f"scikit-learn score_samples (in memory):          {theirs:.3f} s  ({args.rows / theirs:,.0f} rows/s)")
    print(f"speed-up: {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
