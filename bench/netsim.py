"""Benchmark the network simulator; prints one ``name: value`` line per figure.

events_per_s
    SimPy events processed per second of this process's CPU time (so that
    other load on a shared machine does not count): the shipped default city
    (31 departments, 6 districts), hub plus edge, 6 simulated hours.
wall_s_1000_edges_24h
    Wall seconds to simulate 24 hours of a generated city with 1,000
    districts, hub plus edge, including parsing the generated scenario file.
    Each district has one edge node (one NPU) and one department. Each
    department sends one real-time inference request a minute on average
    (commute pattern), one training job a day and a 1 GB upload every two
    hours: about 1.5 million requests in all.

Goals: 200,000 events per second, 60 s for the 1,000-edge day. Run with
``python bench/netsim.py``; it takes about a minute on one core.
"""

from __future__ import annotations

import time

from citymesh.netsim import Simulation, load_scenario, parse_scenario
from citymesh.netsim.engine import resolve_architecture

EDGES = 1000

HEADER = """
[scenario]
name = "bench-1000-edges"
hours = 24

[[cities]]
name = "metro"
hub_pools = [
  { kind = "gpu", count = 24, memory_gb = 80 },
  { kind = "npu", count = 8, memory_gb = 16 },
]
"""

DISTRICT = """
[[cities.districts]]
name = "d{index}"
latency_ms = {latency}
bandwidth_gbps = 10
edge_pools = [{{ kind = "npu", count = 1, memory_gb = 8 }}]
"""

DEPARTMENT = """
[[cities.departments]]
name = "p{index}"
district = "d{index}"

[[cities.departments.workloads]]
name = "infer"
kind = "inference"
rate_per_hour = 60
pattern = "commute"
work_ms = {{ gpu = 10, npu = 14 }}
work_cv = 0.3
memory_gb = 2
target_ms = 50
payload_kb = 40

[[cities.departments.workloads]]
name = "train"
kind = "training"
rate_per_day = 1
work_hours = {{ gpu = 0.5 }}
memory_gb = 16
dataset_gb = 2

[[cities.departments.workloads]]
name = "upload"
kind = "transfer"
rate_per_day = 12
size_gb = 1
"""


def thousand_edge_text() -> str:
    parts = [HEADER]
    for index in range(EDGES):
        parts.append(DISTRICT.format(index=index, latency=4 + index % 40))
    for index in range(EDGES):
        parts.append(DEPARTMENT.format(index=index))
    return "".join(parts)


def events_per_second() -> float:
    scenario = load_scenario("default")
    simulation = Simulation(
        scenario, resolve_architecture(scenario, "hub_edge"), hours=6
    )
    started = time.process_time()
    result = simulation.run()
    return result.events / (time.process_time() - started)


def thousand_edges_wall_s() -> float:
    started = time.perf_counter()
    scenario = parse_scenario(thousand_edge_text(), "bench-1000-edges.toml")
    simulation = Simulation(scenario, resolve_architecture(scenario, "hub_edge"))
    simulation.run()
    return time.perf_counter() - started


def main() -> None:
    print(f"events_per_s: {events_per_second():.0f}")
    print(f"wall_s_1000_edges_24h: {thousand_edges_wall_s():.1f}")


if __name__ == "__main__":
    main()
