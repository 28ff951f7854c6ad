"""The node's HTTP API (FastAPI).

Endpoints and their authentication:

- GET  /health                 none
- GET  /identity               none
- GET  /catalog/search         none, or signed (required when
                               require_signed_catalog is set)
- GET  /catalog/datasets/{id}  same as search
- GET  /catalog/federated      same as search; searches the peers with this
                               node's signature and names the caller to them
- GET  /catalog/dcat           none; DCAT-AP 3 JSON-LD of the catalog
- GET  /catalog/datasets/{id}/lineage   none
- POST /catalog/ingest         operator token; the body is the file
- GET  /ledger/events          signed by a registered, active node
- GET  /ledger/segment         signed by a regulator or hub; the log as a segment
                               file with inclusion proofs and the chain's anchors
- POST /ledger/anchor          operator token
- PUT  /catalog/datasets/{id}/policy   operator token
- POST /exchange/extract       signed by a city node or hub; streams Arrow IPC
- GET  /exchange/{id}/receipt  signed by the extract's consumer
- POST /exchange/{id}/receipt  signed by the extract's consumer
- GET, POST /exchange/approvals, DELETE /exchange/approvals/{id}
                               operator token
"""

# No "from __future__ import annotations" here: FastAPI reads the Annotated
# dependencies when a route is declared, and the dependency functions they
# name are closures inside create_app, which string annotations cannot reach.

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from citymesh.catalog.codes import shared_codes
from citymesh.catalog.dcat import export_dcat
from citymesh.catalog.ingest import FileTooLarge
from citymesh.catalog.lineage import lineage
from citymesh.catalog.policy import ExtractRequest
from citymesh.catalog.readers import FORMATS
from citymesh.catalog.store import DuplicateDataset, SearchQuery
from citymesh.errors import (
    AuthError,
    ChainError,
    CitymeshError,
    InvalidInput,
    NotFound,
    PolicyViolation,
)
from citymesh.node.context import NodeContext
from citymesh.node.exchange import (
    ARROW_STREAM_MEDIA_TYPE,
    RECEIPT_DRAFT_HEADER,
    encode_draft,
)
from citymesh.node.federated import DEFAULT_DEADLINE_S, federated_search_async
from citymesh.node.settings import NodeSettings
from citymesh.node.signing import (
    NODE_ACCOUNT_HEADER,
    SIGNED_HEADERS,
    RequestTooLarge,
    SignerInfo,
    SignerResolver,
    WrongTarget,
)
from citymesh.node.usage import ANONYMOUS

log = logging.getLogger("citymesh.node")

AUDIT_ROLES = (2, 3)  # hub and regulator, as in the on-chain node registry
SEGMENT_MEDIA_TYPE = "application/x-ndjson"

UPLOAD_FOLDER = ".incoming"
EXCHANGE_HEADER = "X-Citymesh-Exchange-Id"
ROLE_CITY_NODE = 1
ROLE_HUB = 2
STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (FileTooLarge, 413),
    (RequestTooLarge, 413),
    (DuplicateDataset, 409),
    (InvalidInput, 400),
    (NotFound, 404),
    (AuthError, 401),
    (PolicyViolation, 403),
    (ChainError, 502),
]


def error_status(error: Exception) -> int:
    """Return the HTTP status for a citymesh error (500 for unexpected ones)."""
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def request_target(request: Request) -> bytes:
    """Return the raw path plus '?' and raw query, as the client signed it."""
    path = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    query = request.scope.get("query_string") or b""
    return path + b"?" + query if query else path


