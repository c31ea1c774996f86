"""What differs between OpenSearch majors in the dev services: the JDK range and jvm.options lines per JDK."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from mm_opensearch.config import Settings
from mm_opensearch.devservices.cluster import OpenSearchCluster, running_cluster_size
from mm_opensearch.devservices.opensearch import OpenSearchNode, Release, jvm_options
from mm_opensearch.errors import DevServiceError
from mm_opensearch.resources import opensearch_launcher_dir

OPTIONS = """
# a comment
-XX:+UseG1GC
11-22:-Djava.locale.providers=SPI,COMPAT
23-:-Djava.locale.providers=SPI,CLDR
17:-Donly.seventeen=true
"""


@pytest.mark.parametrize(
    ("java", "expected"),
    [
        (17, ["-XX:+UseG1GC", "-Djava.locale.providers=SPI,COMPAT", "-Donly.seventeen=true"]),
        (21, ["-XX:+UseG1GC", "-Djava.locale.providers=SPI,COMPAT"]),
        (25, ["-XX:+UseG1GC", "-Djava.locale.providers=SPI,CLDR"]),
    ],
)
def test_jvm_options_lines_apply_to_their_jdk_majors(java: int, expected: list[str]) -> None:
    assert jvm_options(OPTIONS, java) == expected


def test_the_shipped_jvm_options_leave_no_removed_flag_on_a_new_jdk() -> None:
    text = (opensearch_launcher_dir() / "jvm.options").read_text()
    assert "-Djava.locale.providers=SPI,COMPAT" in jvm_options(text, 17)
    on_25 = jvm_options(text, 25)
    assert "-Djava.locale.providers=SPI,COMPAT" not in on_25  # COMPAT is gone from JDK 23 on
    assert "--add-modules=jdk.incubator.vector" in on_25
    assert not [flag for flag in on_25 if re.match(r"^\d", flag)]  # no JDK prefix left on a flag


@pytest.mark.parametrize(
    ("version", "plugin", "java"), [("2.19.1", "2.19.1.0", (11, 23)), ("3.4.0", "3.4.0.0", (21, None))]
)
def test_each_release_names_its_plugins_and_jdk(version: str, plugin: str, java: tuple[int, int | None]) -> None:
    release = Release(version)
    assert (release.plugin_version, release.java_range) == (plugin, java)
    assert version in release.java_hint() and "MMOS_DEV_JAVA_HOME" in release.java_hint()


@pytest.mark.parametrize("version", ["4.0.0", "2.19", "latest", "1.3.20"])
def test_an_unknown_release_is_refused_by_the_setting(version: str) -> None:
    with pytest.raises(ValidationError, match="dev_opensearch_version"):
        Settings(dev_opensearch_version=version)


def test_each_release_has_its_own_jar_cache() -> None:
    assert Settings(dev_opensearch_version="2.19.1").jar_cache_dir != Settings(dev_opensearch_version="3.4.0").jar_cache_dir


@pytest.mark.parametrize(
    ("written", "running", "refused"),
    [
        ("3.4.0", "2.19.1", True),  # a newer major: Lucene cannot read it
        ("3.5.0", "3.4.0", True),  # a newer minor or patch: OpenSearch refuses any downgrade of a node
        ("2.19.2", "2.19.1", True),
        ("2.19.1", "3.4.0", False),  # the in-place upgrade
        ("3.4.0", "3.4.0", False),
    ],
)
def test_data_written_by_a_newer_release_is_refused_before_the_node_starts(
    tmp_path: Path, written: str, running: str, refused: bool
) -> None:
    """The node dies deep in its start on any newer data (NodeMetadata: "cannot downgrade a node"); we say it first."""
    node = OpenSearchNode(Settings(dev_dir=tmp_path, dev_opensearch_version=running))
    marker = node.home / "mmos-version"
    node.home.mkdir(parents=True)
    marker.write_text(written)
    if refused:
        with pytest.raises(DevServiceError, match=rf"written by OpenSearch {written}, which {running} cannot read.*"
                                                  rf"MMOS_DEV_OPENSEARCH_VERSION={written}"):
            node._check_data_version()
        assert marker.read_text() == written  # the record of what wrote the data stays
    else:
        node._check_data_version()
        assert marker.read_text() == running


def test_a_single_node_keeps_its_home_pid_file_and_ports(tmp_path: Path) -> None:
    """`dev up` without --nodes is what CI's whole suite runs on: nothing about it may change."""
    node = OpenSearchNode(Settings(dev_dir=tmp_path, dev_opensearch_port=9430, dev_opensearch_transport_port=9530))
    assert (node.home, node.process.pid_file, node.port, node.transport_port) == (
        tmp_path / "opensearch", tmp_path / "opensearch.pid", 9430, 9530
    )
    assert node._cluster_arguments() == []  # the Launcher's single-node discovery stays


def test_each_cluster_node_has_its_ports_folders_and_pid_file_and_finds_its_peers(tmp_path: Path) -> None:
    settings = Settings(dev_dir=tmp_path, dev_opensearch_port=9430, dev_opensearch_transport_port=9530)
    cluster = OpenSearchCluster(settings, 3)
    assert [(n.port, n.transport_port) for n in cluster.nodes] == [(9430, 9530), (9431, 9531), (9432, 9532)]
    assert len({n.process.pid_file for n in cluster.nodes}) == 3
    assert cluster.hosts == ["http://127.0.0.1:9430", "http://127.0.0.1:9431", "http://127.0.0.1:9432"]
    args = dict(arg.split("=", 1) for arg in cluster.nodes[2]._cluster_arguments())
    assert args["discovery.type"] != "single-node"
    assert args["discovery.seed_hosts"] == "127.0.0.1:9530,127.0.0.1:9531,127.0.0.1:9532"
    assert args["cluster.initial_cluster_manager_nodes"] == "mmos-dev-0,mmos-dev-1,mmos-dev-2"
    assert (args["node.name"], args["node.processors"]) == ("mmos-dev-2", "1")
    assert args["path.data"] == str(tmp_path / "opensearch-cluster" / "node2" / "data")
    data = {dict(a.split("=", 1) for a in n._cluster_arguments())["path.data"] for n in cluster.nodes}
    assert len(data) == 3
    assert cluster.nodes[0].home != OpenSearchNode(settings).home  # never the single node's data


def test_a_node_index_outside_the_cluster_names_the_range(tmp_path: Path) -> None:
    cluster = OpenSearchCluster(Settings(dev_dir=tmp_path), 3)
    with pytest.raises(DevServiceError, match=r"index 3 is outside the 3-node dev cluster \(0-2\)"):
        cluster.kill(3)


def test_down_and_status_find_the_cluster_from_its_folders(tmp_path: Path) -> None:
    settings = Settings(dev_dir=tmp_path)
    assert running_cluster_size(settings) == 0
    for i in range(3):
        (tmp_path / "opensearch-cluster" / f"node{i}").mkdir(parents=True)
    assert running_cluster_size(settings) == 3


@pytest.mark.parametrize("nodes", [0, 10])
def test_the_node_count_setting_is_bounded(nodes: int) -> None:
    with pytest.raises(ValidationError, match="dev_opensearch_nodes"):
        Settings(dev_opensearch_nodes=nodes)
