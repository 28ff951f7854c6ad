"""Failures seen by Flower users, reproduced in process with real ClientApps.

Each test wraps the real ClientApp in a Flower mod that makes one city misbehave.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message

from citymesh.federation import JobResult, JobSpec, read_result
from citymesh.federation.client_app import ARRAYS_KEY, make_client_app
from citymesh.federation.inprocess import InProcessGrid, run_server_app
from citymesh.federation.runner import job_run_config, node_configs
from citymesh.federation.server_app import make_server_app

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def is_train(message: Message, city: str, context: Context, round_: int) -> bool:
    if message.metadata.message_type != "train":
        return False
    if context.node_config["city"] != city:
        return False
    return int(message.content["config"]["server-round"]) == round_


def run(
    spec: JobSpec,
    datasets: dict[str, Path],
    output_dir: Path,
    mods: list[Mod],
    *,
    max_update_norm: float | None = None,
    grid_ready: Callable[[InProcessGrid], None] | None = None,
) -> JobResult:
    run_config = job_run_config(spec, output_dir, max_update_norm)
    grid = InProcessGrid(
        make_client_app(mods=mods),
        node_configs(spec, datasets),
        run_config=run_config,
    )
    if grid_ready is not None:
        grid_ready(grid)
    try:
        run_server_app(make_server_app(), grid, run_config)
    finally:
        grid.close()
    return read_result(output_dir)


def test_failing_node_round_continues(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    def crash_jfk_round_2(message: Message, context: Context, call_next) -> Message:
        if is_train(message, "JFK", context, 2):
            raise RuntimeError("disk unplugged")
        return call_next(message, context)

    result = run(quick_spec, city_files, tmp_path, [crash_jfk_round_2])
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert result.rounds[1].failures == 1
    assert result.rounds[1].per_city["JFK"].train_rows == 0
    assert result.rounds[1].per_city["EWR"].train_rows > 0
    assert result.rounds[2].per_city["JFK"].train_rows > 0
    assert result.final_auc > 0.55


def test_node_dies_mid_round_job_goes_on(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    grids: list[InProcessGrid] = []

    def kill_lga_in_round_2(message: Message, context: Context, call_next) -> Message:
        if is_train(message, "LGA", context, 2):
            grids[0].disconnect(context.node_id)
            time.sleep(0.5)
        return call_next(message, context)

    result = run(
        quick_spec,
        city_files,
        tmp_path,
        [kill_lga_in_round_2],
        grid_ready=grids.append,
    )
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert "LGA" in result.rounds[0].per_city
    assert result.rounds[1].per_city.get("LGA") is None
    assert sorted(result.rounds[2].per_city) == ["EWR", "JFK"]
    assert result.rounds[2].per_city["EWR"].train_rows > 0


def test_straggler_left_out_by_timeout(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "round_timeout_s": 2.0})

    def slow_ewr_round_2(message: Message, context: Context, call_next) -> Message:
        if is_train(message, "EWR", context, 2):
            time.sleep(4.0)
        return call_next(message, context)

    started = time.monotonic()
    result = run(spec, city_files, tmp_path, [slow_ewr_round_2])
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert result.rounds[1].per_city["EWR"].train_rows == 0
    assert result.rounds[1].per_city["JFK"].train_rows > 0
    assert result.rounds[1].seconds < 4.0
    assert result.rounds[2].per_city["EWR"].train_rows > 0
    assert time.monotonic() - started < 20


def test_nan_update_rejected(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    def poison_ewr(message: Message, context: Context, call_next) -> Message:
        reply = call_next(message, context)
        if is_train(message, "EWR", context, 1):
            state = reply.content[ARRAYS_KEY].to_torch_state_dict()
            state = {
                name: torch.full_like(t, float("nan")) for name, t in state.items()
            }
            reply.content[ARRAYS_KEY] = ArrayRecord(state)
        return reply

    result = run(quick_spec, city_files, tmp_path, [poison_ewr])
    assert "NaN" in result.rounds[0].rejected["EWR"]
    assert result.rounds[1].rejected == {}
    assert result.rounds[0].per_city["EWR"].train_rows == 0
    assert result.rounds[0].per_city["JFK"].train_rows > 0
    for tensor in result.model_state.values():
        assert torch.isfinite(tensor).all()


def test_scaled_update_rejected(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    def scale_jfk(message: Message, context: Context, call_next) -> Message:
        reply = call_next(message, context)
        if is_train(message, "JFK", context, 2):
            arrays = reply.content[ARRAYS_KEY].to_numpy_ndarrays()
            scaled = [np.asarray(a) * 1e6 for a in arrays]
            keys = list(reply.content[ARRAYS_KEY].keys())
            state = {k: torch.from_numpy(a) for k, a in zip(keys, scaled, strict=True)}
            reply.content[ARRAYS_KEY] = ArrayRecord(state)
        return reply

    result = run(quick_spec, city_files, tmp_path, [scale_jfk], max_update_norm=50.0)
    assert "above the limit 50" in result.rounds[1].rejected["JFK"]
    assert result.rounds[0].rejected == {}
    weights = result.model_state["linear.weight"]
    assert float(weights.abs().max()) < 100.0


def test_nodes_joining_one_by_one(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "min_nodes": 4, "rounds": 2})
    cities = {**city_files, "EWR2": city_files["EWR"]}
    configs = node_configs(spec, cities)
    run_config = job_run_config(spec, tmp_path)
    grid = InProcessGrid(make_client_app(), configs[:1], run_config=run_config)
    with ThreadPoolExecutor(1) as executor:
        server = executor.submit(run_server_app, make_server_app(), grid, run_config)
        for config in configs[1:]:
            time.sleep(0.3)
            assert not server.done()
            grid.add_node(config)
        server.result(timeout=60)
    grid.close()
    result = read_result(tmp_path)
    assert sorted(result.rounds[0].per_city) == ["EWR", "EWR2", "JFK", "LGA"]
    assert all(c.train_rows > 0 for c in result.rounds[0].per_city.values())