def create_app(
    settings: NodeSettings,
    *,
    resolve_signer: SignerResolver | None = None,
    usage_log: Any = None,
) -> FastAPI:
    """Build the node's FastAPI app from its settings.

    ``resolve_signer(account) -> (pubkey, role, active)`` looks up signers; the
    default reads the on-chain node registry. ``usage_log`` replaces the
    UsageLog at usage.db in the node home.
    """
    context = NodeContext(settings, resolve_signer=resolve_signer, usage_log=usage_log)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("node %s started, account %s", settings.city, context.identity.account)
        context.start_anchoring()
        yield
        # Receipts still within their timeout stay pending across a restart.
        context.exchange.sweep()
        context.close()
        log.info("node %s stopped", settings.city)

    app = FastAPI(title=f"citymesh node {settings.city}", lifespan=lifespan)
    app.state.context = context

    @app.exception_handler(CitymeshError)
    async def on_citymesh_error(
        _request: Request, error: CitymeshError
    ) -> JSONResponse:
        status = error_status(error)
        if status >= 500:
            log.error("request failed: %s", error)
        headers = None
        if isinstance(error, WrongTarget):
            headers = {NODE_ACCOUNT_HEADER: context.identity.account}
        return JSONResponse(
            {"error": type(error).__name__, "detail": str(error)},
            status_code=status,
            headers=headers,
        )

    async def signed(request: Request) -> SignerInfo:
        # The headers are checked before the body is read, so an unsigned or
        # stale request, or one from an unknown signer, costs no body memory.
        method = request.method
        target = request_target(request)
        checked = await run_in_threadpool(
            context.verifier.check_headers, method, target, dict(request.headers)
        )
        try:
            body = await _read_body(request, settings.max_request_bytes)
        except RequestTooLarge:
            context.verifier.rejections.record(
                checked.account, "request too large", f"{method} {request.url.path}"
            )
            raise
        return await run_in_threadpool(
            context.verifier.check_body, checked, method, target, body
        )

    async def maybe_signed(request: Request) -> str:
        present = any(name in request.headers for name in SIGNED_HEADERS)
        if present or settings.require_signed_catalog:
            return (await signed(request)).account
        return ANONYMOUS

    async def operator(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        context.check_operator(token.strip() if scheme.lower() == "bearer" else None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        count = await run_in_threadpool(context.store.count)
        head = await run_in_threadpool(context.usage.head)
        return {
            "status": "ok",
            "city": settings.city,
            "datasets": count,
            "usage_head": head,
        }

    @app.get("/identity")
    async def identity() -> JSONResponse:
        return JSONResponse(
            context.identity_info(),
            headers={NODE_ACCOUNT_HEADER: context.identity.account},
        )

    @app.get("/catalog/search")
    async def search(
        consumer: Annotated[str, Depends(maybe_signed)],
        code: str | None = Query(None, description="Code prefix, e.g. 04.5"),
        q: str | None = Query(None, description="Keywords, all must match"),
        city: str | None = None,
        grade: str | None = None,
        tier: str | None = None,
        local_code: str | None = None,
        limit: int = 50,
        offset: int = 0,
        on_behalf_of: str | None = Query(
            None,
            description="Account of the original caller, set by a node that "
            "forwards a federated search; needs a signed request.",
        ),
    ) -> dict[str, Any]:
        if on_behalf_of is not None and consumer == ANONYMOUS:
            raise InvalidInput(
                "on_behalf_of needs a signed request: only a node that forwards "
                "a federated search may name the original caller"
            )
        query = SearchQuery(
            code_prefix=code,
            keyword=q,
            city=city,
            grade=grade,
            tier=tier,
            local_code=local_code,
            limit=limit,
            offset=offset,
        )
        page = await run_in_threadpool(context.search, query, consumer, on_behalf_of)
        return {**page.public(), "code_list": shared_codes().info()}

    @app.get("/catalog/federated")
    async def federated(
        consumer: Annotated[str, Depends(maybe_signed)],
        code: str | None = None,
        q: str | None = None,
        city: str | None = None,
        grade: str | None = None,
        tier: str | None = None,
        limit: int = 50,
        offset: int = 0,
        deadline_s: float = Query(DEFAULT_DEADLINE_S, gt=0, le=30),
    ) -> dict[str, Any]:
        peers = await run_in_threadpool(context.peer_urls)
        result = await federated_search_async(
            peers,
            code=code,
            keyword=q,
            city=city,
            grade=grade,
            tier=tier,
            limit=limit,
            offset=offset,
            deadline_s=deadline_s,
            signer=context.identity,
            on_behalf_of=consumer,
        )
        return result.to_json()

    @app.get("/catalog/dcat")
    async def dcat() -> dict[str, Any]:
        entries = await run_in_threadpool(context.store.all)
        return export_dcat(entries, city=settings.city, base_url=settings.endpoint)

    @app.get("/catalog/datasets/{dataset_id}/lineage")
    async def dataset_lineage(dataset_id: str) -> dict[str, Any]:
        graph = await run_in_threadpool(lineage, context.store, dataset_id)
        return graph.to_json()

    @app.get("/catalog/datasets/{dataset_id}")
    async def dataset(
        dataset_id: str, consumer: Annotated[str, Depends(maybe_signed)]
    ) -> dict[str, Any]:
        entry = await run_in_threadpool(context.dataset, dataset_id, consumer)
        return entry.public()

    @app.post("/catalog/ingest", dependencies=[Depends(operator)])
    async def ingest(
        request: Request,
        name: str,
        code: str,
        format: str,
        grade: str = "general",
        tier: str = "raw",
        title: str = "",
        description: str = "",
        keywords: str = "",
        parents: str = "",
        transform: str = "",
        local_code: str | None = None,
        schema: str | None = Query(None, description='JSON {"column": "type"}'),
    ) -> JSONResponse:
        if format not in FORMATS:
            raise InvalidInput(
                f"unknown source format {format!r}: use one of {', '.join(FORMATS)}"
            )
        declared = _parse_schema_param(schema)
        upload = await _receive_upload(request, settings, format)
        try:
            entry = await run_in_threadpool(
                context.ingest,
                upload,
                name=name,
                code=code,
                grade=grade,
                tier=tier,
                title=title,
                description=description,
                keywords=[word for word in keywords.split(",") if word.strip()],
                parents=[parent for parent in parents.split(",") if parent.strip()],
                transform=transform,
                local_code=local_code,
                fmt=format,
                schema=declared,
            )
        finally:
            upload.unlink(missing_ok=True)
        return JSONResponse(entry.public(), status_code=201)

    @app.get("/ledger/events")
    async def events(
        signer: Annotated[SignerInfo, Depends(signed)],
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> dict[str, Any]:
        entries = await run_in_threadpool(context.usage.log.entries, from_seq, to_seq)
        log.info("sent %d usage entries to %s", len(entries), signer.account)
        return {"city": settings.city, "entries": [to_jsonable(e) for e in entries]}

    @app.get("/ledger/segment")
    async def segment(
        signer: Annotated[SignerInfo, Depends(signed)],
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> Response:
        if signer.role not in AUDIT_ROLES:
            raise PolicyViolation(
                f"signer {signer.account!r} has role {signer.role!r}; log segments "
                "go only to a regulator (3) or the hub (2)"
            )
        body = await run_in_threadpool(context.segment, from_seq, to_seq)
        log.info("sent usage log segment to %s", signer.account)
        return Response(body, media_type=SEGMENT_MEDIA_TYPE)

    @app.post("/ledger/anchor", dependencies=[Depends(operator)])
    async def anchor(max_events: int | None = None) -> dict[str, Any]:
        batches = await run_in_threadpool(context.anchor, max_events)
        head = await run_in_threadpool(context.usage.head)
        return {"batches": to_jsonable(batches), "head": head}

    @app.put("/catalog/datasets/{dataset_id}/policy", dependencies=[Depends(operator)])
    async def set_policy(dataset_id: str, request: Request) -> dict[str, Any]:
        policy = await _json_object(request)
        entry = await run_in_threadpool(context.set_policy, dataset_id, policy)
        return entry.public()

    @app.post("/exchange/extract")
    async def extract(
        request: Request, signer: Annotated[SignerInfo, Depends(signed)]
    ) -> StreamingResponse:
        if signer.role not in (ROLE_CITY_NODE, ROLE_HUB):
            raise AuthError(
                f"signer {signer.account!r} has role {signer.role}: only city nodes "
                "and hubs may request extracts"
            )
        body = ExtractRequest.from_json(await _json_object(request))
        opened = await run_in_threadpool(context.exchange.open_extract, body, signer)
        headers = {EXCHANGE_HEADER: opened.exchange_id}
        draft = encode_draft(opened.draft)
        if draft is not None:
            headers[RECEIPT_DRAFT_HEADER] = draft
        if opened.size is not None:
            # A known length spares both sides the chunked framing.
            headers["Content-Length"] = str(opened.size)
        return ClosingStreamingResponse(
            opened.chunks,
            media_type=ARROW_STREAM_MEDIA_TYPE,
            headers=headers,
        )

    @app.get("/exchange/{exchange_id}/receipt")
    async def receipt(
        exchange_id: str, signer: Annotated[SignerInfo, Depends(signed)]
    ) -> dict[str, Any]:
        return context.exchange.receipt(exchange_id, signer)

    @app.post("/exchange/{exchange_id}/receipt")
    async def confirm(
        exchange_id: str,
        request: Request,
        signer: Annotated[SignerInfo, Depends(signed)],
    ) -> dict[str, Any]:
        body = await _json_object(request)
        signature = body.get("signature")
        if not isinstance(signature, str):
            raise InvalidInput(
                f"invalid receipt {body!r}: send {{'signature': <hex Ed25519>}}"
            )
        entry = await run_in_threadpool(
            context.exchange.confirm, exchange_id, signer, signature
        )
        return to_jsonable(entry)

    @app.get("/exchange/approvals", dependencies=[Depends(operator)])
    async def approvals() -> dict[str, Any]:
        items = await run_in_threadpool(context.approvals.all)
        return {"approvals": [item.model_dump() for item in items]}

    @app.post("/exchange/approvals", dependencies=[Depends(operator)])
    async def approve(request: Request) -> JSONResponse:
        body = await _json_object(request)
        approval = await run_in_threadpool(
            context.approve,
            str(body.get("dataset_id", "")),
            str(body.get("consumer", "")),
            str(body.get("purpose", "")),
            body.get("expires_at"),
        )
        return JSONResponse(approval.model_dump(), status_code=201)

    @app.delete("/exchange/approvals/{approval_id}", dependencies=[Depends(operator)])
    async def revoke_approval(approval_id: str) -> dict[str, Any]:
        approval = await run_in_threadpool(context.revoke_approval, approval_id)
        return approval.model_dump()

    return app


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that closes its chunk generator when it ends.

    Starlette (1.3) stops pulling chunks when the client goes away but leaves
    the generator open until garbage collection. Closing it here runs the
    generator's cleanup at once, so an extract cut off mid-stream reaches the
    usage log before the response finishes.
    """

    def __init__(self, chunks: Iterator[bytes], **options: Any) -> None:
        self._chunks = chunks
        super().__init__(chunks, **options)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded, so a cancelled response still closes the generator.
            # Worker threads finish their chunk before a cancellation lands,
            # so the generator is not running here.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._chunks.close)


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body of a signed request, raising RequestTooLarge past ``limit``.

    The body is kept on the request, so ``request.body()`` returns it later.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(
            f"request body of {declared} bytes is over the limit of {limit} "
            "bytes for signed requests; send less or raise the node's "
            "max_request_bytes"
        )
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise RequestTooLarge(
                f"request body is over the limit of {limit} bytes for signed "
                "requests; send less or raise the node's max_request_bytes"
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's Request.body() (1.3.1) returns _body when it is set, and the
    # stream cannot be read twice.
    request._body = body
    return body


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as error:
        raise InvalidInput(f"invalid JSON body: {error}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"invalid JSON body {value!r}: send a JSON object")
    return value


async def _receive_upload(request: Request, settings: NodeSettings, fmt: str) -> Path:
    """Stream the request body into the data folder's upload area, within the limit."""
    limit = settings.max_ingest_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FileTooLarge(
            f"upload of {declared} bytes is over the limit of {limit} bytes: split "
            "the file or raise the node's max_ingest_bytes"
        )
    folder = settings.data_dir / UPLOAD_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.{fmt}"
    received = 0
    try:
        async with await anyio.open_file(path, "wb") as handle:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise FileTooLarge(
                        f"upload is over the limit of {limit} bytes: split the "
                        "file or raise the node's max_ingest_bytes"
                    )
                await handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _parse_schema_param(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f'invalid schema {text!r}: {error}; send JSON like {{"column": "int64"}}'
        ) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"invalid schema {text!r}: send a JSON object")
    return value


def to_jsonable(value: Any) -> Any:
    """Convert a value to JSON-ready form.

    Objects with ``to_dict`` (usage events) use it, dataclasses become dicts,
    bytes become lower-case hex without a prefix.
    """
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return value
