"""Exported log segments: JSON lines a regulator can verify without the node.

A segment file is UTF-8 text with one RFC 8785 canonical JSON object per line, each
line ending in ``\\n``:

1. a header ``{"format":"citymesh-usage-segment","from_seq":F,"node":N,
   "to_seq":T,"type":"header","version":1}``;
2. one ``entry`` line for each sequence number F..T, in order. It has ``seq``,
   ``prev_hash``, ``event_hash`` and ``entry_hash`` (64 lowercase hex digits) and the
   ``event`` object (``UsageEvent.to_dict``). Entries of anchored batches also have a
   ``proof`` object with the batch's ``from_seq``, ``to_seq`` and the audit ``path``;
3. zero or more ``anchor`` lines with ``node``, ``root``, ``from_seq``, ``to_seq``,
   ``count``, ``block`` and ``tx``, copied from the chain when the segment was made.

Readers reject any line that is not byte-for-byte canonical, so every change to a
file either fails to load or changes a hashed value.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citymesh.errors import InvalidInput, NotFound

from .canonical import canonical_json
from .events import LogEntry, UsageEvent
from .proofs import EventProof

FORMAT = "citymesh-usage-segment"
VERSION = 1
MAX_PATH_LENGTH = 64  # an audit path of a tree with fewer than 2**64 leaves

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEADER_KEYS = {"type", "format", "version", "node", "from_seq", "to_seq"}
_ENTRY_KEYS = {"type", "seq", "prev_hash", "event_hash", "entry_hash", "event"}
_PROOF_KEYS = {"from_seq", "to_seq", "path"}
_ANCHOR_KEYS = {"type", "node", "root", "from_seq", "to_seq", "count", "block", "tx"}


@dataclass(frozen=True)
class AnchorRecord:
    """An anchor as a segment file stores it, with the fields of ``chain.Anchor``."""

    node: str
    root: bytes
    from_seq: int
    to_seq: int
    count: int
    block: int = 0
    tx: str = ""


@dataclass
class Segment:
    """A node's entries ``from_seq..to_seq`` with their proofs and anchors."""

    node: str
    from_seq: int
    to_seq: int
    entries: list[LogEntry] = field(default_factory=list)
    proofs: dict[int, EventProof] = field(default_factory=dict)
    anchors: list[AnchorRecord] = field(default_factory=list)


class SegmentError(InvalidInput):
    """A segment file line is malformed; ``seq`` is the entry it held, if known."""

    def __init__(self, message: str, *, line: int, seq: int | None) -> None:
        super().__init__(message)
        self.line = line
        self.seq = seq


def segment_lines(
    node: str,
    from_seq: int,
    to_seq: int,
    entries: Iterable[LogEntry],
    proofs: Mapping[int, EventProof],
    anchors: Iterable[Any],
) -> Iterator[bytes]:
    """Yield the segment's lines (each with its newline) in file order."""
    header = {
        "type": "header",
        "format": FORMAT,
        "version": VERSION,
        "node": node,
        "from_seq": from_seq,
        "to_seq": to_seq,
    }
    yield canonical_json(header) + b"\n"
    for entry in entries:
        line: dict[str, Any] = {
            "type": "entry",
            "seq": entry.seq,
            "prev_hash": entry.prev_hash.hex(),
            "event_hash": entry.event_hash.hex(),
            "entry_hash": entry.entry_hash.hex(),
            "event": entry.event.to_dict(),
        }
        proof = proofs.get(entry.seq)
        if proof is not None:
            line["proof"] = {
                "from_seq": proof.from_seq,
                "to_seq": proof.to_seq,
                "path": [sibling.hex() for sibling in proof.path],
            }
        yield canonical_json(line) + b"\n"
    for anchor in anchors:
        record = {
            "type": "anchor",
            "node": str(anchor.node),
            "root": bytes(anchor.root).hex(),
            "from_seq": anchor.from_seq,
            "to_seq": anchor.to_seq,
            "count": anchor.count,
            "block": getattr(anchor, "block", 0),
            "tx": getattr(anchor, "tx", ""),
        }
        yield canonical_json(record) + b"\n"


