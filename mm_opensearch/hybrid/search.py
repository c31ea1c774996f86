"""The searcher: BM25, vector or hybrid search over a product index, with explain and degraded mode.

Hybrid fusion runs on the server (neural-search ``hybrid`` query + a search pipeline) when the
cluster has the plugin, accepts the requested fusion and the index is a single shard, and on the
client otherwise (fused by :mod:`mm_opensearch.hybrid.fusion`). What the cluster has is read from
the capabilities recorded in the index ``_meta`` at provisioning time (see
:mod:`mm_opensearch.hybrid.capabilities`), with the mapping the searcher caches anyway: choosing
the path takes no cluster-level call. Nothing is provisioned here: the server path uses the pipelines
provisioning created (recorded, or named by their parameters), and a pipeline the cluster does not
have, or a capabilities probe this user may not make (a 403), sends those searches to the client path
with one log line saying why, not one per query. A 403 on the index itself is
:class:`PermissionDeniedError`, naming the privilege (the API answers 403).
``auto`` never picks the server path on 3.x, which no test
here exercises (Maven Central has no neural-search for 3.x); ``server`` there needs
``MMOS_SERVER_FUSION_ON_3X``. Both paths fetch ``depth``
candidates per leg and cut the page from the fused list, so paging is stable and the two paths
rank alike. Over several shards the plugin fuses per shard (see ``_PER_SHARD_FUSION``), which the
legs' global lists do not reproduce, so such an index is fused on the client.

On the client path the lexical leg is sent before the query is encoded: the node ranks BM25
candidates while the tower runs, and only the k-NN leg waits for the vector, which is faster than
both legs in one ``_msearch`` after encoding (docs/measurements.md, "Client hybrid").

Candidate ids are read from ``mm_id`` doc values, never from ``_id`` field data; hits whose
documents lack ``mm_id`` (an index augmented in place, documents the application wrote since) are
looked up by ``_seq_no`` or read from the stored ``_id`` (see ``_IdRead``).

A serving searcher (``open_searcher``) has one deadline per search, ``MMOS_SEARCH_TIMEOUT_S``:
every call to the node (both legs, the page read) gets what is left of it, and its client never
retries a timeout, so a stuck node gives :class:`SearchUnavailableError` (503) within the deadline
instead of holding the request for the workers' timeout times their retries.

A missing query tower or an index without vectors does not fail a search: it is answered from
BM25 alone and marked ``degraded``. A tower of *another* model than the index's vectors is
refused (:class:`IndexCompatibilityError`): its vectors would be silently meaningless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np
from opensearchpy import ConnectionError as OSConnectionError
from opensearchpy import AuthenticationException, AuthorizationException, NotFoundError, OpenSearch, RequestError
from opensearchpy import SSLError as OSSSLError
from opensearchpy import TransportError

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.client import TRANSIENT_STATUSES, create_serving_client
from mm_opensearch.config import Settings
from mm_opensearch.errors import (
    ConfigError,
    ModelError,
    PermissionDeniedError,
    SearchUnavailableError,
    check_choice,
    permission_denied,
)
from mm_opensearch.hybrid.batching import QueryBatcher
from mm_opensearch.hybrid.filters import build_filters, field_types
from mm_opensearch.hybrid.fusion import (
    FusedHit,
    FusionMethod,
    FusionOptions,
    LegScore,
    fuse,
    tuned_fusion,
    tuned_fusions,
)
from mm_opensearch.hybrid.capabilities import NEURAL_SEARCH_PLUGINS, ClusterCapabilities, detect_capabilities
from mm_opensearch.hybrid.pipelines import pipeline_name
from mm_opensearch.hybrid.query import (
    CANDIDATES_ONLY,
    VectorKind,
    candidate_id,
    candidates_only,
    ids_by_seq_no_request,
    hybrid_request,
    knn_query,
    leg_request,
    lexical_query,
    page_request,
)
from mm_opensearch.hybrid.tower import QueryTower, load_query_tower
from mm_opensearch.preflight import opensearch_error_message
from mm_opensearch.indexing.mappings import ID_FIELD, check_model_compatible, read_model_meta

__all__ = [
    "SearchMode",
    "FusionPath",
    "FusedOn",
    "MAX_SIZE",
    "MAX_WINDOW",
    "MAX_QUERY_CHARS",
    "DEFAULT_DEPTH",
    "NEURAL_SEARCH_PLUGINS",
    "SearchRequest",
    "SearchHit",
    "SearchResponse",
    "HybridSearcher",
    "serving_settings",
    "open_searcher",
]

logger = logging.getLogger(__name__)

SearchMode = Literal["bm25", "vector", "hybrid"]
FusionPath = Literal["auto", "server", "client"]
FusedOn = Literal["server", "client"]  # where a hybrid search was fused
MAX_SIZE = 100
MAX_WINDOW = 10_000  # index.max_result_window and the k-NN plugin's largest k
MAX_QUERY_CHARS = 1024
DEFAULT_DEPTH = 100
_META_TTL_S = 30.0  # an index re-embedded by another model is noticed within this time
_LEGS = ("lexical", "vector")
# Measured against the client path on a 2-shard index: the plugin takes pagination_depth candidates
# per leg *per shard* and gives RRF ranks within each shard, so its fused list is not the one the
# two legs' global lists give (min-max scores 0.709 against 0.636 for the same document).
_PER_SHARD_FUSION = (
    "index '{index}' spans {shards} shards, and neural-search 2.19 fuses each shard's candidates (RRF ranks and "
    "fusion depth per shard), which ranks differently from the legs' global lists"
)
_NOT_PROVISIONED = (
    "search pipeline {name} is not on the cluster; `mm-opensearch index provision {index}` creates it "
    "(as a user allowed to create search pipelines)"
)
_PROBE_REFUSED = (
    "index '{index}' has no recorded cluster capabilities and this user may not ask the cluster for them ({why}); "
    "`mm-opensearch index provision {index}` records them"
)
_LEXICAL_THREADS = 16  # concurrent client-path searches beyond this wait for a thread for their lexical leg
T = TypeVar("T")
_Candidates = tuple[float, list[tuple[str, float]]]  # a leg's took (ms) and its (id, score), best first


@dataclass(frozen=True)
class SearchRequest:
    """One search. ``depth`` = candidates per leg fused before paging (default: max(100, from+size))."""

    query: str
    mode: SearchMode = "hybrid"
    filters: Mapping[str, Any] = field(default_factory=dict)
    size: int = 10
    from_: int = 0
    depth: int | None = None
    vector: VectorKind = "fused"
    fusion: FusionOptions | None = None
    explain: bool = False
    fusion_path: FusionPath = "auto"
    with_source: bool = True  # False: ids and scores only, no document is read (evaluation, re-ranking)

    def __post_init__(self) -> None:
        if not self.query.strip():
            msg = "query is empty; give some text to search for"
            raise ConfigError(msg)
        if len(self.query) > MAX_QUERY_CHARS:
            msg = f"query is {len(self.query)} characters long, at most {MAX_QUERY_CHARS} are allowed"
            raise ConfigError(msg)
        try:
            self.query.encode("utf-8")
        except UnicodeEncodeError as e:
            msg = "query is not valid Unicode text (unpaired surrogate); send UTF-8 text"
            raise ConfigError(msg) from e
        check_choice("mode", self.mode, SearchMode)
        check_choice("vector", self.vector, VectorKind)
        check_choice("fusion_path", self.fusion_path, FusionPath)
        if not 1 <= self.size <= MAX_SIZE:
            msg = f"size must be in [1, {MAX_SIZE}], got {self.size}"
            raise ConfigError(msg)
        if self.from_ < 0:
            msg = f"from must be >= 0, got {self.from_}"
            raise ConfigError(msg)
        if self.from_ + self.size > MAX_WINDOW:
            msg = f"from + size must be <= {MAX_WINDOW}, got {self.from_ + self.size}; narrow the query with filters"
            raise ConfigError(msg)
        if self.depth is not None and not self.from_ + self.size <= self.depth <= MAX_WINDOW:
            msg = (
                f"depth must be in [from + size, {MAX_WINDOW}] = [{self.from_ + self.size}, {MAX_WINDOW}], "
                f"got {self.depth}; pages beyond the fusion depth cannot be ranked"
            )
            raise ConfigError(msg)

    @property
    def candidates(self) -> int:
        """Hits each leg retrieves before fusion and paging."""
        return self.depth if self.depth is not None else max(DEFAULT_DEPTH, self.from_ + self.size)


@dataclass(frozen=True)
class SearchHit:
    """A result. ``legs`` (with explain): each leg's rank and raw score, None where it missed the hit."""

    id: str
    score: float
    source: dict[str, Any]
    legs: dict[str, LegScore | None] | None = None


