"""HTTP client of a node's API; signs requests when given a signer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pyarrow as pa

from citymesh.catalog.codes import UnknownCode
from citymesh.catalog.ingest import FileTooLarge
from citymesh.catalog.names import UnsafeName
from citymesh.catalog.readers import CorruptFile, EmptyFile, SchemaMismatch
from citymesh.catalog.store import DuplicateDataset
from citymesh.errors import (
    AuthError,
    ChainError,
    CitymeshError,
    InvalidInput,
    NotFound,
    PolicyViolation,
)
from citymesh.node.exchange import RECEIPT_DRAFT_HEADER, decode_draft
from citymesh.node.signing import SignedRequestAuth, Signer

DEFAULT_TIMEOUT_S = 30.0
UPLOAD_CHUNK = 1 << 20
ERROR_BY_STATUS: dict[int, type[CitymeshError]] = {
    400: InvalidInput,
    401: AuthError,
    403: PolicyViolation,
    404: NotFound,
    409: DuplicateDataset,
    413: FileTooLarge,
    502: ChainError,
}
ERROR_BY_NAME: dict[str, type[CitymeshError]] = {
    kind.__name__: kind
    for kind in (
        UnknownCode,
        UnsafeName,
        CorruptFile,
        EmptyFile,
        SchemaMismatch,
        FileTooLarge,
        DuplicateDataset,
        InvalidInput,
        NotFound,
        AuthError,
        PolicyViolation,
        ChainError,
    )
}


class NodeClient:
    """Client of one node; requests are signed when ``signer`` is given.

    ``operator_token`` authorizes the operator endpoints (ingest, anchor).
    Errors come back as the citymesh error class matching the HTTP status.
    """

    def __init__(
        self,
        base_url: str,
        signer: Signer | None = None,
        *,
        operator_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self.operator_token = operator_token
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        signed: bool = False,
        operator: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        if signed and self.signer is None:
            raise AuthError(f"{method} {path} needs a signed request: pass a signer")
        headers = kwargs.pop("headers", {})
        if operator:
            if not self.operator_token:
                raise AuthError(
                    f"{method} {path} needs the operator token: pass operator_token"
                )
            headers["Authorization"] = f"Bearer {self.operator_token}"
        auth = SignedRequestAuth(self.signer) if signed else None
        response = self.http.request(method, path, headers=headers, auth=auth, **kwargs)
        raise_for_error(response)
        return response

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return self._request("GET", "/health").json()

    def identity(self) -> dict[str, Any]:
        """GET /identity: city, account, Ed25519 public key, code list."""
        return self._request("GET", "/identity").json()

    def search(
        self,
        *,
        code: str | None = None,
        keyword: str | None = None,
        city: str | None = None,
        grade: str | None = None,
        tier: str | None = None,
        local_code: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """GET /catalog/search; signed when the client has a signer."""
        params = {
            "code": code,
            "q": keyword,
            "city": city,
            "grade": grade,
            "tier": tier,
            "local_code": local_code,
            "limit": limit,
            "offset": offset,
        }
        params = {key: value for key, value in params.items() if value is not None}
        return self._request(
            "GET", "/catalog/search", params=params, signed=self.signer is not None
        ).json()

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """GET /catalog/datasets/{id}; signed when the client has a signer."""
        return self._request(
            "GET", f"/catalog/datasets/{dataset_id}", signed=self.signer is not None
        ).json()

    def ingest(
        self,
        path: Path,
        *,
        name: str,
        code: str,
        grade: str = "general",
        tier: str = "raw",
        fmt: str | None = None,
        title: str = "",
        description: str = "",
        keywords: list[str] | None = None,
        parents: list[str] | None = None,
        transform: str = "",
        local_code: str | None = None,
        schema: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST /catalog/ingest: upload a local file (operator token needed)."""
        from citymesh.catalog.readers import detect_format

        path = Path(path)
        params = {
            "name": name,
            "code": code,
            "grade": grade,
            "tier": tier,
            "format": detect_format(path, fmt),
            "title": title,
            "description": description,
            "keywords": ",".join(keywords or []),
            "parents": ",".join(parents or []),
            "transform": transform,
        }
        if local_code:
            params["local_code"] = local_code
        if schema:
            params["schema"] = json.dumps(schema)
        headers = {
            "Content-Length": str(path.stat().st_size),
            "Content-Type": "application/octet-stream",
        }
        return self._request(
            "POST",
            "/catalog/ingest",
            operator=True,
            params=params,
            headers=headers,
            content=_file_chunks(path),
        ).json()

    def events(self, from_seq: int = 1, to_seq: int | None = None) -> list[dict]:
        """GET /ledger/events (signed): the node's usage log entries as JSON."""
        params = {"from_seq": from_seq}
        if to_seq is not None:
            params["to_seq"] = to_seq
        return self._request(
            "GET", "/ledger/events", params=params, signed=True
        ).json()["entries"]

    def segment(self, from_seq: int = 1, to_seq: int | None = None) -> bytes:
        """GET /ledger/segment (signed by a regulator or hub): the log as a segment."""
        params = {"from_seq": from_seq}
        if to_seq is not None:
            params["to_seq"] = to_seq
        return self._request(
            "GET", "/ledger/segment", params=params, signed=True
        ).content

    def anchor(self, max_events: int | None = None) -> dict[str, Any]:
        """POST /ledger/anchor (operator token): anchor pending usage events."""
        params = {} if max_events is None else {"max_events": max_events}
        return self._request(
            "POST", "/ledger/anchor", operator=True, params=params
        ).json()

    def set_policy(self, dataset_id: str, policy: dict[str, Any]) -> dict[str, Any]:
        """PUT /catalog/datasets/{id}/policy (operator token)."""
        return self._request(
            "PUT",
            f"/catalog/datasets/{dataset_id}/policy",
            operator=True,
            json=policy,
        ).json()

    def approve(
        self,
        dataset_id: str,
        consumer: str,
        purpose: str,
        expires_at: float | None = None,
    ) -> dict[str, Any]:
        """POST /exchange/approvals (operator token): allow one consumer's extracts."""
        body = {
            "dataset_id": dataset_id,
            "consumer": consumer,
            "purpose": purpose,
            "expires_at": expires_at,
        }
        return self._request(
            "POST", "/exchange/approvals", operator=True, json=body
        ).json()

    def approvals(self) -> list[dict[str, Any]]:
        """GET /exchange/approvals (operator token)."""
        return self._request("GET", "/exchange/approvals", operator=True).json()[
            "approvals"
        ]

    def revoke_approval(self, approval_id: str) -> dict[str, Any]:
        """DELETE /exchange/approvals/{id} (operator token)."""
        return self._request(
            "DELETE", f"/exchange/approvals/{approval_id}", operator=True
        ).json()

    def extract(
        self,
        dataset_id: str,
        *,
        purpose: str,
        columns: list[str] | None = None,
        row_filter: list[list[Any]] | None = None,
        confirm: bool = True,
        compression: str = "lz4",
    ) -> ExtractResult:
        """Request an extract, read the Arrow IPC stream and sign the receipt.

        ``row_filter`` is a list of [column, operator, value] conditions, all of
        which must hold. With ``confirm`` the client checks the provider's
        receipt against the rows, bytes and SHA-256 it received, then signs it.
        """
        if self.signer is None:
            raise AuthError("an extract needs a signed request: pass a signer")
        body = json.dumps(
            {
                "dataset_id": dataset_id,
                "purpose": purpose,
                "columns": columns,
                "filter": row_filter or [],
                "compression": compression,
            }
        ).encode()
        with self.http.stream(
            "POST",
            "/exchange/extract",
            content=body,
            headers={"Content-Type": "application/json"},
            auth=SignedRequestAuth(self.signer),
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise_for_error(response)
            exchange_id = response.headers["X-Citymesh-Exchange-Id"]
            draft_header = response.headers.get(RECEIPT_DRAFT_HEADER)
            draft = decode_draft(draft_header) if draft_header else None
            # Collecting the stream in one buffer lets Arrow read the batches
            # without copying them; the table then lives in that buffer.
            received = bytearray()
            digest = hashlib.sha256()
            try:
                for chunk in response.iter_raw():
                    digest.update(chunk)
                    received.extend(chunk)
                table = pa.ipc.open_stream(pa.py_buffer(received)).read_all()
            except (httpx.TransportError, pa.ArrowException, OSError) as error:
                raise CitymeshError(
                    f"the extract stream of {dataset_id!r} (exchange {exchange_id}) "
                    f"broke off after {len(received)} bytes: {error}; the receipt "
                    "was not signed, so request the extract again"
                ) from None
        result = ExtractResult(
            table, exchange_id, len(received), digest.hexdigest(), None, draft
        )
        if confirm:
            result.receipt = self.confirm_receipt(result)
        return result

    def confirm_receipt(self, result: ExtractResult) -> dict[str, Any]:
        """Check the provider's receipt of an extract, sign it and send it back.

        With the draft from the extract's response header, the client fills
        in the rows, bytes and SHA-256 it received and signs that event. The
        provider accepts the signature only if its own event is the same.
        Without a draft, it fetches the provider's event and compares first.
        """
        from citymesh.ledger.events import UsageEvent, signing_payload

        path = f"/exchange/{result.exchange_id}/receipt"
        if result.draft is not None:
            completed = {
                **result.draft,
                "rows": result.table.num_rows,
                "bytes": result.size,
                "detail": {**result.draft["detail"], "sha256": result.sha256},
            }
            event = UsageEvent.from_dict(completed)
            if event.detail.get("exchange_id") != result.exchange_id:
                raise CitymeshError(
                    f"the receipt draft of exchange {result.exchange_id!r} names "
                    f"exchange {event.detail.get('exchange_id')!r}; it was not signed"
                )
        else:
            event = UsageEvent.from_dict(self._request("GET", path, signed=True).json())
            expected = (result.table.num_rows, result.size, result.sha256)
            stated = (event.rows, event.bytes, event.detail.get("sha256"))
            if stated != expected:
                raise CitymeshError(
                    f"receipt of exchange {result.exchange_id!r} states rows, bytes "
                    f"and sha256 {stated!r} but the client received {expected!r}; "
                    "the receipt was not signed"
                )
        signature = self.signer.sign(signing_payload(event)).hex()
        return self._request(
            "POST", path, signed=True, json={"signature": signature}
        ).json()


@dataclass
class ExtractResult:
    """An extract as received: rows, exchange id, stream size and digest, receipt."""

    table: pa.Table
    exchange_id: str
    size: int
    sha256: str
    receipt: dict[str, Any] | None
    draft: dict[str, Any] | None = None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK):
            yield chunk


def raise_for_error(response: httpx.Response) -> None:
    """Raise the citymesh error named in an error response, else by HTTP status."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail", response.text)
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    kind = ERROR_BY_NAME.get(str(body.get("error")))
    if kind is None:
        kind = ERROR_BY_STATUS.get(response.status_code, CitymeshError)
    raise kind(
        f"{response.request.method} {response.request.url.path} failed "
        f"with HTTP {response.status_code}: {detail}"
    )
