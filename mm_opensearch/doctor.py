"""Checks of a configured deployment (``mm-opensearch doctor``): one result per check, never an exception.

Each check asks the cluster, Redis or the workers what a real run would meet and returns a
:class:`CheckResult` with what it found and, for a failure or a warning, the fix (a setting or a
command). Privileges are probed, since the security plugin has no has-privileges API for a user's
own actions: each probe is a request that changes nothing (a size-0 search, a bulk ``create`` of an
id that exists, answered 409; a ``create`` of the index that exists, answered 400) and a 403 names
the action the user lacks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opensearchpy import AuthenticationException, OpenSearch, TransportError
from opensearchpy import ConnectionError as OSConnectionError

from mm_opensearch.backfill.store import JobStore, redis_client
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings, mask_url
from mm_opensearch.errors import MMOpenSearchError
from mm_opensearch.hybrid.capabilities import KNN_PLUGINS, NEURAL_SEARCH_PLUGINS
from mm_opensearch.indexing.mappings import read_capabilities_meta, read_model_meta
from mm_opensearch.preflight import check_redis, opensearch_error_message

__all__ = [
    "ROLES",
    "CheckResult",
    "Role",
    "Status",
    "check_deployment",
    "configured_model",
    "failed",
    "missing_permission",
]

Status = Literal["ok", "warn", "fail", "skip"]
Role = Literal["search", "worker", "admin"]
ROLES: tuple[Role, ...] = ("search", "worker", "admin")
_LOOPBACK = ("127.", "localhost", "[::1]")
# An id no product has: probes that read by id (mget) find nothing, and change nothing.
_PROBE_ID = "__mmos_doctor_probe__"
_NO_PERMISSION = re.compile(r"no permissions for \[(?P<action>.+?)\](?: and User| for|$)")


@dataclass(frozen=True)
class CheckResult:
    """One row of the doctor's table: ``fix`` is set for ``fail`` and ``warn``."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def failed(results: Iterable[CheckResult]) -> bool:
    """Whether any check failed (warnings do not count)."""
    return any(result.status == "fail" for result in results)


def missing_permission(error: TransportError) -> str | None:
    """The action a 403 of the security plugin names (``no permissions for [indices:data/read/search] ...``)."""
    info = error.info if isinstance(error.info, dict) else {}
    reason = (info.get("error") or {}).get("reason") if isinstance(info.get("error"), dict) else None
    match = _NO_PERMISSION.search(str(reason or error.info or error.error))
    return match["action"] if match else None


def configured_model(model_dir: Path | None, default_dir: Callable[[], Path]) -> tuple[str, int]:
    """(model id, dim) of the model the search and workers load, read from its ``config.json`` (no torch)."""
    folder = model_dir if model_dir is not None else default_dir()
    document = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return str(document["model_id"]), int(document["dim"])


# --- privilege probes ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Probe:
    action: str  # the permission the probe needs, as the docs and the plugin name it
    call: Callable[[OpenSearch], Any]
    allowed_statuses: tuple[int, ...] = ()  # an HTTP error that still means "permitted" (409 on create)


def _item_error(response: dict[str, Any], key: str) -> None:
    """Raise the first per-item 403 of an ``_msearch`` / ``_mget`` / ``_bulk`` answer as a TransportError."""
    for item in response.get(key) or []:
        body = item.get("create", item) if key == "items" else item
        error = body.get("error")
        refused = isinstance(error, dict) and error.get("type") == "security_exception"
        status = 403 if refused else int(body.get("status") or (400 if error else 200))
        if status == 403:
            raise TransportError(403, "security_exception", {"error": error})
        if key == "items" and status not in (200, 201, 409):
            raise TransportError(status, str((error or {}).get("type", "error")), {"error": error})


def _msearch(client: OpenSearch, index: str) -> None:
    _item_error(client.msearch(body=[{"index": index}, {"size": 0, "query": {"match_none": {}}}]), "responses")


def _mget(client: OpenSearch, index: str) -> None:
    _item_error(client.mget(index=index, body={"ids": [_PROBE_ID]}), "docs")


def _create_existing(client: OpenSearch, index: str, doc_id: str) -> None:
    """A bulk ``create`` of an id that exists: the write path is checked, the answer is 409, nothing changes."""
    body = [{"create": {"_index": index, "_id": doc_id}}, {}]
    _item_error(client.bulk(body=body), "items")


