"""Hand-checked timelines: one request, competing jobs, link latency, bandwidth."""

from __future__ import annotations

import pytest

from citymesh.netsim import Simulation, parse_scenario, simulate
from citymesh.netsim.engine import resolve_architecture

from .builders import scenario, workload


def run_traced(spec, architecture):
    sim = Simulation(spec, resolve_architecture(spec, architecture), trace=True)
    result = sim.run()
    return sim, result


def test_one_request_timeline_hub():
    # 12 ms round trip (2 ms access + 10 ms backbone), 1 MB payload at 10**9 B/s
    # = 1 ms, 5 ms of work on a unit of speed 2 = 2.5 ms.
    spec = scenario(
        workload(
            "infer", "inference", at_s=[1.0], work_ms="{ gpu = 5 }", payload_kb=1000
        ),
        hub_pools='{ kind = "gpu", count = 1, speed = 2.0 }',
    )
    sim, result = run_traced(spec, "hub")

    assert sim.trace == [
        (1.0, "arrive", "c/p/infer#0", "c/p"),
        (pytest.approx(1.007), "submit", "c/p/infer#0", "c/hub/gpu"),
        (pytest.approx(1.007), "start", "c/p/infer#0", "c/hub/gpu"),
        (pytest.approx(1.0095), "finish", "c/p/infer#0", "c/hub/gpu"),
    ]
    assert result.inference.p50_ms == pytest.approx(15.5)
    assert result.districts[0].network_p99_ms == pytest.approx(13.0)
    assert result.pools[0].busy_unit_hours * 3600 == pytest.approx(0.0025)
    assert result.conservation.completed == 1


def test_link_latency_added_once_per_route():
    spec = scenario(
        workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 5, npu = 5 }"),
        edge_pools='{ kind = "npu", count = 1 }',
    )
    isolated = simulate(spec, "isolated")
    hub = simulate(spec, "hub")
    edge = simulate(spec, "hub_edge")

    # Same site: no network time. Edge: the access link's 2 ms once.
    # Hub: access 2 ms plus backbone 10 ms, each once.
    assert isolated.inference.p50_ms == pytest.approx(5.0)
    assert edge.inference.p50_ms == pytest.approx(7.0)
    assert hub.inference.p50_ms == pytest.approx(17.0)


def test_transfer_adds_round_trip_once():
    # 1 GB at 10**9 B/s = 1 s, plus the 12 ms round trip to the hub.
    spec = scenario(workload("upload", "transfer", at_s=[0.0], size_gb=1.0))
    result = simulate(spec, "hub")
    transfer = result.workloads[0]

    assert transfer.p50_s == pytest.approx(1.012)
    assert result.network_gb == pytest.approx(1.0)


def test_transfers_share_link_bandwidth():
    # The second transfer starts at 0.5 s, when the first has 0.5 GB left.
    # Both then get half the bandwidth, so the first ends at 1.5 s. The second
    # then has 0.5 GB left at full rate and ends at 2.0 s. Each adds the 12 ms
    # round trip.
    spec = scenario(workload("upload", "transfer", at_s=[0.0, 0.5], size_gb=1.0))
    sim, result = run_traced(spec, "hub")
    delivered = [
        (time, label) for time, event, label, _ in sim.trace if event == "delivered"
    ]

    assert delivered == [
        (pytest.approx(1.512), "c/p/upload#0"),
        (pytest.approx(2.012), "c/p/upload#1"),
    ]
    assert result.workloads[0].p99_s == pytest.approx(1.512, rel=0.02)


