"""Bulk transfers over shared links.

Each active flow crosses every link of its route at once and gets, on each
link, an equal share of the bandwidth. Its rate is the smallest of those
shares. That is a lower bound on max-min fair sharing, and exact when all flows
of a link share one bottleneck. Rates change only when a flow starts or ends, so the
network needs one event per change, not one per packet. A flow completes when
its last byte is sent plus the route's round-trip time (the final
acknowledgement), so each link's latency counts once per transfer.

Real-time payloads (inference requests and responses) are assumed to have
priority over bulk flows, so they do not appear here: they take the route's
round-trip time plus their size at the bottleneck bandwidth.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from .topology import Route


class Flow:
    """One bulk transfer in progress."""

    __slots__ = ("route", "size", "remaining", "rate", "on_done")

    def __init__(self, route: Route, size: float, on_done: Callable[[], None]) -> None:
        self.route = route
        self.size = size
        self.remaining = size
        self.rate = 0.0
        self.on_done = on_done


class FlowNetwork:
    """The bulk flows of one run and the timer for the next flow to finish."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.flows: list[Flow] = []
        self.in_flight = 0  # flows sending bytes or waiting for their last ack
        self.bytes_sent = 0.0
        self._last = 0.0
        self._generation = 0

    def send(
        self, route: Route, size_bytes: float, on_done: Callable[[], None]
    ) -> None:
        """Start a transfer; ``on_done`` runs when the transfer has completed."""
        self.in_flight += 1
        if size_bytes <= 0 or not route.links:
            self._finish_after(route.rtt_s, on_done)
            return
        self._advance()
        flow = Flow(route, size_bytes, on_done)
        for link in route.links:
            link.flows += 1
        self.flows.append(flow)
        self._reschedule()

    def _finish_after(self, delay: float, on_done: Callable[[], None]) -> None:
        def complete(_: simpy.Event) -> None:
            self.in_flight -= 1
            on_done()

        self.env.timeout(delay).callbacks.append(complete)

    def _advance(self) -> None:
        now = self.env.now
        elapsed = now - self._last
        if elapsed > 0:
            for flow in self.flows:
                flow.remaining -= flow.rate * elapsed
        self._last = now

    def _reschedule(self) -> None:
        self._generation += 1
        if not self.flows:
            return
        next_finish = float("inf")
        for flow in self.flows:
            flow.rate = min(
                link.bandwidth_bps / link.flows for link in flow.route.links
            )
            next_finish = min(next_finish, flow.remaining / flow.rate)
        timer = self.env.timeout(max(next_finish, 0.0), self._generation)
        timer.callbacks.append(self._on_timer)

    def _on_timer(self, event: simpy.Event) -> None:
        if event.value != self._generation:
            return  # a flow started or ended since this timer was set
        self._advance()
        running = []
        for flow in self.flows:
            # Rounding leaves a few bytes at the computed finish time.
            if flow.remaining <= flow.size * 1e-9 + 1e-3:
                for link in flow.route.links:
                    link.flows -= 1
                self.bytes_sent += flow.size
                self._finish_after(flow.route.rtt_s, flow.on_done)
            else:
                running.append(flow)
        self.flows = running
        self._reschedule()
