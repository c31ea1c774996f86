"""The least-privilege roles mm-opensearch's processes run as on a secured cluster, as data.

One definition serves everything that needs it: ``dev up --secure`` creates these roles and a user
for each through the security REST API, the docs list each permission with why it is needed, and
checks (``doctor``) can probe the privileges a configured user is expected to have. Index
permissions apply to the index patterns of one product index (:func:`index_patterns`): its name
(the alias) and its versioned indices (``products_v2``, ... as ``index augment`` names them).

Permissions the security plugin evaluates as cluster-level although they name an index action
(``indices:data/read/msearch``, ``indices:data/read/mget``, ``indices:data/write/bulk``) are listed
under ``cluster``, where the plugin looks for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["Permission", "Role", "ROLES", "SEARCH_ROLE", "WORKER_ROLE", "ADMIN_ROLE", "index_patterns", "role_body"]

SEARCH_ROLE = "mmos_search"
WORKER_ROLE = "mmos_worker"
ADMIN_ROLE = "mmos_admin"


@dataclass(frozen=True)
class Permission:
    """One action (or action pattern) the plugin checks, and why this role needs it."""

    action: str
    why: str


@dataclass(frozen=True)
class Role:
    """A role: who plays it, and its cluster and index permissions."""

    name: str
    purpose: str
    cluster: tuple[Permission, ...]
    index: tuple[Permission, ...]

    @property
    def cluster_actions(self) -> list[str]:
        return [p.action for p in self.cluster]

    @property
    def index_actions(self) -> list[str]:
        return [p.action for p in self.index]


def index_patterns(index: str) -> list[str]:
    """The index patterns a role on product index ``index`` covers: the alias and its versions."""
    return [index, f"{index}_v*"]


_MAIN = Permission("cluster:monitor/main", "`GET /`: the client's ping, the API's health check, the cluster version")
_HEALTH = Permission("cluster:monitor/health", "`_cluster/health`: waiting for the index to be ready, health lines")
_MGET = Permission("indices:data/read/mget", "`_mget` of a batch's documents (a cluster-level check in the plugin)")
_MGET_SHARD = Permission("indices:data/read/mget*", "the per-shard reads of `_mget` (`mget[shard]`)")
_SEARCH = Permission("indices:data/read/search", "`_search` and `_count` on the alias: both legs, the page, id checks")
_GET = Permission("indices:data/read/get", "`GET <index>/_doc/<id>`: one product")
_MAPPING_GET = Permission("indices:admin/mappings/get", "the mapping's `_meta`: model, dimension, recorded pipelines")
_INDEX_GET = Permission("indices:admin/get", "`GET <alias>`: mappings and shard count the searcher caches")
_ALIAS_GET = Permission("indices:admin/aliases/get", "`GET <index>/_alias`: which versioned index the alias names")
_BULK_CLUSTER = Permission("indices:data/write/bulk", "`_bulk` (the plugin checks the bulk request at cluster level)")
_BULK_INDEX = Permission("indices:data/write/bulk*", "the per-shard bulk items of `_bulk` writes")
_WRITE_INDEX = Permission("indices:data/write/index", "indexing a document (vectors, change feed)")
_WRITE_UPDATE = Permission("indices:data/write/update", "partial updates of a document's vector fields")
_PIT_CREATE = Permission("indices:data/read/point_in_time/create", "backfill scans the index through a point in time")
_PIT_DELETE = Permission("indices:data/read/point_in_time/delete", "backfill closes its point in time (an index action)")
_SETTINGS_GET = Permission("indices:monitor/settings/get", "backfill reads refresh settings to size its batches")

ROLES: Mapping[str, Role] = MappingProxyType({
    SEARCH_ROLE: Role(
        name=SEARCH_ROLE,
        purpose="the API (`mm-opensearch serve`) and `mm-opensearch search`: read the alias, nothing else",
        cluster=(_MAIN, _HEALTH),
        index=(_SEARCH, _INDEX_GET, _MAPPING_GET, _ALIAS_GET),
    ),
    WORKER_ROLE: Role(
        name=WORKER_ROLE,
        purpose="Celery workers (backfill, change feed): read and write the documents of the index",
        cluster=(_MAIN, _HEALTH, _MGET, _BULK_CLUSTER),
        index=(
            _SEARCH, _GET, _MGET_SHARD, _MAPPING_GET, _INDEX_GET, _BULK_INDEX, _WRITE_INDEX, _WRITE_UPDATE,
            _PIT_CREATE, _PIT_DELETE, _SETTINGS_GET,
        ),
    ),
    ADMIN_ROLE: Role(
        name=ADMIN_ROLE,
        purpose="`index create|augment|provision`, `backfill`, `demo`: create indices, aliases, search pipelines, reindex",
        cluster=(
            _MAIN, _HEALTH, _MGET, _BULK_CLUSTER,
            Permission("cluster:monitor/nodes/info", "`_cat/plugins` at provisioning: is neural-search installed"),
            Permission("cluster:monitor/state", "`_cat/plugins` reads the cluster state for node names"),
            Permission("cluster:admin/search/pipeline/put", "provisioning creates the server-fusion pipelines"),
            Permission("cluster:admin/search/pipeline/get", "provisioning checks which pipelines exist"),
            Permission("cluster:admin/search/pipeline/delete", "removing a pipeline no fusion uses any more"),
            Permission("indices:data/write/reindex", "`index augment` copies the index into its next version"),
            Permission("cluster:admin/reindex/rethrottle", "a reindex running in the background can be rethrottled"),
            Permission("cluster:monitor/task/get", "`augment` waits on its background reindex task"),
            Permission("indices:data/read/scroll", "reindex and update-by-query read the source with a scroll"),
            Permission("indices:data/read/scroll/clear", "and clear it when done"),
        ),
        index=(
            _SEARCH, _GET, _MGET_SHARD, _MAPPING_GET, _INDEX_GET, _ALIAS_GET, _BULK_INDEX, _WRITE_INDEX, _WRITE_UPDATE,
            _PIT_CREATE, _PIT_DELETE, _SETTINGS_GET,
            Permission("indices:admin/create", "creating an index or its next version"),
            Permission("indices:admin/shards/search_shards", "reindex asks which shards hold the source"),
            Permission("indices:admin/delete", "dropping an old version after the alias moved"),
            Permission("indices:data/write/delete", "augment's copy drops products deleted from the source meanwhile (bulk delete items)"),
            Permission("indices:admin/aliases", "pointing the alias at the new version"),
            Permission("indices:admin/mapping/put", "adding vector fields and writing `_meta` (model, capabilities)"),
            Permission("indices:admin/settings/update", "refresh interval and replicas during a reindex or backfill"),
            Permission("indices:admin/refresh*", "written documents searchable before the alias moves (and `refresh[s]`)"),
            Permission("indices:admin/forcemerge*", "merging segments after a bulk load (and its per-shard action)"),
            Permission("indices:monitor/stats", "document counts compared before and after a reindex"),
            Permission("indices:data/write/update_by_query", "filling `mm_id` on an index augmented in place"),
        ),
    ),
})


def role_body(role: Role, index: str) -> dict[str, Any]:
    """The body of ``PUT _plugins/_security/api/roles/<name>`` for ``role`` on product index ``index``."""
    return {
        "description": role.purpose,
        "cluster_permissions": role.cluster_actions,
        "index_permissions": [{"index_patterns": index_patterns(index), "allowed_actions": role.index_actions}],
    }