def test_two_competing_jobs_queue_in_order():
    # One GPU; each job needs 36 s. The second waits for the first.
    spec = scenario(
        workload("train", "training", at_s=[0.0, 10.0], work_hours="{ gpu = 0.01 }")
    )
    sim, result = run_traced(spec, "isolated")
    starts = [(time, label) for time, event, label, _ in sim.trace if event == "start"]
    finishes = [
        (time, label) for time, event, label, _ in sim.trace if event == "finish"
    ]

    assert starts == [
        (pytest.approx(0.0), "c/p/train#0"),
        (pytest.approx(36.0), "c/p/train#1"),
    ]
    assert finishes == [
        (pytest.approx(36.0), "c/p/train#0"),
        (pytest.approx(72.0), "c/p/train#1"),
    ]
    training = result.workloads[0]
    assert training.completed == 2
    assert training.p50_s == pytest.approx(49.0)  # median of 36 and 62


def test_inference_overtakes_queued_training():
    # The job at 0 s runs on the only GPU for 36 s. An inference request (5 s)
    # and a second job queue behind it, and the real-time request starts first.
    spec = scenario(
        workload("train", "training", at_s=[0.0, 1.0], work_hours="{ gpu = 0.01 }")
        + workload(
            "infer",
            "inference",
            at_s=[2.0],
            work_ms="{ gpu = 5000 }",
            max_wait_ms=60000,
        )
    )
    sim, _ = run_traced(spec, "isolated")
    starts = [(time, label) for time, event, label, _ in sim.trace if event == "start"]

    assert starts == [
        (pytest.approx(0.0), "c/p/train#0"),
        (pytest.approx(36.0), "c/p/infer#0"),
        (pytest.approx(41.0), "c/p/train#1"),
    ]


def test_dataset_transfer_precedes_training():
    # 2 GB of data to the hub: 2 s plus the 12 ms round trip, then 36 s of work.
    spec = scenario(
        workload(
            "train", "training", at_s=[0.0], work_hours="{ gpu = 0.01 }", dataset_gb=2.0
        )
    )
    sim, result = run_traced(spec, "hub")
    submit = [time for time, event, _, _ in sim.trace if event == "submit"]

    assert submit == [pytest.approx(2.012)]
    assert result.workloads[0].p50_s == pytest.approx(38.012)


FEDERATED = workload(
    "fl",
    "federated",
    at_s=[0.0],
    rounds=2,
    model_mb=100,
    round_work_s="{ gpu = 10 }",
    partners='["q"]',
)


def test_federated_rounds_share_hub_gpu():
    # Both participants train on the hub's single GPU, where the coordinator
    # also sits, so the model moves no distance: each round is 2 x 10 s.
    sim, result = run_traced(partner_scenario(FEDERATED), "hub")
    rounds = [time for time, event, _, _ in sim.trace if event == "round"]

    assert rounds == [pytest.approx(20.0), pytest.approx(40.0)]
    federated = result.workloads[0]
    assert federated.completed == 1
    assert federated.p50_s == pytest.approx(40.0)


def test_federated_rounds_move_model_between_sites():
    # Isolated: p coordinates on its own GPU; q trains on its own. The 100 MB
    # model crosses p -> d -> q (1 Gbit/s access links, 2 ms + 2 ms round trip)
    # in 0.8 s + 4 ms each way, so a round takes 0.804 + 10 + 0.804 s.
    sim, result = run_traced(partner_scenario(FEDERATED), "isolated")
    rounds = [time for time, event, _, _ in sim.trace if event == "round"]

    assert rounds == [pytest.approx(11.608), pytest.approx(23.216)]
    assert result.network_gb == pytest.approx(0.4)


def partner_scenario(workloads: str):
    """A city with departments p (which runs the workloads) and q, each with a GPU."""
    return parse_scenario(
        f"""
[scenario]
name = "partner"
hours = 1

[[cities]]
name = "c"
hub_pools = [{{ kind = "gpu", count = 1 }}]

[[cities.districts]]
name = "d"
latency_ms = 10
bandwidth_gbps = 8

[[cities.departments]]
name = "p"
district = "d"
local_pools = [{{ kind = "gpu", count = 1 }}]

{workloads}

[[cities.departments]]
name = "q"
district = "d"
local_pools = [{{ kind = "gpu", count = 1 }}]
""",
        "partner.toml",
    )
