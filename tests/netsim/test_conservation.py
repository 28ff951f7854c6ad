"""Every request completes, is dropped with a reason, or is still in progress."""

from __future__ import annotations

import pytest

from citymesh.netsim import (
    Architecture,
    CentralQueue,
    load_scenario,
    simulate,
)

from .builders import scenario, workload


class SmallQueue(CentralQueue):
    queue_limit = 3


# An overloaded hub GPU gets 40 requests/s of 50 ms work, with a 200 ms wait
# limit and a 3-place queue. Other requests need a unit kind that no pool has.
# Long training jobs and large transfers are still under way when the
# 10-minute run ends.
OVERLOADED = (
    workload(
        "infer",
        "inference",
        rate_per_hour=144000,
        work_ms="{ gpu = 50 }",
        max_wait_ms=200,
        work_cv=0.5,
    )
    + workload("exotic", "inference", rate_per_hour=3600, work_ms="{ tpu = 5 }")
    + workload("train", "training", rate_per_hour=60, work_hours="{ gpu = 1 }")
    + workload("upload", "transfer", rate_per_hour=120, size_gb=100)
)


def test_conservation_under_overload():
    spec = scenario(OVERLOADED, hours=1 / 6)
    result = simulate(spec, Architecture("small", "small queue", SmallQueue()))
    done = result.conservation
    workloads = {w.name.rsplit("/", 1)[1]: w for w in result.workloads}

    assert done.arrived == (
        done.completed + done.dropped + done.in_transit + done.queued + done.running
    )
    assert workloads["infer"].dropped["timed_out"] > 0
    assert workloads["infer"].dropped["queue_full"] > 0
    assert workloads["exotic"].dropped == {
        "no_eligible_pool": workloads["exotic"].arrived
    }
    assert done.in_transit > 0
    assert done.queued + done.running > 0
    for report in result.workloads:
        assert report.arrived == (
            report.completed + sum(report.dropped.values()) + report.in_progress
        )


@pytest.mark.parametrize("architecture", ["isolated", "hub", "hub_edge"])
def test_conservation_default_city(architecture):
    result = simulate(load_scenario("default"), architecture, hours=0.5)
    done = result.conservation

    assert done.arrived > 10_000
    assert done.arrived == (
        done.completed + done.dropped + done.in_transit + done.queued + done.running
    )
    assert sum(w.arrived for w in result.workloads) == done.arrived


def test_conservation_federated_job_in_progress():
    # 20 rounds of 100 s cannot finish in 6 minutes: the job is still running.
    spec = scenario(
        workload(
            "fl",
            "federated",
            at_s=[0.0],
            rounds=20,
            round_work_s="{ gpu = 100 }",
            partners='["p"]',
        ),
        hours=0.1,
    )
    result = simulate(spec, "hub")
    done = result.conservation

    assert done.arrived == 1
    assert done.running == 1
    assert done.completed == 0
    assert result.workloads[0].in_progress == 1
