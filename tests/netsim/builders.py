"""Small scenario texts for hand-checked tests.

The base city has one district, ``d``, and one department, ``p``. The
district's edge node links to the hub with a 10 ms round trip at 8 Gbit/s
(10**9 bytes/s). The department's access link to the edge node has a 2 ms
round trip, also at 8 Gbit/s.
"""

from __future__ import annotations

from citymesh.netsim import Scenario, parse_scenario

BASE = """
[scenario]
name = "hand-checked"
hours = {hours}

{extra}

[[cities]]
name = "c"
hub_pools = [{hub_pools}]

[[cities.districts]]
name = "d"
latency_ms = 10
bandwidth_gbps = 8
access_latency_ms = 2
access_bandwidth_gbps = 8
edge_pools = [{edge_pools}]

[[cities.departments]]
name = "p"
district = "d"
local_pools = [{local_pools}]

{workloads}
"""


def scenario(
    workloads: str,
    *,
    hub_pools: str = '{ kind = "gpu", count = 1 }',
    edge_pools: str = "",
    local_pools: str = '{ kind = "gpu", count = 1 }',
    extra: str = "",
    hours: float = 1,
) -> Scenario:
    """Parse the base city with the given workloads (TOML under the department)."""
    text = BASE.format(
        hours=hours,
        extra=extra,
        hub_pools=hub_pools,
        edge_pools=edge_pools,
        local_pools=local_pools,
        workloads=workloads,
    )
    return parse_scenario(text, "test.toml")


def workload(name: str, kind: str, **fields: object) -> str:
    """Return a ``[[cities.departments.workloads]]`` table."""
    lines = ["[[cities.departments.workloads]]", f'name = "{name}"', f'kind = "{kind}"']
    for key, value in fields.items():
        if (
            isinstance(value, str)
            and not value.startswith("{")
            and not value.startswith("[")
        ):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"
