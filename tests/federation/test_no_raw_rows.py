"""What a city sends during a job: aggregates only, never a raw row.

A Flower mod on each city's ClientApp records every reply, serialized as Flower
serializes it for the wire.
"""

from pathlib import Path

import pandas as pd
from flwr.app import Context, Message
from flwr.common.serde import recorddict_to_proto

from citymesh.federation import JobSpec, read_result, split_flights
from citymesh.federation.client_app import make_client_app
from citymesh.federation.inprocess import InProcessGrid, run_server_app
from citymesh.federation.runner import job_run_config, node_configs
from citymesh.federation.server_app import make_server_app


def capture_replies(
    spec: JobSpec, datasets: dict[str, Path], output_dir: Path
) -> dict[str, list[bytes]]:
    sent: dict[str, list[bytes]] = {city: [] for city in datasets}

    def record(message: Message, context: Context, call_next) -> Message:
        reply = call_next(message, context)
        payload = recorddict_to_proto(reply.content).SerializeToString()
        sent[str(context.node_config["city"])].append(payload)
        return reply

    run_config = job_run_config(spec, output_dir)
    grid = InProcessGrid(
        make_client_app(mods=[record]),
        node_configs(spec, datasets),
        run_config=run_config,
    )
    try:
        run_server_app(make_server_app(), grid, run_config)
    finally:
        grid.close()
    read_result(output_dir)
    return sent


def test_replies_contain_no_row_values(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    sent = capture_replies(quick_spec, city_files, tmp_path / "out")
    for city, payloads in sent.items():
        # One statistics reply, then a train and an evaluate reply per round.
        assert len(payloads) == 1 + 2 * quick_spec.rounds
        wire = b"".join(payloads)
        rows = pd.read_parquet(city_files[city])
        # Tail numbers and flight times identify single flights; none is sent.
        for tailnum in rows["tailnum"].dropna().unique():
            assert tailnum.encode() not in wire
        for value in rows["time_hour"].head(200):
            assert value.encode() not in wire


def test_reply_size_independent_of_rows(quick_spec: JobSpec, tmp_path: Path) -> None:
    small = split_flights(tmp_path / "small", rows=3_000, seed=1)
    large = split_flights(tmp_path / "large", rows=30_000, seed=1)
    small_sent = capture_replies(quick_spec, small, tmp_path / "out-small")
    large_sent = capture_replies(quick_spec, large, tmp_path / "out-large")
    for city in small:
        small_bytes = sum(len(p) for p in small_sent[city])
        large_bytes = sum(len(p) for p in large_sent[city])
        # Ten times the rows: the replies grow only through larger counts
        # (varint integers) and a few more categories. About 9.3 KB per city
        # for 3 rounds at 3,000, 30,000 and 300,000 rows alike.
        assert large_bytes < small_bytes * 1.05
