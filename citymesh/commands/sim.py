"""``citymesh sim``: the hub-and-edge simulation from network-sim/."""

from citymesh.netsim.cli import app

__all__ = ["app"]
