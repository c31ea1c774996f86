"""Cluster capabilities as recorded in an index's _meta: the fusion table per release, and the record's round trip."""

from __future__ import annotations

from dataclasses import replace

from mm_opensearch.hybrid.capabilities import ClusterCapabilities, _fusion_table
from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.hybrid.pipelines import pipeline_name
from mm_opensearch.indexing.mappings import CAPABILITIES_META_KEY, model_meta

RRF = FusionOptions()
WEIGHTED_RRF = FusionOptions(weights=(0.3, 0.7))
Z_SCORE = FusionOptions(method="linear", normalization="z_score")
MIN_MAX = FusionOptions(method="linear", normalization="min_max")


def _cluster(version: str, *, neural_search: bool = True) -> ClusterCapabilities:
    table = _fusion_table(tuple(int(p) for p in version.split(".")), neural_search)
    return ClusterCapabilities(version=version, knn=True, neural_search=neural_search, **table)


def test_2_19_fuses_rrf_and_min_max_but_not_z_score_or_rrf_weights() -> None:
    """What the 2.19.1 node refuses when the pipelines are created (checked by hand against it)."""
    cluster = _cluster("2.19.1")
    assert cluster.refusal(RRF) is None and cluster.refusal(MIN_MAX) is None
    assert "z_score" in (cluster.refusal(Z_SCORE) or "")
    assert "RRF weights" in (cluster.refusal(WEIGHTED_RRF) or "")
    assert cluster.server_path_tested


def test_before_2_19_there_is_no_rrf_processor_and_3x_is_untested_here() -> None:
    assert "no RRF processor" in (_cluster("2.15.0").refusal(RRF) or "")
    assert _cluster("2.15.0").refusal(MIN_MAX) is None
    three = _cluster("3.4.0")
    assert three.refusal(Z_SCORE) is None and not three.server_path_tested


def test_without_neural_search_nothing_fuses_on_the_server() -> None:
    cluster = _cluster("3.4.0", neural_search=False)
    assert cluster.rrf is False and cluster.normalization == ()
    for options in (RRF, MIN_MAX):
        assert cluster.refusal(options) == "the neural-search plugin is not installed"


def test_a_pipeline_the_cluster_refused_at_provisioning_is_not_used() -> None:
    cluster = replace(_cluster("3.4.0"), refused={pipeline_name(WEIGHTED_RRF): "weights are not supported"})
    assert "weights are not supported" in (cluster.refusal(WEIGHTED_RRF) or "")


def test_the_record_reads_back_from_a_mapping_beside_the_model_entry() -> None:
    recorded = replace(_cluster("2.19.1"), pipelines=("mmos-rrf-k60",), detected_at="2026-12-01T22:00:00+00:00")
    mapping = {"_meta": {**model_meta("m1", 8), CAPABILITIES_META_KEY: recorded.to_meta()}}
    assert ClusterCapabilities.from_mapping(mapping) == recorded
    assert ClusterCapabilities.from_mapping({"_meta": model_meta("m1", 8)}) is None  # an older index
    assert ClusterCapabilities.from_mapping({}) is None
