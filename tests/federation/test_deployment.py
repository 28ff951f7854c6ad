"""A real Flower deployment: SuperLink and three SuperNodes as subprocesses.

The SuperLink serves TLS with a certificate citymesh made and accepts only
SuperNodes whose keys were registered. Each city runs one long-running ClientApp
process. Most tests share one federation, because starting one takes 15 s or more
on 2 cores.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citymesh.errors import AuthError
from citymesh.federation import JobSpec, run_job
from citymesh.federation.deployment import HOST, LocalFederation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(
    city_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    nodes: dict[str, dict[str, object]] = {
        city: {"data-path": str(path), "dataset-id": f"{city.lower()}-flights"}
        for city, path in city_files.items()
    }
    with LocalFederation(tmp_path_factory.mktemp("federation"), nodes) as started:
        yield started


def test_deployment_job_matches_inprocess(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    # run_job starts and stops a federation of its own here.
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 2, "job_id": "dep"})
    calls: list[tuple[str, int, int]] = []
    deployed = run_job(
        spec,
        city_files,
        mode="deployment",
        contributions="none",
        on_round=lambda city, round_, rows: calls.append((city, round_, rows)),
    )
    local = run_job(spec, city_files, contributions="none")
    assert [r.round for r in deployed.rounds] == [1, 2]
    assert sorted(deployed.rounds[-1].per_city) == ["EWR", "JFK", "LGA"]
    assert len(calls) == 6
    # Same spec, seed and data: the two modes train the same model, up to the
    # order in which FedAvg sums the replies.
    assert deployed.final_auc == pytest.approx(local.final_auc, abs=1e-3)
    for name, tensor in local.model_state.items():
        assert deployed.model_state[name].allclose(tensor, atol=1e-4)


def test_deployment_job_only_named_cities(
    federation: LocalFederation, city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict(
        {
            **quick_spec.to_dict(),
            "rounds": 1,
            "job_id": "named",
            "datasets": {"EWR": "ewr-flights", "LGA": "lga-flights"},
        }
    )
    result = run_job(
        spec,
        {city: city_files[city] for city in ("EWR", "LGA")},
        mode="deployment",
        federation=federation,
        contributions="none",
    )
    assert sorted(result.rounds[0].per_city) == ["EWR", "LGA"]


def test_deployment_secagg_survives_worker_kill(
    federation: LocalFederation, city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    # The supervisor restarts JFK's killed ClientApp process, and the restarted
    # process takes part in every SecAgg+ stage of the next job.
    killed = federation.worker_pid("JFK")
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 15.0
    while federation.worker_pid("JFK") in (None, killed):
        assert time.monotonic() < deadline, "the JFK worker was not restarted"
        time.sleep(0.2)
    assert federation.worker_restarts("JFK") == 1

    plain_spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 2})
    secure_spec = JobSpec.from_dict(
        {**plain_spec.to_dict(), "job_id": "secure", "privacy": {"mode": "secagg"}}
    )
    secure = run_job(
        secure_spec,
        city_files,
        mode="deployment",
        federation=federation,
        contributions="none",
    )
    plain = run_job(plain_spec, city_files, contributions="none")
    assert [r.round for r in secure.rounds] == [1, 2]
    for metrics in secure.rounds:
        assert sorted(metrics.per_city) == ["EWR", "JFK", "LGA"]
        assert all(part.train_rows > 0 for part in metrics.per_city.values())
    assert secure.final_auc == pytest.approx(plain.final_auc, abs=0.02)
    for name, tensor in plain.model_state.items():
        assert secure.model_state[name].allclose(tensor, atol=1e-4)


def test_deployment_unregistered_node_rejected(
    federation: LocalFederation, city_files: dict[str, Path]
) -> None:
    with pytest.raises(AuthError, match="key is not registered"):
        federation.add_node(
            "rogue", {"data-path": str(city_files["EWR"])}, register=False
        )
    assert "rogue" not in federation.nodes
    online = [n for n in federation.list_nodes() if n["status"] == "online"]
    assert len(online) == 3
    assert sorted(int(n["node-id"]) for n in online) == sorted(
        federation.node_ids.values()
    )


def test_deployment_superlink_serves_tls_only(federation: LocalFederation) -> None:
    files = federation.tls_files
    assert files is not None
    trusting = ssl.create_default_context(cafile=str(files.ca_certificate))
    with (
        socket.create_connection((HOST, federation.port), timeout=5) as raw,
        trusting.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # A client that does not trust citymesh's CA rejects the certificate.
    with (
        socket.create_connection((HOST, federation.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname=HOST)
    # A plain HTTP request gets no HTTP response.
    plain = http.client.HTTPConnection(HOST, federation.port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/")
        plain.getresponse()
    plain.close()
    for path in federation.credentials_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name
