"""Kill -9 while appending: every acknowledged event survives, the chain stays whole."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from citymesh.ledger.log import UsageLog

WRITER = textwrap.dedent(
    """
    import random, sys
    from citymesh.ledger.events import UsageEvent
    from citymesh.ledger.log import UsageLog

    log = UsageLog(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))
    while True:
        size = rng.choice([1, 1, 1, 5, 50])
        events = [
            UsageEvent("query", "ds", "bcn", "mad", "research", rows=i, time=1.0)
            for i in range(size)
        ]
        entries = log.append_many(events)
        # Printed only after append_many returned, so it names acknowledged seqs.
        print(entries[-1].seq, flush=True)
    """
)


def test_log_kill9_keeps_acknowledged_events(tmp_path):
    path = tmp_path / "usage.db"
    rng = random.Random(7)
    acknowledged = 0
    for round_number in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(round_number)],
            stdout=subprocess.PIPE,
            text=True,
        )
        first = writer.stdout.readline()
        assert first.strip().isdigit(), f"writer failed to start: {first!r}"
        acknowledged = int(first)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        for line in writer.stdout:
            acknowledged = int(line)
        writer.wait(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        with UsageLog(path) as log:
            head = log.head()
            assert head >= acknowledged
            assert len(log.verified_entry_hashes(1, head)) == head
