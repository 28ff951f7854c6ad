"""Placement policies, autoscaling, compression and cost accounting."""

from __future__ import annotations

import pytest

from citymesh.netsim import (
    Architecture,
    CentralQueue,
    LatencyAware,
    PlacementPolicy,
    QueueAutoscaler,
    Simulation,
    simulate,
)
from citymesh.netsim.specs import AutoscalingSpec, CompressionSpec

from .builders import scenario, workload


def test_latency_aware_prefers_edge_within_target():
    spec = scenario(
        workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 5, npu = 20 }"),
        edge_pools='{ kind = "npu", count = 1 }',
    )
    result = simulate(spec, "hub_edge")

    # The edge responds in 2 + 20 ms, inside the 100 ms target, so it wins
    # although the hub would respond sooner (12 + 5 ms).
    assert result.inference.p50_ms == pytest.approx(22.0)
    assert [pool.tasks for pool in result.pools] == [0, 1]


def test_latency_aware_falls_back_to_hub():
    spec = scenario(
        workload(
            "infer",
            "inference",
            at_s=[0.0],
            work_ms="{ gpu = 5, npu = 200 }",
            target_ms=50,
        ),
        edge_pools='{ kind = "npu", count = 1 }',
    )
    result = simulate(spec, "hub_edge")

    assert result.inference.p50_ms == pytest.approx(17.0)
    assert [pool.tasks for pool in result.pools] == [1, 0]


def test_compression_fits_model_on_edge():
    # A 12 GB model does not fit the 8 GB edge unit. Compressed to 6 GB it
    # fits and runs 2x faster, so the response takes 2 ms access + 40 / 2 ms.
    text = workload(
        "infer",
        "inference",
        at_s=[0.0, 1.0],
        work_ms="{ gpu = 5, npu = 40 }",
        memory_gb=12,
    )
    edge = '{ kind = "npu", count = 1, memory_gb = 8 }'
    plain = simulate(scenario(text, edge_pools=edge), "hub_edge")
    compressed_spec = scenario(
        text,
        edge_pools=edge,
        extra="[compression]\nenabled = true\nspeedup = 2.0\n"
        "accuracy_cost_pct = 1.5\nmemory_factor = 0.5",
    )
    compressed = simulate(compressed_spec, "hub_edge")

    assert plain.inference.p50_ms == pytest.approx(17.0)
    assert plain.accuracy_cost_pct == 0.0
    assert compressed.inference.p50_ms == pytest.approx(22.0)
    assert compressed.accuracy_cost_pct == pytest.approx(1.5)
    assert compressed.workloads[0].compressed == 1.0


class BatchFirst(CentralQueue):
    batch_share = 1.0


def test_autoscaler_starts_and_stops_units():
    # One of four GPUs is active. Four 600 s jobs arrive at 0 s. At 60 s the
    # scaler starts three units (ready at 90 s); the jobs end at 600 s and
    # 690 s. The peak of the last two minutes limits stopping: one unit stops
    # at 780 s, two more at 840 s. Active unit-seconds over 1,800 s:
    # 60 x 1 + 720 x 4 + 60 x 3 + 960 x 1 = 4,080.
    spec = scenario(
        workload(
            "train",
            "training",
            at_s=[0.0, 0.0, 0.0, 0.0],
            work_hours="{ gpu = 0.1666666666666667 }",
        ),
        hub_pools='{ kind = "gpu", count = 4, min_active = 1, cost_per_hour = 0, '
        "active_cost_per_hour = 1.0, power_busy_w = 0, power_idle_w = 0 }",
        hours=0.5,
    )
    scaler = QueueAutoscaler(
        AutoscalingSpec(
            interval_s=60, scale_up_queue=1, scale_down_idle_s=120, startup_s=30
        )
    )
    sim = Simulation(
        spec, Architecture("scaled", "scaled", BatchFirst(), scaler), trace=True
    )
    result = sim.run()
    starts = sorted(time for time, event, _, _ in sim.trace if event == "start")
    pool = result.pools[0]

    assert starts == [
        pytest.approx(0.0),
        pytest.approx(90.0),
        pytest.approx(90.0),
        pytest.approx(90.0),
    ]
    assert pool.active_unit_hours * 3600 == pytest.approx(4080.0)
    assert pool.busy_unit_hours * 3600 == pytest.approx(2400.0)
    assert result.cost == pytest.approx(4080.0 / 3600)


def test_owned_units_cost_whole_run():
    spec = scenario(
        "",
        hub_pools='{ kind = "gpu", count = 3, cost_per_hour = 2.0, '
        "power_busy_w = 100, power_idle_w = 50 }",
        extra="",
        hours=2,
    )
    result = simulate(spec, "hub")
    # 3 units x 2 h x 2.0, plus 3 x 2 h x 50 W = 0.3 kWh x PUE 1.3 x 0.15.
    energy = 0.3 * 1.3

    assert result.energy_kwh == pytest.approx(energy)
    assert result.cost == pytest.approx(12.0 + energy * 0.15)
    assert result.cost_per_day == pytest.approx(result.cost * 12)
    assert result.utilization == 0.0


class HubOnlyForTraining(PlacementPolicy):
    """A planner's own policy: inference at the edge only, training at the hub."""

    name = "edge_inference"

    def sites(self, topology):
        return [
            site.name for site in topology.sites.values() if site.kind != "department"
        ]

    def place(self, task):
        if task.realtime:
            edge = self.cluster.edge_of(task.city, task.district)
            return self.fastest(task, self.cluster.pools_at(edge))
        return self.fastest(task, self.cluster.pools_at(self.cluster.hub_of(task.city)))


def test_custom_policy_drops_what_it_cannot_place():
    spec = scenario(
        workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 5 }")
        + workload("train", "training", at_s=[0.0], work_hours="{ gpu = 0.01 }"),
        edge_pools='{ kind = "npu", count = 1 }',
    )
    result = simulate(spec, Architecture("mine", "my policy", HubOnlyForTraining()))
    workloads = {w.name.rsplit("/", 1)[1]: w for w in result.workloads}

    assert workloads["infer"].dropped == {"no_eligible_pool": 1}
    assert workloads["train"].completed == 1
    assert result.label == "my policy"


def test_latency_aware_without_compression_marks_nothing():
    policy = LatencyAware(CompressionSpec(enabled=False))
    spec = scenario(
        workload("infer", "inference", at_s=[0.0], work_ms="{ npu = 5 }"),
        edge_pools='{ kind = "npu", count = 1 }',
    )
    result = simulate(spec, Architecture("plain", "plain edge", policy))

    assert result.inference.p50_ms == pytest.approx(7.0)
    assert result.workloads[0].compressed == 0.0