@dataclass(frozen=True)
class SearchResponse:
    """Hits of one page and how they were obtained (``mode`` is what ran, after any degradation)."""

    hits: list[SearchHit]
    mode: SearchMode
    requested_mode: SearchMode
    fusion: FusionOptions | None
    fusion_path: FusedOn | None
    degraded: bool
    degraded_reason: str | None
    timings_ms: dict[str, float]


# How candidate ids are read: ``mm_id`` doc values (every document has one), the same with the
# hits that lack one looked up by ``_seq_no`` (a single shard, few without), or the stored ``_id``.
# Each step down is several times slower (docs/measurements.md, "Candidate ids"), hence the cut at one in ten.
_IdRead = Literal["doc_values", "seq_no", "stored"]
_SEQ_NO_LOOKUP_SHARE = 0.1


@dataclass(frozen=True)
class _IndexFacts:
    """What a searcher needs to know of its index: the mapping (model, vectors, field types), the
    shards a search reaches, and how candidate ids are read (see ``_IdRead``)."""

    mapping: dict[str, Any]
    shards: int
    id_read: _IdRead
    field_types: dict[str, str] = field(default_factory=dict)  # filter values are checked against these
    capabilities: ClusterCapabilities | None = None  # recorded at provisioning; None on an older index


def _past_the_end(e: RequestError) -> bool:
    """Whether neural-search refused a page that starts after its last fused candidate.

    2.19 answers a ``from`` beyond the fused list (a filter leaves fewer documents than ``from``)
    with a 400 "Reached end of search result, increase pagination_depth", not with an empty page.
    """
    return "Reached end of search result" in str(e.info)


