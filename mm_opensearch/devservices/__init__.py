"""Local development services: a real OpenSearch of one or more nodes (one JVM each, jars from Maven Central)
and a real Redis, started on 127.0.0.1 with their data under ``Settings.dev_dir``."""

from mm_opensearch.devservices.cluster import OpenSearchCluster, running_cluster_size
from mm_opensearch.devservices.opensearch import OpenSearchNode
from mm_opensearch.devservices.process import ServiceStatus
from mm_opensearch.devservices.redis import RedisServer

__all__ = ["OpenSearchCluster", "OpenSearchNode", "RedisServer", "ServiceStatus", "running_cluster_size"]
