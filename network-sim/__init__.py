"""Discrete-event model (SimPy) of a city's compute hub and district edge nodes.

A planner describes a city in a scenario file: hub pools, districts with edge
nodes, links, departments and their workloads. One run simulates one
architecture; a comparison runs three on the same workload and seed (isolated
departments, hub only, and hub plus edge)::

    from citymesh.netsim import compare, load_scenario

    comparison = compare(load_scenario("default"), hours=6)
    for result in comparison.results:
        print(result.architecture, result.utilization, result.cost_per_day)

Errors: ``ScenarioError`` (an ``InvalidInput``, so also a ``ValueError``) for
any invalid scenario file or option.
"""

from .compare import ClaimCheck, Comparison, check_claims, compare
from .engine import Simulation, simulate
from .fields import ScenarioError
from .metrics import (
    Conservation,
    DistrictReport,
    LatencySummary,
    PoolReport,
    RunResult,
    WorkloadReport,
)
from .policies import (
    ARCHITECTURE_NAMES,
    Architecture,
    CentralQueue,
    LatencyAware,
    PlacementPolicy,
    QueueAutoscaler,
    StaticPartition,
    default_architectures,
)
from .pools import Pool
from .scenario import load_scenario, parse_scenario, shipped_scenarios
from .specs import Scenario
from .tasks import Task

__all__ = [
    "ARCHITECTURE_NAMES",
    "Architecture",
    "CentralQueue",
    "ClaimCheck",
    "Comparison",
    "Conservation",
    "DistrictReport",
    "LatencyAware",
    "LatencySummary",
    "PlacementPolicy",
    "Pool",
    "PoolReport",
    "QueueAutoscaler",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "StaticPartition",
    "Task",
    "WorkloadReport",
    "check_claims",
    "compare",
    "default_architectures",
    "load_scenario",
    "parse_scenario",
    "shipped_scenarios",
    "simulate",
]