def _pit(client: OpenSearch, index: str) -> None:
    pit = client.create_pit(index=index, params={"keep_alive": "10s"})["pit_id"]
    client.delete_pit(body={"pit_id": [pit]})


def _read_probes(index: str) -> list[_Probe]:
    return [
        _Probe("cluster:monitor/main", lambda c: c.info()),
        _Probe("cluster:monitor/health", lambda c: c.cluster.health()),
        _Probe("indices:data/read/search", lambda c: c.search(index=index, body={"size": 0})),
        _Probe("indices:data/read/msearch", lambda c: _msearch(c, index)),
        _Probe("indices:data/read/mget", lambda c: _mget(c, index)),
        _Probe("indices:admin/mappings/get", lambda c: c.indices.get_mapping(index=index)),
    ]


def _role_probes(role: Role, index: str, concrete: str | None, existing_id: str | None) -> tuple[list[_Probe], str]:
    """The probes of ``role`` on ``index`` and a note on what could not be probed harmlessly."""
    if role == "search":
        return _read_probes(index), ""
    if role == "worker":
        probes = [p for p in _read_probes(index) if p.action != "indices:data/read/msearch"]
        probes.append(_Probe("indices:data/read/point_in_time/create+delete", lambda c: _pit(c, index)))
        if existing_id is None:
            return probes, "; the write path is not probed: the index holds no document to create again"
        probes.append(_Probe("indices:data/write/bulk (create)",
                             lambda c: _create_existing(c, index, existing_id), allowed_statuses=(409,)))
        return probes, ""
    target = concrete or index
    return [
        *_read_probes(index),
        _Probe("indices:admin/create", lambda c: c.indices.create(index=target), allowed_statuses=(400,)),
        _Probe("indices:admin/mapping/put", lambda c: c.indices.put_mapping(index=target, body={"properties": {}})),
        _Probe("indices:admin/aliases/get", lambda c: c.indices.get_alias(index=target)),
        _Probe("cluster:admin/search/pipeline/get",
               lambda c: c.transport.perform_request("GET", f"/_search/pipeline/{_PROBE_ID}"),
               allowed_statuses=(404,)),
    ], "; reindex and alias swaps are not probed (no harmless request exists)"


def _run_probe(client: OpenSearch, probe: _Probe) -> str | None:
    """None when permitted, else what was refused (the action the plugin names, or the probe's)."""
    try:
        probe.call(client)
    except OSConnectionError as e:  # a subclass of TransportError: no answer is not a refusal
        return f"{probe.action} (no answer: {type(e).__name__}; raise MMOS_CONNECT_TIMEOUT_S on a busy cluster)"
    except TransportError as e:
        if e.status_code == 403:
            return missing_permission(e) or probe.action
        if e.status_code in probe.allowed_statuses:
            return None
        if e.status_code == 400 and "resource_already_exists" in str(e.error) and 400 in probe.allowed_statuses:
            return None
        return f"{probe.action} (answered {e.status_code} {e.error})"
    return None


_ROLE_FIX = {
    "search": "mmos_search",
    "worker": "mmos_worker",
    "admin": "mmos_admin",
}
_ROLE_USE = {
    "search": "MMOS_OPENSEARCH_USER of the API / `mm-opensearch search`",
    "worker": "MMOS_OPENSEARCH_USER of the workers",
    "admin": "MMOS_OPENSEARCH_USER of `index augment` / `index provision`",
}


# --- the checks ------------------------------------------------------------------------------

