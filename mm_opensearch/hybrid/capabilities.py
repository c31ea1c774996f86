"""What a cluster can do for hybrid search, detected once at provisioning time and kept in the index ``_meta``.

``index create`` (with vectors), ``index augment`` and ``index provision`` ask the cluster for its
release and plugins, create the search pipelines the server fusion path needs, and record both in
the index mapping beside the model entry (``_meta.mm_opensearch_cluster``). A search process reads
them with the mapping it caches anyway, so choosing server or client fusion takes no cluster-level
call (no ``_cat/plugins``, no pipeline GET/PUT) and needs no cluster-level rights.

Which fusions the server path runs depends on the neural-search release, which is the cluster's own
(classpath and bundled plugins report no version of their own): the RRF processor exists from 2.19,
2.19 refuses ``z_score`` and RRF weights (both checked here against 2.19.1), 3.x has ``z_score``.
Whatever this table allows, a pipeline the cluster refuses at provisioning is recorded as refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.hybrid.pipelines import PipelineRegistry, pipeline_name
from mm_opensearch.indexing.mappings import CAPABILITIES_META_KEY, read_capabilities_meta

__all__ = [
    "KNN_PLUGINS",
    "NEURAL_SEARCH_PLUGINS",
    "ClusterCapabilities",
    "detect_capabilities",
    "provision_pipelines",
    "record_capabilities",
    "provision_index",
    "default_fusions",
]

KNN_PLUGINS = frozenset({"org.opensearch.knn.plugin.KNNPlugin", "opensearch-knn"})
NEURAL_SEARCH_PLUGINS = frozenset({"org.opensearch.neuralsearch.plugin.NeuralSearch", "opensearch-neural-search"})
_HYBRID_FROM = (2, 10)  # the hybrid query and the normalization processor
_RRF_FROM = (2, 19)  # score-ranker-processor
_Z_SCORE_FROM = (3, 0)
_WEIGHTED_RRF_FROM = (3, 0)  # 2.19.1 refuses RRF weights; on 3.x the pipeline PUT at provisioning decides
# The release whose server path the tests here exercise (Maven Central has no neural-search for 3.x).
TESTED_SERVER_MAJOR = 2


def _version(number: str) -> tuple[int, ...]:
    return tuple(int(part) for part in number.split("-")[0].split(".")[:3] if part.isdigit())


@dataclass(frozen=True)
class ClusterCapabilities:
    """A cluster's release, plugins and server-side fusion, as detected at ``detected_at``."""

    version: str
    knn: bool
    neural_search: bool
    normalization: tuple[str, ...] = ()  # techniques the normalization processor accepts
    combination: tuple[str, ...] = ()
    rrf: bool = False  # the score-ranker-processor
    weighted_rrf: bool = False
    pipelines: tuple[str, ...] = ()  # created at provisioning, so a search needs not check them
    refused: Mapping[str, str] = field(default_factory=dict)  # pipeline -> why the cluster refused it
    detected_at: str = ""

    @property
    def major(self) -> int:
        return _version(self.version)[0]

    @property
    def server_path_tested(self) -> bool:
        """Whether this release's server path is one the test suite runs (neural-search on 2.x)."""
        return self.major == TESTED_SERVER_MAJOR

    def refusal(self, options: FusionOptions) -> str | None:
        """Why the server path cannot fuse ``options`` here, None when it can."""
        if not self.neural_search:
            return "the neural-search plugin is not installed"
        name = pipeline_name(options)
        if name in self.refused:
            return f"the cluster refused pipeline {name}: {self.refused[name]}"
        if options.method == "rrf":
            if not self.rrf:
                return f"neural-search {self.version} has no RRF processor (from {'.'.join(map(str, _RRF_FROM))})"
            if not all(w == 1.0 for w in options.weights) and not self.weighted_rrf:
                return f"neural-search {self.version} takes no RRF weights"
            return None
        if options.normalization not in self.normalization:
            return f"neural-search {self.version} has no '{options.normalization}' normalization"
        return None

    def to_meta(self) -> dict[str, Any]:
        """The ``_meta`` entry (plain JSON)."""
        meta = asdict(self)
        meta.update(normalization=list(self.normalization), combination=list(self.combination),
                    pipelines=list(self.pipelines), refused=dict(self.refused))
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ClusterCapabilities:
        """Read back what :meth:`to_meta` wrote (keys unknown to this release are ignored)."""
        return cls(
            version=str(meta["version"]),
            knn=bool(meta.get("knn")),
            neural_search=bool(meta.get("neural_search")),
            normalization=tuple(meta.get("normalization") or ()),
            combination=tuple(meta.get("combination") or ()),
            rrf=bool(meta.get("rrf")),
            weighted_rrf=bool(meta.get("weighted_rrf")),
            pipelines=tuple(meta.get("pipelines") or ()),
            refused=dict(meta.get("refused") or {}),
            detected_at=str(meta.get("detected_at", "")),
        )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ClusterCapabilities | None:
        """The capabilities recorded in an index mapping, None for an index provisioned by no release that records them."""
        meta = read_capabilities_meta(dict(mapping))
        return cls.from_meta(meta) if meta and "version" in meta else None


