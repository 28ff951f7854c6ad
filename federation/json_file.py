"""A JSON file of records, changed under an exclusive lock and replaced atomically."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockedJsonFile:
    """A JSON object in ``path`` that processes on one machine change in turn.

    ``locked()`` holds an exclusive ``flock`` on ``<path>.lock``, yields the object and
    writes it back through a temporary file and a rename, so a reader sees the old or
    the new content, never a partial write.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict]:
        """Return the stored object, or an empty one when the file does not exist."""
        if not self.path.exists():
            return {}
        return dict(json.loads(self.path.read_text() or "{}"))

    @contextmanager
    def locked(self) -> Iterator[dict[str, dict]]:
        """Yield the object under the lock and store it when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(self.path.suffix + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            temporary = self.path.with_suffix(self.path.suffix + ".tmp")
            temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
            temporary.replace(self.path)
