"""Grid views for the ServerApp: job members only, and fast reply polling."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from .inprocess import InProcessGrid

# Seconds between two requests for replies in a deployment. Flower 1.42's
# deployment grid waits 3 s between them (superlink/grid/http_grid.py).
REPLY_POLL_S = 0.2


class MemberGrid(Grid):
    """Delegate to ``grid``, but list only the member nodes and poll replies fast.

    Flower's strategies sample from ``get_node_ids``, so hiding the other nodes
    keeps every message of the job within its member cities. ``members`` None
    lists every node.

    ``send_and_receive`` pushes the messages and pulls replies every
    ``REPLY_POLL_S`` seconds through the public ``push_messages`` and
    ``pull_messages`` calls, until all replies arrived or ``timeout`` passed, as
    Flower's grid does with its 3 s interval. An ``InProcessGrid`` or another
    ``MemberGrid`` below does its own waiting and gets the call as it is.
    """

    def __init__(
        self,
        grid: Grid,
        members: set[int] | None = None,
        poll_interval_s: float = REPLY_POLL_S,
    ) -> None:
        self.grid = grid
        self.members = None if members is None else set(members)
        self.poll_interval_s = poll_interval_s

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        node_ids = list(self.grid.get_node_ids())
        if self.members is None:
            return node_ids
        return [n for n in node_ids if n in self.members]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        if isinstance(self.grid, InProcessGrid | MemberGrid):
            return self.grid.send_and_receive(messages, timeout=timeout)
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            received = list(self.grid.pull_messages(waiting))
            replies.extend(received)
            waiting -= {reply.metadata.reply_to_message_id for reply in received}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval_s)
        return replies