def write_segment(path: Path, lines: Iterable[bytes]) -> int:
    """Write lines to ``path`` atomically (temporary file, fsync, rename).

    Returns the number of lines written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    count = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for line in lines:
                handle.write(line)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return count


def load_segment(path: Path) -> Segment:
    """Read a segment file; raise SegmentError at its first malformed line."""
    segment, error = read_segment(path)
    if error is not None:
        raise error
    return segment


def read_segment(path: Path) -> tuple[Segment, SegmentError | None]:
    """Read a segment file up to its first malformed line.

    Returns what was read before that line and the error (None for a good file), so
    an audit can check the entries before the defect and name the first bad one.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"segment file {str(path)!r} not found")
    with path.open("rb") as handle:
        return _parse(handle, str(path))


def _parse(lines: Iterable[bytes], name: str) -> tuple[Segment, SegmentError | None]:
    segment = Segment(node="", from_seq=1, to_seq=0)
    header_seen = False
    next_seq = 1
    line_no = 0
    for line_no, raw in enumerate(lines, start=1):
        expected_seq = next_seq if header_seen and next_seq <= segment.to_seq else None
        try:
            record = _canonical_record(raw, name, line_no)
            kind = record.get("type")
            if not header_seen:
                _read_header(record, segment, name)
                header_seen = True
                next_seq = segment.from_seq
            elif kind == "entry" and next_seq <= segment.to_seq:
                entry, proof = _read_entry(record, next_seq, name, line_no)
                segment.entries.append(entry)
                if proof is not None:
                    segment.proofs[entry.seq] = proof
                next_seq += 1
            elif kind == "anchor" and next_seq > segment.to_seq:
                segment.anchors.append(_read_anchor(record, name, line_no))
            else:
                raise InvalidInput(
                    f"{name} line {line_no}: expected "
                    f"{_expected_line(next_seq, segment.to_seq)}, got a line of type "
                    f"{kind!r}"
                )
        except InvalidInput as exc:
            return segment, SegmentError(str(exc), line=line_no, seq=expected_seq)
    if not header_seen:
        return segment, SegmentError(
            f"{name} is empty; a segment starts with a header line", line=1, seq=None
        )
    if next_seq <= segment.to_seq:
        return segment, SegmentError(
            f"{name} ends before entry {next_seq}; the header promises entries "
            f"{segment.from_seq}..{segment.to_seq}",
            line=line_no + 1,
            seq=next_seq,
        )
    return segment, None


def _expected_line(next_seq: int, to_seq: int) -> str:
    if next_seq <= to_seq:
        return f"the entry line of seq {next_seq}"
    return "an anchor line or the end of the file"


def _canonical_record(raw: bytes, name: str, line_no: int) -> dict[str, Any]:
    if not raw.endswith(b"\n"):
        raise InvalidInput(f"{name} line {line_no} does not end with a newline")
    body = raw[:-1]
    try:
        record = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{name} line {line_no} is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise InvalidInput(f"{name} line {line_no} is not a JSON object")
    if canonical_json(record) != body:
        raise InvalidInput(
            f"{name} line {line_no} is not RFC 8785 canonical JSON; a segment line "
            f"must be exactly as exported"
        )
    return record


def _read_header(record: dict[str, Any], segment: Segment, name: str) -> None:
    if set(record) != _HEADER_KEYS or record["type"] != "header":
        raise InvalidInput(
            f"{name} line 1 must be a segment header with keys {sorted(_HEADER_KEYS)}"
        )
    if record["format"] != FORMAT or record["version"] != VERSION:
        raise InvalidInput(
            f"{name} has format {record['format']!r} version {record['version']!r}; "
            f"this reader reads {FORMAT!r} version {VERSION}"
        )
    if not isinstance(record["node"], str):
        raise InvalidInput(f"{name} header node must be a string")
    from_seq = _integer(record["from_seq"], "header from_seq", name, 1)
    to_seq = _integer(record["to_seq"], "header to_seq", name, 1)
    if from_seq < 1 or to_seq < from_seq - 1:
        raise InvalidInput(
            f"{name} header range {from_seq}..{to_seq} is invalid; from_seq must be "
            f"at least 1 and to_seq at least from_seq - 1"
        )
    segment.node = record["node"]
    segment.from_seq = from_seq
    segment.to_seq = to_seq


