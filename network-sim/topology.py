"""Sites, links and routes of a scenario.

Every city has a hub site, one edge site per district and one site per
department. Each department links to its district's edge site, each edge site
to the hub, and ``[[links]]`` add any other link (between two cities' hubs, for
example). Routes are shortest paths by round-trip latency.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .fields import ScenarioError
from .scenario import HUB
from .specs import PoolSpec, Scenario

BITS_PER_BYTE = 8


class Link:
    """A full-duplex link; ``latency_s`` is its round-trip time."""

    __slots__ = ("name", "a", "b", "latency_s", "bandwidth_bps", "flows")

    def __init__(
        self, a: str, b: str, latency_ms: float, bandwidth_gbps: float
    ) -> None:
        self.name = f"{a}<->{b}"
        self.a = a
        self.b = b
        self.latency_s = latency_ms / 1000
        self.bandwidth_bps = bandwidth_gbps * 1e9 / BITS_PER_BYTE  # bytes per second
        self.flows = 0


@dataclass(frozen=True)
class Route:
    """A path between two sites: its links, round-trip time and bottleneck."""

    source: str
    target: str
    links: tuple[Link, ...]
    rtt_s: float
    bottleneck_bps: float  # bytes per second; infinite for a route within a site

    def serialization_s(self, size_bytes: float) -> float:
        """Return the time to send ``size_bytes`` at the bottleneck bandwidth."""
        if size_bytes <= 0 or not self.links:
            return 0.0
        return size_bytes / self.bottleneck_bps


@dataclass(frozen=True)
class SiteSpec:
    """A place that may hold compute: a hub, a district's edge node or a
    department's own server room."""

    name: str
    city: str
    kind: str  # "hub", "edge" or "department"
    district: str
    pools: tuple[PoolSpec, ...]
    pue: float
    site_cost_per_hour: float = 0.0


class Topology:
    """The sites and links of a scenario, with cached shortest routes."""

    def __init__(self, scenario: Scenario) -> None:
        self.sites: dict[str, SiteSpec] = {}
        self.links: list[Link] = []
        self._neighbours: dict[str, list[tuple[str, Link]]] = {}
        self._routes: dict[tuple[str, str], Route] = {}

        for city in scenario.cities:
            hub = f"{city.name}/{HUB}"
            self._add_site(
                SiteSpec(
                    hub,
                    city.name,
                    "hub",
                    "",
                    city.hub_pools,
                    city.hub_pue,
                    city.hub_site_cost_per_hour,
                )
            )
            for district in city.districts:
                edge = f"{city.name}/{district.name}"
                self._add_site(
                    SiteSpec(
                        edge,
                        city.name,
                        "edge",
                        district.name,
                        district.edge_pools,
                        district.edge_pue,
                        district.edge_site_cost_per_hour,
                    )
                )
                self._add_link(edge, hub, district.latency_ms, district.bandwidth_gbps)
            districts = {district.name: district for district in city.districts}
            for dept in city.departments:
                site = f"{city.name}/{dept.name}"
                self._add_site(
                    SiteSpec(
                        site,
                        city.name,
                        "department",
                        dept.district,
                        dept.local_pools,
                        city.department_pue,
                        city.department_site_cost_per_hour,
                    )
                )
                district = districts[dept.district]
                self._add_link(
                    site,
                    f"{city.name}/{dept.district}",
                    district.access_latency_ms,
                    district.access_bandwidth_gbps,
                )
        for link in scenario.links:
            self._add_link(link.a, link.b, link.latency_ms, link.bandwidth_gbps)

    def _add_site(self, site: SiteSpec) -> None:
        self.sites[site.name] = site
        self._neighbours[site.name] = []

    def _add_link(
        self, a: str, b: str, latency_ms: float, bandwidth_gbps: float
    ) -> None:
        link = Link(a, b, latency_ms, bandwidth_gbps)
        self.links.append(link)
        self._neighbours[a].append((b, link))
        self._neighbours[b].append((a, link))

    def route(self, source: str, target: str) -> Route:
        """Return the lowest-latency route; raise ScenarioError if there is none."""
        key = (source, target)
        route = self._routes.get(key)
        if route is None:
            route = self._shortest(source, target)
            self._routes[key] = route
        return route

    def _shortest(self, source: str, target: str) -> Route:
        if source == target:
            return Route(source, target, (), 0.0, float("inf"))
        best: dict[str, tuple[float, int]] = {source: (0.0, 0)}
        previous: dict[str, tuple[str, Link]] = {}
        queue: list[tuple[float, int, str]] = [(0.0, 0, source)]
        while queue:
            latency, hops, site = heapq.heappop(queue)
            if site == target:
                break
            if (latency, hops) > best[site]:
                continue
            for neighbour, link in self._neighbours[site]:
                candidate = (latency + link.latency_s, hops + 1)
                if neighbour not in best or candidate < best[neighbour]:
                    best[neighbour] = candidate
                    previous[neighbour] = (site, link)
                    heapq.heappush(queue, (*candidate, neighbour))
        if target not in previous:
            raise ScenarioError(
                f"no route from site {source!r} to {target!r}; add a [[links]] entry "
                "that connects them"
            )

        links: list[Link] = []
        site = target
        while site != source:
            site, link = previous[site]
            links.append(link)
        links.reverse()
        return Route(
            source=source,
            target=target,
            links=tuple(links),
            rtt_s=sum(link.latency_s for link in links),
            bottleneck_bps=min(link.bandwidth_bps for link in links),
        )
