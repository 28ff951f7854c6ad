"""The powered compute of one run: the pools at the sites an architecture uses."""

from __future__ import annotations

import simpy

from .pools import Pool
from .scenario import HUB
from .topology import Topology


class Cluster:
    """Pools by site, with the routes between sites.

    Only the sites that the placement policy powers have pools; the others'
    hardware is not bought in that architecture, so it costs nothing.
    """

    def __init__(
        self,
        env: simpy.Environment,
        topology: Topology,
        sites: list[str],
        tally: list[int],
        batch_share: float,
        queue_limit: int,
    ) -> None:
        self.env = env
        self.topology = topology
        self.pools_by_site: dict[str, list[Pool]] = {}
        for name in sites:
            site = topology.sites[name]
            self.pools_by_site[name] = [
                Pool(
                    env,
                    site,
                    spec,
                    tally,
                    batch_share=batch_share,
                    queue_limit=queue_limit,
                )
                for spec in site.pools
            ]
        self.pools = [pool for pools in self.pools_by_site.values() for pool in pools]
        self.route = topology.route

    def pools_at(self, site: str) -> list[Pool]:
        """Return the powered pools at a site (none if the site is unpowered)."""
        return self.pools_by_site.get(site, [])

    @staticmethod
    def hub_of(city: str) -> str:
        return f"{city}/{HUB}"

    @staticmethod
    def edge_of(city: str, district: str) -> str:
        return f"{city}/{district}"