class _Doctor:
    def __init__(self, settings: Settings, roles: Sequence[Role], model: tuple[str, int] | None,
                 model_error: str | None, ping_workers: Callable[[float], list[str]] | None,
                 ping_timeout_s: float) -> None:
        self.settings = settings
        self.roles = list(roles)
        self.model = model
        self.model_error = model_error
        self.ping_workers = ping_workers
        self.ping_timeout_s = ping_timeout_s
        self.results: list[CheckResult] = []
        self.client = create_client(settings, max_retries=0, timeout=settings.connect_timeout_s, retry_on_timeout=False)
        self.user = settings.opensearch_user or ("client certificate" if settings.opensearch_client_cert else None)
        self.read_index = settings.read_alias or settings.index_name
        self.write_index = settings.write_alias or settings.index_name

    def add(self, check: str, status: Status, detail: str, fix: str = "") -> CheckResult:
        result = CheckResult(check, status, detail, fix)
        self.results.append(result)
        return result

    def guarded(self, check: str, step: Callable[[], None]) -> None:
        """Run one check; an error it did not foresee is its failure row, never a traceback."""
        try:
            step()
        except MMOpenSearchError as e:
            self.add(check, "fail", str(e), "see the detail")
        except TransportError as e:
            permission = missing_permission(e) if e.status_code == 403 else None
            detail = f"refused: the user lacks {permission}" if permission else f"OpenSearch answered {e.status_code} {e.error}"
            self.add(check, "fail", detail, "grant the permission to the user's role (docs/security.md)")
        except Exception as e:  # noqa: BLE001 - a doctor reports; it does not crash
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.add(check, "fail", f"unexpected {type(e).__name__}: {first}", "rerun with MMOS_LOG_LEVEL=DEBUG")

    def run(self) -> list[CheckResult]:
        try:
            if self.reachable():
                self.guarded("credentials", self.credentials)
                self.guarded("plugins", self.plugins)
                concrete = self.index_check()
                for role in self.roles:
                    if concrete is None:
                        self.add(f"privileges: {role}", "skip", "no index to probe them on (see 'index')")
                        continue
                    self.guarded(f"privileges: {role}", lambda r=role: self.privileges(r, concrete))
                if concrete is not None:
                    self.guarded("search pipelines", lambda: self.pipelines(concrete))
        finally:
            self.client.close()
        if self.redis_check():
            self.guarded("workers", self.workers)
            self.guarded("dead letters", self.dead_letters)
        else:
            self.add("workers", "skip", "Redis unreachable")
            self.add("dead letters", "skip", "Redis unreachable")
        return self.results

    # OpenSearch ---------------------------------------------------------------------------
    def reachable(self) -> bool:
        hosts = self.settings.opensearch_hosts
        where = ", ".join(mask_url(h) for h in hosts)
        tls = all(h.startswith("https://") for h in hosts)
        try:
            info = self.client.info()
        except OSConnectionError as e:  # refused, timeouts, TLS
            self.add("cluster", "fail", opensearch_error_message(hosts, e),
                     "check MMOS_OPENSEARCH_HOSTS (and MMOS_OPENSEARCH_CA_CERTS for TLS), or `mm-opensearch dev up`")
            return False
        except AuthenticationException:
            self.add("cluster", "ok", f"{where} answers")
            self.add("credentials", "fail", "the cluster refused the credentials (401)",
                     "check MMOS_OPENSEARCH_USER and MMOS_OPENSEARCH_PASSWORD (or MMOS_OPENSEARCH_CLIENT_CERT / _KEY)")
            return False
        except TransportError as e:
            permission = missing_permission(e) if e.status_code == 403 else None
            self.add("cluster", "fail", f"{where} answered GET / with {e.status_code}"
                     + (f": the user lacks {permission}" if permission else ""),
                     "grant cluster:monitor/main to the user's role (docs/security.md)")
            return False
        version = info.get("version", {}).get("number", "?")
        self.add("cluster", "ok", f"{where}: OpenSearch {version}")
        if tls:
            ca = self.settings.opensearch_ca_certs
            if not self.settings.opensearch_verify_certs:
                self.add("tls", "warn", "TLS without certificate verification (anyone on the path can pose as the node)",
                         "set MMOS_OPENSEARCH_VERIFY_CERTS=true and MMOS_OPENSEARCH_CA_CERTS to the cluster's CA")
            else:
                self.add("tls", "ok", f"TLS, node certificate verified against {ca or 'the system CAs'}")
        elif all(h.split("://")[-1].startswith(_LOOPBACK) for h in hosts):
            self.add("tls", "ok", "plain http to a local node")
        else:
            self.add("tls", "warn", "plain http to a remote cluster: credentials and queries travel unencrypted",
                     "use https:// in MMOS_OPENSEARCH_HOSTS with MMOS_OPENSEARCH_CA_CERTS")
        return True

    def credentials(self) -> None:
        try:
            who = self.client.transport.perform_request("GET", "/_plugins/_security/authinfo")
        except TransportError as e:
            if e.status_code in (400, 404):  # no security plugin: the endpoint does not exist
                self.add("credentials", "ok" if not self.user else "warn",
                         "no security plugin: the cluster does not authenticate",
                         "" if not self.user else "MMOS_OPENSEARCH_USER is set but unused by this cluster")
                return
            raise
        roles = ", ".join(who.get("roles") or []) or "none"
        self.add("credentials", "ok", f"authenticated as '{who.get('user_name')}' (roles: {roles})")

    def plugins(self) -> None:
        try:
            found = {row["component"] for row in self.client.cat.plugins(format="json")}
        except TransportError as e:
            if e.status_code != 403:
                raise
            permission = missing_permission(e) or "cluster:monitor/state"
            self.add("plugins", "warn", f"cannot list plugins: the user lacks {permission}",
                     f"grant {permission} to see them, or run doctor as the admin (searches do not need it)")
            return
        if not found & KNN_PLUGINS:
            self.add("plugins", "fail", "k-NN is not installed: no vector field, no vector search",
                     "install the opensearch-knn plugin on every node")
            return
        if not found & NEURAL_SEARCH_PLUGINS:
            self.add("plugins", "warn", "k-NN; no neural-search: hybrid searches fuse on the client",
                     "install opensearch-neural-search for server-side fusion (optional)")
            return
        self.add("plugins", "ok", "k-NN, neural-search")

    def index_check(self) -> str | None:
        """Check the read alias's mapping against the configured model; the concrete index, or None."""
        name = self.read_index
        check = "index"
        try:
            mappings = self.client.indices.get_mapping(index=name)
        except TransportError as e:
            if e.status_code == 404:
                self.add(check, "fail", f"index or alias '{name}' does not exist",
                         "set MMOS_INDEX_NAME / MMOS_READ_ALIAS, or create it with `mm-opensearch index create`")
            elif e.status_code == 403:
                self.add(check, "fail", f"cannot read the mapping of '{name}': the user lacks "
                         f"{missing_permission(e) or 'indices:admin/mappings/get'}",
                         "grant indices:admin/mappings/get on the index pattern (docs/security.md)")
            else:
                self.add(check, "fail", f"mapping of '{name}': OpenSearch answered {e.status_code} {e.error}",
                         "see the detail")
            return None
        if len(mappings) != 1:
            self.add(check, "fail", f"'{name}' points to {len(mappings)} indices {sorted(mappings)}",
                     "point the alias (MMOS_READ_ALIAS) at one index: `mm-opensearch index swap`")
            return None
        concrete, body = next(iter(mappings.items()))
        meta = read_model_meta(body.get("mappings", {}))
        where = f"'{name}'" + (f" -> '{concrete}'" if concrete != name else "")
        if meta is None:
            self.add(check, "fail", f"{where} has no mm-opensearch vectors (no model in _meta)",
                     f"`mm-opensearch index augment {name}`")
        elif self.model is None:
            self.add(check, "warn", f"{where}: vectors of model {meta['model_id']} (dim {meta['dim']}); "
                     f"the configured model could not be read ({self.model_error})", "set MMOS_MODEL_DIR")
        elif (meta["model_id"], int(meta["dim"])) != self.model:
            model_id, dim = self.model
            self.add(check, "fail", f"{where} holds vectors of model {meta['model_id']} (dim {meta['dim']}); the "
                     f"configured model is {model_id} (dim {dim})",
                     "set MMOS_MODEL_DIR to the model that built the index, or re-embed it with `mm-opensearch backfill`")
        else:
            self.add(check, "ok", f"{where}: vectors of the configured model {meta['model_id']} (dim {meta['dim']})")
        self.mapping = body.get("mappings", {})
        return concrete

    def privileges(self, role: Role, concrete: str | None) -> None:
        index = self.read_index if role == "search" else self.write_index
        existing = self._existing_id(index) if role == "worker" else None
        probes, note = _role_probes(role, index, concrete, existing)
        refused = [r for r in (_run_probe(self.client, p) for p in probes) if r]
        who = f"user '{self.user}'" if self.user else "the configured user"
        if refused:
            self.add(f"privileges: {role}", "fail", f"{who} on '{index}' is refused: {', '.join(refused)}",
                     f"grant them to the role of {_ROLE_USE[role]} (role {_ROLE_FIX[role]}, docs/security.md)")
            return
        unprobed = role == "worker" and existing is None
        self.add(f"privileges: {role}", "warn" if unprobed else "ok",
                 f"{who} on '{index}': {len(probes)} probes permitted{note}", "add a document first" if unprobed else "")

    def _existing_id(self, index: str) -> str | None:
        try:
            hits = self.client.search(index=index, body={"size": 1, "_source": False})["hits"]["hits"]
        except TransportError:
            return None  # the read probes name the refusal
        return str(hits[0]["_id"]) if hits else None

    def pipelines(self, concrete: str) -> None:
        capabilities = read_capabilities_meta(getattr(self, "mapping", {}))
        if capabilities is None:
            self.add("search pipelines", "warn", f"'{concrete}' records no provisioned capabilities: searches detect them "
                     "per process", f"`mm-opensearch index provision {self.read_index}`")
            return
        names = list(capabilities.get("pipelines") or [])
        if not capabilities.get("neural_search"):
            self.add("search pipelines", "ok", "none needed: no neural-search at provisioning, client-side fusion")
            return
        if not names:
            self.add("search pipelines", "warn", "neural-search, but no pipeline was provisioned: client-side fusion",
                     f"`mm-opensearch index provision {self.read_index}` as a user with mmos_admin")
            return
        missing, unverified = [], None
        for name in names:
            try:
                self.client.transport.perform_request("GET", f"/_search/pipeline/{name}")
            except TransportError as e:
                if e.status_code == 404:
                    missing.append(name)
                elif e.status_code == 403:
                    unverified = missing_permission(e) or "cluster:admin/search/pipeline/get"
                    break
                else:
                    raise
        if missing:
            self.add("search pipelines", "fail", f"recorded in _meta but gone from the cluster: {', '.join(missing)}",
                     f"`mm-opensearch index provision {self.read_index}`")
        elif unverified:
            self.add("search pipelines", "warn", f"{len(names)} recorded in _meta; not verified: the user lacks {unverified}",
                     "run doctor as the admin user to verify them (the search role needs no pipeline access)")
        else:
            self.add("search pipelines", "ok", f"{len(names)} provisioned: {', '.join(names)}")

    # Redis and workers --------------------------------------------------------------------
    def redis_check(self) -> bool:
        try:
            check_redis(self.settings)
        except MMOpenSearchError as e:
            self.add("redis", "fail", str(e), "check MMOS_REDIS_URL, or start Redis with `mm-opensearch dev up`")
            return False
        self.add("redis", "ok", f"{mask_url(self.settings.redis_url.get_secret_value())} answers")
        return True

    def workers(self) -> None:
        needed = "worker" in self.roles
        if self.ping_workers is None:
            self.add("workers", "skip", "not asked")
            return
        names = self.ping_workers(self.ping_timeout_s)
        if names:
            self.add("workers", "ok", f"{len(names)} answer a ping: {', '.join(sorted(names)[:5])}")
        else:
            self.add("workers", "fail" if needed else "warn",
                     f"no worker answered a ping within {self.ping_timeout_s:g} s: backfills and the change "
                     "feed do not progress", "start one with `mm-opensearch worker` (same MMOS_REDIS_URL)")

    def dead_letters(self) -> None:
        store = JobStore(redis_client(self.settings))
        try:
            count = len(store.dead_letters())
        finally:
            store.redis.close()
        if count:
            self.add("dead letters", "warn", f"{count} batches failed for good and wait in the dead letters",
                     "see them with `mm-opensearch jobs dead-letters`, send them again with `... --retry`")
        else:
            self.add("dead letters", "ok", "none")


def check_deployment(
    settings: Settings,
    *,
    roles: Sequence[Role] = ROLES,
    model: tuple[str, int] | None = None,
    model_error: str | None = None,
    ping_workers: Callable[[float], list[str]] | None = None,
    ping_timeout_s: float = 1.0,
) -> list[CheckResult]:
    """Every check of the deployment ``settings`` describes, in the order a user fixes them.

    ``model`` is the configured model's (id, dim) (:func:`configured_model`); ``ping_workers`` asks
    the workers for a heartbeat within ``ping_timeout_s`` and returns the names that answered (the
    caller owns the Celery app; a ping waits its whole timeout, so it is short). No check raises:
    each failure is a ``fail`` row with its fix.
    """
    return _Doctor(settings, roles, model, model_error, ping_workers, ping_timeout_s).run()

