"""The node's working parts, shared by the HTTP app and local commands."""

from __future__ import annotations

import hmac
import logging
import threading
from pathlib import Path
from typing import Any

from citymesh.catalog.ingest import ingest_file
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.store import CatalogStore, SearchPage, SearchQuery
from citymesh.errors import AuthError, CitymeshError, InvalidInput
from citymesh.node.approvals import ApprovalStore
from citymesh.node.identity import (
    NodeIdentity,
    load_operator_token,
    load_or_create_deid_secret,
)
from citymesh.node.registry import (
    chain_resolver,
    file_resolver,
    open_chain_client,
)
from citymesh.node.settings import NodeSettings
from citymesh.node.signing import (
    RequestVerifier,
    SignerResolver,
    reject_all_resolver,
)
from citymesh.node.usage import OPERATOR, UsageRecorder

log = logging.getLogger("citymesh.node")


class NodeContext:
    """Settings, identity, catalog store, usage log and request verifier of a node.

    ``resolve_signer`` defaults to the on-chain node registry when the settings
    name a chain and a deployment, else to the settings' signers file, and
    otherwise rejects every signer.
    ``usage_log`` defaults to the UsageLog at ``usage.db`` in the node home.
    """

    def __init__(
        self,
        settings: NodeSettings,
        *,
        resolve_signer: SignerResolver | None = None,
        usage_log: Any = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = NodeIdentity.load(settings.keys_dir)
        self.operator_token = load_operator_token(settings.keys_dir)
        self.secret = load_or_create_deid_secret(settings.keys_dir)
        self.store = CatalogStore(settings.database)
        self.approvals = ApprovalStore(self.store.engine, self.store.write_engine)
        self.usage = UsageRecorder(
            usage_log if usage_log is not None else settings.usage_path, settings.city
        )
        self._chain = None
        self._anchor_lock = threading.Lock()
        self._anchor_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.mapping = None
        if settings.code_map_path.is_file():
            from citymesh.catalog.mapping import load_mapping

            self.mapping = load_mapping(settings.code_map_path)
        if resolve_signer is None:
            resolve_signer = self._default_resolver()
        self.verifier = RequestVerifier(
            resolve_signer,
            window_s=settings.signature_window_s,
            cache_s=settings.signer_cache_s,
            negative_cache_s=settings.signer_negative_cache_s,
            cache_max=settings.signer_cache_max,
            node_account=self.identity.account,
            nonce_path=settings.nonce_path,
        )
        from citymesh.node.exchange import ExchangeService

        self.exchange = ExchangeService(self)

    def _default_resolver(self) -> SignerResolver:
        if self.settings.chain_url and self.settings.deployment_path:
            return chain_resolver(self.chain())
        if self.settings.signers_file is not None:
            return file_resolver(self.settings.signers_file)
        log.warning(
            "node %s has no chain configured: every signed request is rejected",
            self.settings.city,
        )
        return reject_all_resolver

    def chain(self):
        """Return a ChainClient that signs with this node's account key."""
        if self._chain is None:
            if not (self.settings.chain_url and self.settings.deployment_path):
                raise InvalidInput(
                    "this node has no chain configured: set chain_url and "
                    "deployment_path in node.toml"
                )
            self._chain = open_chain_client(
                self.settings.chain_url,
                self.settings.deployment_path,
                self.identity.account_key,
            )
        return self._chain

    def close(self) -> None:
        """Stop background anchoring and release database connections."""
        self._stop.set()
        if self._anchor_thread is not None:
            self._anchor_thread.join(timeout=30)
        self.exchange.prepared.wait_idle(timeout_s=30)
        self.verifier.close()
        self.store.close()

    def check_operator(self, token: str | None) -> None:
        """Raise AuthError unless ``token`` equals the node's operator token."""
        if not token or not hmac.compare_digest(
            token.encode("utf-8"), self.operator_token.encode("utf-8")
        ):
            raise AuthError(
                "operator token missing or wrong: send 'Authorization: Bearer "
                "<token>' with the token from keys/operator.token in the node home"
            )

    def identity_info(self) -> dict[str, Any]:
        """Return the public identity of the node."""
        from citymesh.catalog.codes import shared_codes

        return {
            "city": self.settings.city,
            "account": self.identity.account,
            "pubkey": self.identity.public_key.hex(),
            "endpoint": self.settings.endpoint,
            "role": self.settings.role,
            "code_list": shared_codes().info(),
        }

    def ingest(
        self, source: Path, *, consumer: str = OPERATOR, **options: Any
    ) -> DatasetEntry:
        """Ingest ``source`` into this node's catalog and log an ingest event.

        ``options`` are the keyword arguments of citymesh.catalog.ingest_file
        (name, code, grade, tier, title, ...); city, data folder, store and size
        limit come from the settings.
        """
        options.setdefault("max_bytes", self.settings.max_ingest_bytes)
        code = options.get("code")
        if self.mapping is not None and code in self.mapping.resolved:
            options["local_code"] = code
            options["code"] = self.mapping.to_shared(code)
        entry = ingest_file(
            source,
            data_dir=self.settings.data_dir,
            store=self.store,
            city=self.settings.city,
            **options,
        )
        self.usage.record(
            "ingest",
            entry.id,
            consumer,
            "ingest",
            rows=entry.rows,
            size=entry.bytes,
            detail={"code": entry.code, "grade": entry.grade, "sha256": entry.sha256},
        )
        self._prepare(entry)
        return entry

    def _prepare(self, entry: DatasetEntry) -> None:
        """Prepare the whole-dataset extract; a failure leaves extracts working."""
        try:
            self.exchange.prepare(entry)
        except Exception as error:  # the extract is then encoded on request
            log.warning("could not prepare the extract of %s: %s", entry.id, error)

    def search(
        self, query: SearchQuery, consumer: str, on_behalf_of: str | None = None
    ) -> SearchPage:
        """Search the catalog; log a query event when the page is not empty.

        A local code given as the code prefix is translated to its shared code.
        ``on_behalf_of`` is the original caller of a federated search that the
        signed ``consumer`` forwards; the event detail records it.
        """
        if self.mapping is not None and query.code_prefix in self.mapping.resolved:
            query.code_prefix = self.mapping.to_shared(query.code_prefix)
        page = self.store.search(query)
        if page.items:
            self.usage.record(
                "query",
                ",".join(item.id for item in page.items),
                consumer,
                "catalog-search",
                detail=_search_detail(query, page, on_behalf_of),
            )
        return page

    def dataset(self, dataset_id: str, consumer: str) -> DatasetEntry:
        """Return one catalog entry and log a query event."""
        entry = self.store.get(dataset_id)
        self.usage.record(
            "query", entry.id, consumer, "catalog-read", detail={"returned": 1}
        )
        return entry

    def set_policy(self, dataset_id: str, policy: dict[str, Any]) -> DatasetEntry:
        """Check and store a dataset's policy (purposes, cities, deid, k)."""
        from citymesh.catalog.policy import check_policy

        entry = self.store.get(dataset_id)
        check_policy(policy, entry.columns)
        entry = self.store.update_policy(dataset_id, policy)
        self.usage.record(
            "policy", entry.id, OPERATOR, "policy-change", detail={"policy": policy}
        )
        self.exchange.prepared.drop_dataset(entry.id)
        self._prepare(entry)
        return entry

    def approve(
        self, dataset_id: str, consumer: str, purpose: str, expires_at: float | None
    ) -> Any:
        """Approve extracts of a dataset for a consumer and purpose; log it."""
        entry = self.store.get(dataset_id)
        approval = self.approvals.add(entry.id, consumer, purpose, expires_at)
        self.usage.record(
            "approval",
            entry.id,
            consumer,
            purpose,
            detail={"approval_id": approval.id, "expires_at": expires_at},
        )
        return approval

    def revoke_approval(self, approval_id: str) -> Any:
        """Revoke an approval of extracts; log it."""
        approval = self.approvals.revoke(approval_id)
        self.usage.record(
            "revocation",
            approval.dataset_id,
            approval.consumer,
            approval.purpose,
            detail={"approval_id": approval.id},
        )
        return approval

    def peer_urls(self) -> list[str]:
        """Return the peers for federated search: settings, else the registry."""
        if self.settings.peers:
            return list(self.settings.peers)
        if not (self.settings.chain_url and self.settings.deployment_path):
            return []
        return [
            record.endpoint
            for record in self.chain().nodes()
            if record.active
            and record.role == 1
            and record.account.lower() != self.identity.account.lower()
            and record.endpoint
        ]

    def _anchorer(self) -> Any:
        from citymesh.ledger.anchoring import Anchorer

        return Anchorer(
            self.usage.log,
            self.chain(),
            batch_size=self.settings.anchor_batch_size,
            max_delay_s=self.settings.anchor_max_delay_s,
        )

    def anchor(self, max_events: int | None = None) -> list[Any]:
        """Anchor every waiting usage event on chain and return the batches sent.

        ``max_events`` caps the size of each batch. An unreachable chain ends the
        run early and leaves the rest waiting for the next call.
        """
        with self._anchor_lock:
            batches = self._anchorer().anchor_all(max_events)
        for batch in batches:
            log.info("anchored usage events %d..%d", batch.from_seq, batch.to_seq)
        return batches

    def anchor_due(self) -> bool:
        """Anchor one batch if one is due (by count or age); return True if sent."""
        with self._anchor_lock:
            anchorer = self._anchorer()
            if not anchorer.due():
                return False
            batch = anchorer.anchor_pending()
        if batch is None:
            return False
        log.info("anchored usage events %d..%d", batch.from_seq, batch.to_seq)
        return True

    def start_anchoring(self, poll_s: float = 1.0) -> None:
        """Anchor due batches in a background thread until ``close``.

        Does nothing unless the settings name a chain and ``auto_anchor`` is on.
        An unreachable chain is retried with a doubling wait of up to 60 s, and the
        batches wait in the log meanwhile.
        """
        settings = self.settings
        if not (
            settings.auto_anchor and settings.chain_url and settings.deployment_path
        ):
            return
        self._anchor_thread = threading.Thread(
            target=self._anchor_loop,
            args=(poll_s,),
            name=f"anchorer-{settings.city}",
            daemon=True,
        )
        self._anchor_thread.start()

    def _anchor_loop(self, poll_s: float) -> None:
        log.info("background anchoring started for %s", self.settings.city)
        delay = poll_s
        while not self._stop.is_set():
            try:
                sent = self.anchor_due()
                delay = poll_s
                if sent:
                    continue
            except CitymeshError as error:
                log.error(
                    "background anchoring failed, retrying in %.0f s: %s", delay, error
                )
                delay = min(delay * 2, 60.0)
            self._stop.wait(delay)
        log.info("background anchoring stopped for %s", self.settings.city)

    def segment(self, from_seq: int = 1, to_seq: int | None = None) -> bytes:
        """Return the log entries as a segment file: proofs included, chain anchors
        copied, so a regulator can verify it offline or against the chain."""
        from citymesh.ledger.segment import segment_lines

        log_ = self.usage.log
        head = log_.head()
        last = head if to_seq is None else min(to_seq, head)
        if from_seq < 1 or last < from_seq - 1:
            raise InvalidInput(
                f"segment range {from_seq!r}..{to_seq!r} is invalid; the log holds "
                f"1..{head}"
            )
        entries = log_.entries(from_seq, last) if last >= from_seq else []
        proofs = log_.proofs(from_seq, last) if last >= from_seq else {}
        anchors = self.chain().anchors(self.identity.account)
        return b"".join(
            segment_lines(
                self.identity.account, from_seq, last, entries, proofs, anchors
            )
        )


def _search_detail(
    query: SearchQuery, page: SearchPage, on_behalf_of: str | None
) -> dict[str, Any]:
    detail = {
        "query": _query_detail(query),
        "returned": len(page.items),
        "total": page.total,
    }
    if on_behalf_of is not None:
        detail["on_behalf_of"] = on_behalf_of
    return detail


def _query_detail(query: SearchQuery) -> dict[str, Any]:
    fields = ("code_prefix", "keyword", "city", "grade", "tier", "local_code")
    detail = {name: getattr(query, name) for name in fields if getattr(query, name)}
    detail["offset"] = query.offset
    detail["limit"] = query.limit
    return detail