class _ServerPathLost(Exception):
    """The server path's pipeline turned out unusable during a search; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _pipeline_missing(e: RequestError) -> bool:
    """Whether a search named a pipeline the cluster does not have (deleted since it was recorded)."""
    return "Pipeline" in str(e.info) and "is not defined" in str(e.info)


_VALUE_ERRORS = frozenset({"parse_exception", "query_shard_exception", "number_format_exception"})
_MAX_REASON_CHARS = 200
_SHARD_FAILURE_ATTEMPTS = 2  # a shard copy lost with its node is usually answered by another copy moments later


def _unusable_value(e: RequestError) -> str | None:
    """The reason of a 400 that refused a value of the query (what the filter checks cannot foresee,
    e.g. a date string the field's format does not parse), None for any other 400."""
    error = e.info.get("error") if isinstance(e.info, dict) else None
    causes = error.get("root_cause") if isinstance(error, dict) else None
    if not causes or causes[0].get("type") not in _VALUE_ERRORS:
        return None
    return str(causes[0].get("reason", ""))[:_MAX_REASON_CHARS]


class _Deadline:
    """When one search must be answered by: every call to the node gets what is left of it."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._at = None if timeout_s is None else time.monotonic() + timeout_s

    def passed(self) -> SearchUnavailableError:
        """The error of a search that ran out of time."""
        msg = f"OpenSearch did not answer within MMOS_SEARCH_TIMEOUT_S ({self.timeout_s:g} s); retry in a few seconds"
        return SearchUnavailableError(msg)

    def left(self) -> float | None:
        """Seconds left (None: no deadline); SearchUnavailableError once none are."""
        if self._at is None:
            return None
        left = self._at - time.monotonic()
        if left <= 0:
            raise self.passed()
        return left

    def params(self) -> dict[str, float]:
        """The ``request_timeout`` parameter for the next call (none without a deadline)."""
        left = self.left()
        return {} if left is None else {"request_timeout": left}


def check_shards(response: dict[str, Any], index: str) -> dict[str, Any]:
    """``response`` if every shard answered; SearchUnavailableError if any failed or did not report.

    A node that dies mid-query leaves its shards' hits out of an otherwise normal 200 response
    (``_shards.failed``): passed on, that is a partial page presented as the whole answer.
    """
    shards = response.get("_shards") or {}
    failed, total = int(shards.get("failed") or 0), int(shards.get("total") or 0)
    answered = int(shards.get("successful") or 0)  # skipped shards (nothing to match) count as successful
    if failed == 0 and answered >= total:
        return response
    reasons = sorted({_failure_type(failure) for failure in shards.get("failures") or []})
    missing = failed or total - answered
    msg = (f"{missing} of {total} shards of '{index}' did not answer ({', '.join(reasons) or 'no reason given'}); "
           "a node is down or recovering, retry in a few seconds")
    raise SearchUnavailableError(msg)


def _failure_type(failure: dict[str, Any]) -> str:
    reason = failure.get("reason")
    return str(reason.get("type") or reason.get("reason")) if isinstance(reason, dict) else str(reason or "?")


def _unavailable(e: Exception) -> SearchUnavailableError:
    msg = f"OpenSearch did not answer ({type(e).__name__}: {e}); retry in a few seconds"
    return SearchUnavailableError(msg)


class HybridSearcher:
    """Searches one index (``Settings.read_alias`` or ``index_name``) with an optional query tower.

    ``tower_error`` says why no tower is loaded; searches then run degraded. ``default_fusion``
    applies to requests without fusion options (pass the weights tuned by evaluation here);
    ``method_fusions`` are each method's tuned options, which :meth:`fusion_for` starts from.
    ``timeout_s`` is the deadline of one whole search (None: each call has the client's timeout);
    give it a client that does not retry timeouts (:func:`~mm_opensearch.client.create_serving_client`).
    """

    def __init__(
        self,
        client: OpenSearch,
        settings: Settings,
        *,
        index: str | None = None,
        tower: QueryTower | None = None,
        tower_error: str | None = None,
        default_fusion: FusionOptions | None = None,
        method_fusions: Mapping[FusionMethod, FusionOptions] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.schema = CatalogSchema.from_settings(settings)
        self.lexical_match_type = settings.lexical_match_type
        self.preference = settings.search_preference
        self.index = index or settings.read_alias or settings.index_name
        self.tower = tower
        self.tower_model_id = tower.model_id if tower is not None else None  # a content hash: compute once
        self.tower_error = tower_error if tower is None else None
        self.default_fusion = default_fusion or FusionOptions()
        self.method_fusions = dict(method_fusions or {})
        self.server_fusion_on_3x = settings.server_fusion_on_3x
        self.ef_search = settings.knn_ef_search  # HNSW candidate list of the k-NN leg; None: the engine's
        self._hosts = list(settings.opensearch_hosts)  # for messages (masked there)
        self._unusable: dict[str, tuple[float, str]] = {}  # pipeline -> (when, why) its searches go to the client
        self._told: set[str] = set()  # fallback reasons already logged
        self._detected: ClusterCapabilities | None = None  # asked of the cluster for an index without a record
        self._probe_refused: str | None = None  # why the cluster could not be asked (a 403)
        self._facts: tuple[float, _IndexFacts] | None = None
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(max_workers=_LEXICAL_THREADS, thread_name_prefix="mmos-lexical-leg")
        self._queries = QueryBatcher(lambda texts: self._tower().encode_queries(texts))

    def fusion_for(self, method: FusionMethod | None = None) -> FusionOptions:
        """The fusion a request naming ``method`` starts from (None: the default fusion).

        Each method's own tuned fields: a request for rrf under a linear default gets rrf's tuned
        weights and rank constant, not the linear weights.
        """
        if method is None or method == self.default_fusion.method:
            return self.default_fusion
        return self.method_fusions.get(method) or FusionOptions(method=method)

    # --- cluster facts (cached) -------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a client call; an unreachable or overloaded cluster becomes SearchUnavailableError."""
        try:
            return fn()
        except OSSSLError as e:  # a CA that did not sign the node: retrying does not help, the message says what does
            raise SearchUnavailableError(opensearch_error_message(self._hosts, e)) from e
        except OSConnectionError as e:
            raise _unavailable(e) from e
        except AuthenticationException as e:
            msg = ("OpenSearch refused the credentials (401); check MMOS_OPENSEARCH_USER and MMOS_OPENSEARCH_PASSWORD "
                   "(or MMOS_OPENSEARCH_CLIENT_CERT)")
            raise PermissionDeniedError(msg) from e
        except NotFoundError as e:
            msg = f"index '{self.index}' does not exist; create it (mm-opensearch demo / index) or set MMOS_INDEX_NAME"
            raise ConfigError(msg) from e
        except AuthorizationException as e:
            raise permission_denied(e.info, f"search index '{self.index}'") from e
        except TransportError as e:
            if e.status_code in TRANSIENT_STATUSES:
                raise _unavailable(e) from e
            raise

    def capabilities(self, deadline: _Deadline | None = None) -> ClusterCapabilities:
        """What the cluster can do: as recorded in the index ``_meta``, else asked of the cluster once.

        An index provisioned before capabilities were recorded costs two cluster-level calls
        (``GET /``, ``_cat/plugins``) once per searcher, and a log line saying how to record them.
        """
        recorded = self._index_facts(deadline).capabilities
        if recorded is not None:
            return recorded
        with self._lock:
            detected = self._detected
        if detected is None:
            left = (deadline or _Deadline(self.timeout_s)).left()
            try:
                detected = self._call(lambda: detect_capabilities(self.client, request_timeout=left))
            except PermissionDeniedError as e:  # optional: without the probe, hybrid fuses on the client
                refused = _PROBE_REFUSED.format(index=self.index, why=e.privilege or "403")
                detected = _UNKNOWN_CLUSTER
                with self._lock:
                    self._probe_refused, self._detected = refused, detected
                self._fallback(refused)
                return detected
            with self._lock:
                first, self._detected = self._detected is None, detected
            if first:
                logger.info(
                    "index '%s' has no recorded cluster capabilities, so they were asked of the cluster (OpenSearch "
                    "%s, neural-search %s); `mm-opensearch index provision %s` records them, and searches then need "
                    "no cluster-level call", self.index, detected.version, "yes" if detected.neural_search else "no",
                    self.index,
                )
        return detected

    def _fallback(self, reason: str) -> None:
        """Log once per searcher and reason why hybrid searches are fused on the client."""
        with self._lock:
            first = reason not in self._told
            self._told.add(reason)
        if first:
            logger.warning("hybrid searches on '%s' are fused on the client: %s", self.index, reason)

    def has_neural_search(self, deadline: _Deadline | None = None) -> bool:
        """Whether the cluster can fuse ``hybrid`` queries itself."""
        return self.capabilities(deadline).neural_search

    def _index_facts(self, deadline: _Deadline | None = None) -> _IndexFacts:
        with self._lock:
            if self._facts is not None and time.monotonic() - self._facts[0] < _META_TTL_S:
                return self._facts[1]
        deadline = deadline or _Deadline(self.timeout_s)
        response = self._call(lambda: self.client.indices.get(
            index=self.index,
            filter_path=["*.mappings", "*.settings.index.number_of_shards"],
            params=deadline.params() or None,
        ))
        mapping = next(iter(response.values())).get("mappings", {})  # an alias's indices share one model
        shards = sum(int(body["settings"]["index"]["number_of_shards"]) for body in response.values())
        facts = _IndexFacts(
            mapping=mapping,
            shards=shards,
            id_read=self._id_read(shards, deadline),
            field_types=field_types(mapping),
            capabilities=ClusterCapabilities.from_mapping(mapping),
        )
        with self._lock:
            self._facts = (time.monotonic(), facts)
        return facts

    def _id_read(self, shards: int, deadline: _Deadline) -> _IdRead:
        without_id = {"query": {"bool": {"must_not": [{"exists": {"field": ID_FIELD}}]}}}
        lacking, docs = (
            int(self._call(lambda q=query: self.client.count(
                index=self.index, body=q, params=deadline.params() or None
            ))["count"])
            for query in (without_id, None)
        )
        if not lacking:
            return "doc_values"
        read: _IdRead = "seq_no" if shards == 1 and lacking <= _SEQ_NO_LOOKUP_SHARE * docs else "stored"
        logger.info(
            "index '%s': %d of %d documents have no %s, so their candidate ids are %s; "
            "`mm-opensearch index augment %s` fills them", self.index, lacking, docs, ID_FIELD,
            "looked up by _seq_no" if read == "seq_no" else "read from the stored _id (slower)", self.index,
        )
        return read

    def _ids_incomplete(self) -> None:
        """A document without ``mm_id`` was found (written since the facts were read): use stored ids until they are."""
        with self._lock:
            if self._facts is not None:
                when, facts = self._facts
                self._facts = (when, replace(facts, id_read="stored"))

    def close(self) -> None:
        """Stop the lexical-leg threads and close the client (a serving process's shutdown)."""
        self._background.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def replace_client(self, client: OpenSearch) -> OpenSearch:
        """Search with ``client`` from now on (new TLS files); the previous one, still serving running calls."""
        previous, self.client = self.client, client
        return previous

    def ping(self) -> bool:
        """Whether the cluster answers (for health checks)."""
        try:
            return bool(self.client.ping())
        except OSConnectionError:
            return False

    # --- the query vector (or why there is none) ---------------------------------------------

    def _query_vector(
        self, request: SearchRequest, timings: dict[str, float], deadline: _Deadline
    ) -> tuple[np.ndarray | None, str | None]:
        mapping = self._index_facts(deadline).mapping
        meta = read_model_meta(mapping)
        if meta is None:
            return None, f"index '{self.index}' has no vectors (run `mm-opensearch index augment {self.index}`)"
        if request.vector != "fused" and not meta.get("modalities"):
            msg = f"vector '{request.vector}': index '{self.index}' has only fused vectors; use vector=fused"
            raise ConfigError(msg)
        if self.tower is None or self.tower_model_id is None:
            return None, f"query tower unavailable: {self.tower_error or 'no model loaded'}"
        check_model_compatible(self.index, mapping, self.tower_model_id, self.tower.dim)
        started = time.perf_counter()
        try:
            vector = self._queries.encode(request.query)
        except Exception as e:  # noqa: BLE001 - any tower failure must fall back to BM25, not fail the search
            logger.exception("query tower failed; answering from BM25")
            return None, f"query tower failed: {type(e).__name__}: {e}"
        timings["encode"] = (time.perf_counter() - started) * 1000
        return vector, None

    def _tower(self) -> QueryTower:
        assert self.tower is not None  # _query_vector encodes only with a tower
        return self.tower

    # --- search ------------------------------------------------------------------------------

    def search(self, request: SearchRequest) -> SearchResponse:
        """Run ``request``; see the module docstring for paths, paging and degradation."""
        started = time.perf_counter()
        deadline = _Deadline(self.timeout_s)
        timings: dict[str, float] = {}
        types = self._index_facts().field_types if request.filters else None
        filters = build_filters(request.filters, self.schema.filter_fields, types)
        lexical = lexical_query(
            request.query, self.schema.multi_match_fields(), filters, match_type=self.lexical_match_type
        )
        fusion = request.fusion or self.default_fusion
        pipeline: str | None = None
        lexical_leg: Future[_Candidates] | None = None
        if request.mode == "hybrid":
            pipeline = self._server_pipeline(request, fusion, deadline)
            if pipeline is None:  # client fusion: the node ranks BM25 candidates while the query is encoded
                lexical_leg = self._start_lexical(lexical, request.candidates, deadline)
        vector, degraded_reason = (None, None)
        if request.mode != "bm25":
            vector, degraded_reason = self._query_vector(request, timings, deadline)
        mode: SearchMode = request.mode if vector is not None else "bm25"
        path: Literal["server", "client"] | None = None
        if mode == "bm25":
            if lexical_leg is not None:  # degraded: a page of BM25 with documents, not candidates
                lexical_leg.cancel()
            hits = self._single_leg("lexical", lexical, request, timings, deadline)
        elif mode == "vector":
            assert vector is not None
            knn = knn_query(request.vector, vector, request.candidates, filters, ef_search=self.ef_search)
            hits = self._single_leg("vector", knn, request, timings, deadline)
        else:
            assert vector is not None
            knn = knn_query(request.vector, vector, request.candidates, filters, ef_search=self.ef_search)
            if pipeline is not None:
                try:
                    path, hits = "server", self._server_hybrid(
                        pipeline, lexical, knn, request, timings, deadline
                    )
                except _ServerPathLost as e:
                    if request.fusion_path == "server":
                        raise _server_impossible(e.reason) from None
                    pipeline, lexical_leg = None, self._start_lexical(lexical, request.candidates, deadline)
            if pipeline is None:
                assert lexical_leg is not None
                path, hits = "client", self._client_hybrid(lexical_leg, knn, request, fusion, timings, deadline)
        timings["total"] = (time.perf_counter() - started) * 1000
        return SearchResponse(
            hits=hits,
            mode=mode,
            requested_mode=request.mode,
            fusion=fusion if mode == "hybrid" else None,
            fusion_path=path,
            degraded=degraded_reason is not None,
            degraded_reason=degraded_reason,
            timings_ms=timings,
        )

    def _search(self, body: dict[str, Any], deadline: _Deadline, **params: Any) -> dict[str, Any]:
        """One search call; a response missing shards is asked once more, then refused (see :func:`check_shards`)."""
        for attempt in range(_SHARD_FAILURE_ATTEMPTS):
            call = {**params, **deadline.params()}
            if self.preference:
                call["preference"] = self.preference
            try:
                response = self._call(lambda c=call: self.client.search(index=self.index, body=body, params=c or None))
            except RequestError as e:
                if self.preference and "criteria" in str(e.error) + str(e.info):  # 3.x refuses it; 2.19 fails the shards
                    msg = f"no shard copy satisfies MMOS_SEARCH_PREFERENCE={self.preference!r} ({e.error}); unset it or fix it"
                    raise ConfigError(msg) from e
                reason = _unusable_value(e)
                if reason is None:
                    raise
                msg = f"OpenSearch cannot use a value of this search ({reason}); give filter values of each field's type"
                raise ConfigError(msg) from e
            try:
                return check_shards(response, self.index)
            except SearchUnavailableError:
                if attempt + 1 == _SHARD_FAILURE_ATTEMPTS:
                    raise
                logger.info("search of '%s' missed shards; asking again", self.index)
        raise AssertionError("unreachable")  # pragma: no cover

    def _candidate_search(
        self, body: dict[str, Any], deadline: _Deadline, **params: Any
    ) -> tuple[dict[str, Any], list[str]]:
        """A search for ids and scores (``body`` without its id entries) and the ids of its hits.

        The ids come from ``mm_id`` doc values. On a single shard, hits without one (documents
        written without it) are looked up by ``_seq_no``; elsewhere, and when such a document was
        written again meanwhile, the search runs again for stored ``_id`` (see :mod:`.query`).
        """
        bare = {key: value for key, value in body.items() if key not in CANDIDATES_ONLY}
        facts = self._index_facts(deadline)
        single_shard = facts.shards == 1
        if facts.id_read != "stored":
            fast = {**bare, **candidates_only(True), **({"seq_no_primary_term": True} if single_shard else {})}
            response = self._search(fast, deadline, **params)
            hits = response["hits"]["hits"]
            ids = [candidate_id(hit) for hit in hits]
            if None in ids and single_shard:
                found = self._ids_by_seq_no([hit for hit, doc_id in zip(hits, ids, strict=True) if doc_id is None],
                                            deadline)
                ids = [doc_id or found.get((hit["_seq_no"], hit["_primary_term"])) for hit, doc_id
                       in zip(hits, ids, strict=True)]
            if None not in ids:
                return response, [str(doc_id) for doc_id in ids]
            if not single_shard:
                self._ids_incomplete()
        response = self._search({**bare, **candidates_only(False)}, deadline, **params)
        return response, [str(candidate_id(hit)) for hit in response["hits"]["hits"]]

    def _ids_by_seq_no(self, hits: list[dict[str, Any]], deadline: _Deadline) -> dict[tuple[int, int], str]:
        """The stored ``_id`` of these hits of a single-shard index, by (``_seq_no``, ``_primary_term``)."""
        response = self._search(ids_by_seq_no_request([hit["_seq_no"] for hit in hits]), deadline)
        return {(hit["_seq_no"], hit["_primary_term"]): hit["_id"] for hit in response["hits"]["hits"]}

    def _single_leg(
        self, leg: str, query: dict[str, Any], request: SearchRequest, timings: dict[str, float], deadline: _Deadline
    ) -> list[SearchHit]:
        body = leg_request(query, size=request.size, from_=request.from_, source=request.with_source)
        if request.with_source:
            response = self._search(body, deadline)
            ids = [hit["_id"] for hit in response["hits"]["hits"]]
        else:
            response, ids = self._candidate_search(body, deadline)
        timings[leg] = float(response["took"])
        return [
            SearchHit(
                id=doc_id,
                score=hit["_score"],
                source=hit.get("_source", {}),
                legs={leg: LegScore(request.from_ + position, hit["_score"])} if request.explain else None,
            )
            for position, (doc_id, hit) in enumerate(zip(ids, response["hits"]["hits"], strict=True), start=1)
        ]

    def _server_refusal(self, request: SearchRequest, fusion: FusionOptions, deadline: _Deadline) -> str | None:
        """Why this hybrid search is not fused on the server, None when it can be."""
        shards = self._index_facts(deadline).shards
        if shards > 1:
            return _PER_SHARD_FUSION.format(index=self.index, shards=shards)
        capabilities = self.capabilities(deadline)
        if self._probe_refused is not None:
            return self._probe_refused
        if not capabilities.neural_search:
            return "the neural-search plugin is not installed"
        if not capabilities.server_path_tested:
            if request.fusion_path == "auto":
                return f"server fusion on OpenSearch {capabilities.version} is untested here"
            if not self.server_fusion_on_3x:
                return (f"server fusion on OpenSearch {capabilities.version} is untested here; set "
                        "MMOS_SERVER_FUSION_ON_3X=true to use it anyway (see docs/opensearch-versions.md)")
        return capabilities.refusal(fusion)

    def _server_pipeline(self, request: SearchRequest, fusion: FusionOptions, deadline: _Deadline) -> str | None:
        """The pipeline a server-fused search uses, None to fuse on the client.

        The pipeline is the one named by the fusion's parameters, as provisioning created it; it is
        never created here (that needs cluster-level rights a search process should not have). One
        the cluster turned out not to have is tried again only after ``_META_TTL_S``.
        """
        if request.fusion_path == "client":
            return None
        reason = self._server_refusal(request, fusion, deadline)
        pipeline = None
        if reason is None:
            name = pipeline_name(fusion)
            with self._lock:
                when, reason = self._unusable.get(name, (0.0, None))
            if reason is not None and time.monotonic() - when >= _META_TTL_S:
                reason = None  # tried again now and then: `index provision` may have created it since
            if reason is None:
                pipeline = name
        if pipeline is None and request.fusion_path == "server":
            raise _server_impossible(reason)
        return pipeline

    def _pipeline_unusable(self, pipeline: str, reason: str) -> _ServerPathLost:
        """Remember that ``pipeline`` cannot be used (log it once): its searches go to the client path."""
        with self._lock:
            self._unusable[pipeline] = (time.monotonic(), reason)
        self._fallback(reason)
        return _ServerPathLost(reason)

    def _candidates(self, query: dict[str, Any], depth: int, deadline: _Deadline) -> _Candidates:
        """One leg's ``took`` and its ``depth`` best (id, score), best first."""
        response, ids = self._candidate_search(leg_request(query, size=depth, source=False), deadline)
        scores = [hit["_score"] for hit in response["hits"]["hits"]]
        return float(response["took"]), list(zip(ids, scores, strict=True))

    def _start_lexical(self, lexical: dict[str, Any], depth: int, deadline: _Deadline) -> Future[_Candidates]:
        """The lexical leg's candidates, fetched on a background thread while this one goes on."""
        return self._background.submit(self._candidates, lexical, depth, deadline)

    def _both_legs(
        self,
        lexical_leg: Future[_Candidates],
        knn: dict[str, Any],
        depth: int,
        timings: dict[str, float],
        deadline: _Deadline,
    ) -> list[list[tuple[str, float]]]:
        """Both legs' candidates: the k-NN leg from here while the started lexical leg finishes."""
        timings["vector"], vector_hits = self._candidates(knn, depth, deadline)
        try:
            timings["lexical"], lexical_hits = lexical_leg.result(timeout=deadline.left())
        except FutureTimeout as e:
            lexical_leg.cancel()
            raise deadline.passed() from e
        return [lexical_hits, vector_hits]

    def _client_hybrid(
        self,
        lexical_leg: Future[_Candidates],
        knn: dict[str, Any],
        request: SearchRequest,
        fusion: FusionOptions,
        timings: dict[str, float],
        deadline: _Deadline,
    ) -> list[SearchHit]:
        legs = self._both_legs(lexical_leg, knn, request.candidates, timings, deadline)
        started = time.perf_counter()
        fused: list[FusedHit] = fuse(legs, fusion)
        page = fused[request.from_ : request.from_ + request.size]
        timings["fuse"] = (time.perf_counter() - started) * 1000
        sources = self._sources([hit.id for hit in page], deadline) if request.with_source else {}
        return [
            SearchHit(
                id=hit.id,
                score=hit.score,
                source=sources.get(hit.id, {}),
                legs=dict(zip(_LEGS, hit.legs, strict=True)) if request.explain else None,
            )
            for hit in page
        ]

    def _sources(self, ids: list[str], deadline: _Deadline) -> dict[str, dict[str, Any]]:
        """Documents of one page (without vectors), fetched after fusion picked them."""
        if not ids:
            return {}
        response = self._search(page_request(ids), deadline)
        return {hit["_id"]: hit.get("_source", {}) for hit in response["hits"]["hits"]}

    def _server_hybrid(
        self,
        pipeline: str,
        lexical: dict[str, Any],
        knn: dict[str, Any],
        request: SearchRequest,
        timings: dict[str, float],
        deadline: _Deadline,
    ) -> list[SearchHit]:
        body = hybrid_request(lexical, knn, from_=request.from_, size=request.size, depth=request.candidates)
        try:
            response, ids = self._candidate_search(body, deadline, search_pipeline=pipeline)
        except RequestError as e:
            if _pipeline_missing(e):  # never provisioned, or deleted since it was recorded
                raise self._pipeline_unusable(pipeline, _NOT_PROVISIONED.format(name=pipeline, index=self.index)) from e
            if _past_the_end(e):  # fewer fused candidates than `from`: an empty page, as on the client path
                return []
            raise
        timings["hybrid"] = float(response["took"])
        page = list(zip(ids, (hit["_score"] for hit in response["hits"]["hits"]), strict=True))
        sources = self._sources([doc_id for doc_id, _ in page], deadline) if request.with_source else {}
        explained: list[dict[str, LegScore]] = [{} for _ in _LEGS]
        if request.explain:  # the plugin does not report per-leg ranks: run the very same legs again
            lexical_leg = self._start_lexical(lexical, request.candidates, deadline)
            legs = self._both_legs(lexical_leg, knn, request.candidates, {}, deadline)
            for where, leg in zip(explained, legs, strict=True):
                where.update({doc_id: LegScore(rank, score) for rank, (doc_id, score) in enumerate(leg, start=1)})
        return [
            SearchHit(
                id=doc_id,
                score=score,
                source=sources.get(doc_id, {}),
                legs={leg: where.get(doc_id) for leg, where in zip(_LEGS, explained, strict=True)}
                if request.explain
                else None,
            )
            for doc_id, score in page
        ]


def _server_impossible(reason: str | None) -> ConfigError:
    return ConfigError(f"fusion_path 'server' is not possible here ({reason}); use fusion_path 'auto' or 'client'")


# What a searcher assumes of a cluster it may not ask: no plugin, so hybrid is fused on the client.
_UNKNOWN_CLUSTER = ClusterCapabilities(version="0.0.0", knn=True, neural_search=False)


def serving_settings(settings: Settings) -> Settings:
    """``settings`` for a process that answers searches: torch on one thread unless configured.

    A search encodes one short query, too small to split across threads: intra-op threads then
    only contend with concurrent requests and with a co-located node (docs/measurements.md, "Query
    encoding"). Set ``MMOS_TORCH_THREADS`` to override.
    """
    if settings.torch_threads is not None:
        return settings
    return settings.model_copy(update={"torch_threads": 1})


def open_searcher(
    settings: Settings,
    *,
    index: str | None = None,
    query_cache_size: int = 1024,
    default_fusion: FusionOptions | None = None,
) -> HybridSearcher:
    """A serving searcher with the configured model; without a loadable model it runs degraded.

    Its client and deadline are the serving ones (``MMOS_SEARCH_TIMEOUT_S``, timeouts never retried),
    not the workers' (``MMOS_OPENSEARCH_TIMEOUT_S`` times ``MMOS_OPENSEARCH_MAX_RETRIES``).
    """
    settings = serving_settings(settings)
    try:
        tower: QueryTower | None = load_query_tower(settings, query_cache_size=query_cache_size)
        tower.encode_queries(["warm up"])  # loads the backbone now, not during the first search
        tower_error = None
    except ModelError as e:
        logger.warning("no query tower (%s); vector and hybrid searches will answer from BM25", e)
        tower, tower_error = None, str(e)
    hybrid = getattr(getattr(tower, "config", None), "hybrid", None) or {}
    if default_fusion is None and tower is not None:
        default_fusion = tuned_fusion(hybrid)
    return HybridSearcher(
        create_serving_client(settings),
        settings,
        index=index,
        tower=tower,
        tower_error=tower_error,
        default_fusion=default_fusion,
        method_fusions=tuned_fusions(hybrid),
        timeout_s=settings.search_timeout_s,
    )