def _fusion_table(version: tuple[int, ...], neural_search: bool) -> dict[str, Any]:
    if not neural_search or version < _HYBRID_FROM:
        return {}
    normalization = ("min_max", "l2", "z_score") if version >= _Z_SCORE_FROM else ("min_max", "l2")
    return {
        "normalization": normalization,
        "combination": ("arithmetic_mean", "geometric_mean", "harmonic_mean"),
        "rrf": version >= _RRF_FROM,
        "weighted_rrf": version >= _WEIGHTED_RRF_FROM,
    }


def detect_capabilities(client: OpenSearch, *, request_timeout: float | None = None) -> ClusterCapabilities:
    """The cluster's release and plugins now (two calls: ``GET /`` and ``_cat/plugins``)."""
    params = None if request_timeout is None else {"request_timeout": request_timeout}
    number = str(client.info(params=params)["version"]["number"])
    plugins = {row["component"] for row in client.cat.plugins(format="json", params=params)}
    neural = bool(plugins & NEURAL_SEARCH_PLUGINS)
    return ClusterCapabilities(
        version=number,
        knn=bool(plugins & KNN_PLUGINS),
        neural_search=neural,
        detected_at=datetime.now(UTC).isoformat(timespec="seconds"),
        **_fusion_table(_version(number), neural),
    )


def default_fusions(extra: Iterable[FusionOptions] = ()) -> list[FusionOptions]:
    """The fusions provisioning creates pipelines for: the defaults of each method plus ``extra`` (tuned ones)."""
    fusions = [FusionOptions(), FusionOptions(method="linear", weights=(0.5, 0.5)), *extra]
    unique = {pipeline_name(options): options for options in fusions}
    return list(unique.values())


def provision_pipelines(
    client: OpenSearch, capabilities: ClusterCapabilities, fusions: Iterable[FusionOptions]
) -> ClusterCapabilities:
    """Create the pipelines of ``fusions`` the server path can run; the result lists them and any refused."""
    if not capabilities.neural_search:
        return capabilities
    registry = PipelineRegistry(client)
    created, refused = list(capabilities.pipelines), dict(capabilities.refused)
    for options in fusions:
        if capabilities.refusal(options) is not None:
            continue
        name = registry.ensure(options)
        if name is None:
            refused[pipeline_name(options)] = registry.refusal(options) or "refused"
        elif name not in created:
            created.append(name)
    return ClusterCapabilities(**{**asdict(capabilities), "pipelines": tuple(created), "refused": refused})


def record_capabilities(client: OpenSearch, index: str, capabilities: ClusterCapabilities) -> None:
    """Write ``capabilities`` into the ``_meta`` of ``index`` (each index behind an alias), other entries kept."""
    mappings = client.indices.get_mapping(index=index)
    for name, body in mappings.items():
        meta = {**(body.get("mappings", {}).get("_meta") or {}), CAPABILITIES_META_KEY: capabilities.to_meta()}
        client.indices.put_mapping(index=name, body={"_meta": meta})


def provision_index(client: OpenSearch, index: str, fusions: Iterable[FusionOptions]) -> ClusterCapabilities:
    """Detect the cluster's capabilities, create the server path's pipelines, and record both on ``index``."""
    capabilities = provision_pipelines(client, detect_capabilities(client), fusions)
    record_capabilities(client, index, capabilities)
    return capabilities