def _read_entry(
    record: dict[str, Any], seq: int, name: str, line_no: int
) -> tuple[LogEntry, EventProof | None]:
    keys = set(record)
    if keys not in (_ENTRY_KEYS, _ENTRY_KEYS | {"proof"}):
        raise InvalidInput(
            f"{name} line {line_no}: an entry line has keys {sorted(_ENTRY_KEYS)} and "
            f"optionally 'proof', got {sorted(keys)}"
        )
    if _integer(record["seq"], "seq", name, line_no) != seq:
        raise InvalidInput(
            f"{name} line {line_no}: expected seq {seq}, got {record['seq']!r}"
        )
    try:
        event = UsageEvent.from_dict(record["event"])
    except InvalidInput as exc:
        raise InvalidInput(f"{name} line {line_no}: {exc}") from exc
    entry = LogEntry(
        seq=seq,
        event=event,
        event_hash=_hash(record["event_hash"], "event_hash", name, line_no),
        prev_hash=_hash(record["prev_hash"], "prev_hash", name, line_no),
        entry_hash=_hash(record["entry_hash"], "entry_hash", name, line_no),
    )
    proof = None
    if "proof" in record:
        proof = _read_proof(record["proof"], seq, name, line_no)
    return entry, proof


def _read_proof(data: Any, seq: int, name: str, line_no: int) -> EventProof:
    if not isinstance(data, dict) or set(data) != _PROOF_KEYS:
        raise InvalidInput(
            f"{name} line {line_no}: a proof has keys {sorted(_PROOF_KEYS)}"
        )
    from_seq = _integer(data["from_seq"], "proof from_seq", name, line_no)
    to_seq = _integer(data["to_seq"], "proof to_seq", name, line_no)
    if not from_seq <= seq <= to_seq:
        raise InvalidInput(
            f"{name} line {line_no}: proof batch {from_seq}..{to_seq} does not "
            f"contain seq {seq}"
        )
    path = data["path"]
    if not isinstance(path, list) or len(path) > MAX_PATH_LENGTH:
        raise InvalidInput(
            f"{name} line {line_no}: proof path must be a list of at most "
            f"{MAX_PATH_LENGTH} hashes"
        )
    siblings = tuple(_hash(item, "proof path", name, line_no) for item in path)
    return EventProof(seq=seq, from_seq=from_seq, to_seq=to_seq, path=siblings)


def _read_anchor(record: dict[str, Any], name: str, line_no: int) -> AnchorRecord:
    if set(record) != _ANCHOR_KEYS:
        raise InvalidInput(
            f"{name} line {line_no}: an anchor line has keys {sorted(_ANCHOR_KEYS)}"
        )
    if not isinstance(record["node"], str) or not isinstance(record["tx"], str):
        raise InvalidInput(f"{name} line {line_no}: anchor node and tx are strings")
    return AnchorRecord(
        node=record["node"],
        root=_hash(record["root"], "anchor root", name, line_no),
        from_seq=_integer(record["from_seq"], "anchor from_seq", name, line_no),
        to_seq=_integer(record["to_seq"], "anchor to_seq", name, line_no),
        count=_integer(record["count"], "anchor count", name, line_no),
        block=_integer(record["block"], "anchor block", name, line_no),
        tx=record["tx"],
    )


def _integer(value: Any, what: str, name: str, line_no: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"{name} line {line_no}: {what} must be a non-negative integer, got "
            f"{value!r}"
        )
    return value


def _hash(value: Any, what: str, name: str, line_no: int) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InvalidInput(
            f"{name} line {line_no}: {what} must be 64 lowercase hex digits, got "
            f"{value!r}"
        )
    return bytes.fromhex(value)


def anchors_from_records(records: Sequence[Any]) -> list[AnchorRecord]:
    """Copy chain anchors (any objects with the anchor fields) into AnchorRecords."""
    return [
        AnchorRecord(
            node=str(a.node),
            root=bytes(a.root),
            from_seq=a.from_seq,
            to_seq=a.to_seq,
            count=a.count,
            block=getattr(a, "block", 0),
            tx=getattr(a, "tx", ""),
        )
        for a in records
    ]
